"""An upload through the new-run form in a real Chromium: previewed (which columns became features, which
targets) before anything is stored, stored once confirmed, trained on, and named in the run's header."""

from __future__ import annotations

import re

import pytest
from chromium import MISSING, OUTPUT, sync_api

pytestmark = pytest.mark.browser
if MISSING:
    pytest.skip(MISSING, allow_module_level=True)

# the table: unnamed measurements a, b, c and two probability columns named by their class
TABLE = b"a,b,c,prob_a,prob_b\n1,2,3,0.9,0.1\n2,3,1,0.5,0.5\n3,1,2,0.2,0.8\n4,0,5,0.7,0.3\n6,1,1,0.6,0.4\n"


def _codes(page: sync_api.Page, selector: str) -> list[str]:
    return page.locator(f"{selector} code").all_inner_texts()


def test_an_upload_is_previewed_confirmed_and_shown_on_its_run(page: sync_api.Page) -> None:
    page.goto("/runs/new")
    page.get_by_text("Upload a new dataset").click()
    assert "Every other column is a feature" in page.locator("#upload-rule").inner_text()
    page.set_input_files("#upload-file", files=[{"name": "abc.csv", "mimeType": "text/csv", "buffer": TABLE}])
    page.fill("#upload-name", "abc")
    page.get_by_role("button", name="Preview").click()

    # the preview says how the file was read, and nothing is stored yet
    page.locator("#upload-preview").wait_for()
    assert _codes(page, "#preview-features") == ["a", "b", "c"]
    assert _codes(page, "#preview-targets") == ["prob_a → a", "prob_b → b"]
    facts = page.locator("#upload-preview .facts")
    assert facts.locator("[data-field='shape']").inner_text() == "5 × 3"
    # rows' entropies 0.325, 0.693, 0.500, 0.611, 0.673 nats: a mean of 0.561
    assert facts.locator("[data-field='entropy']").inner_text() == "0.561 of ln 2 = 0.693 nats (81% of uniform)"
    assert page.locator("#preview-shares tbody tr").all_inner_texts() == ["a\t0.580\t", "b\t0.420\t"]
    assert page.request.get("/api/datasets").json() == [], "the preview stored the dataset"
    page.locator("#dataset-choice").screenshot(path=OUTPUT / "dataset_preview.png")

    # confirmed, it is stored and chosen for the run
    page.get_by_role("button", name="Store this dataset").click()
    page.get_by_text(re.compile(r"Stored dataset #\d+ abc; it is selected above")).wait_for()
    (stored,) = page.request.get("/api/datasets").json()
    assert (stored["name"], stored["feature_columns"], stored["target_columns"]) == (
        "abc",
        ["a", "b", "c"],
        ["prob_a", "prob_b"],
    )
    assert page.is_checked("#use-dataset") and page.input_value("#dataset_id") == str(stored["id"])
    page.locator("#dataset-choice").screenshot(path=OUTPUT / "dataset_stored.png")

    # a run on it names the dataset in its header and shows no generator settings
    page.fill("#min_entropy", "0.5")  # the preset's 1.5 nats are more than ln 2
    page.fill("#epochs", "2")
    page.fill("#hidden_sizes", "8")
    page.locator("#run-form").get_by_role("button", name="Queue run").click()
    page.wait_for_url(re.compile(r"/runs/\d+$"))
    header = page.locator("#run-dataset")
    assert header.locator("a").inner_text() == f"#{stored['id']} abc"
    assert header.locator("a").get_attribute("href").endswith(f"/api/datasets/{stored['id']}")
    assert header.locator("[data-field='dataset-shape']").inner_text() == "5 × 3"
    assert header.locator("[data-field='dataset-sha256']").inner_text() == stored["sha256"][:12]
    terms = page.locator("#run-header dt").all_inner_texts()
    assert terms.count("Classes") == 1, f"the header names the classes more than once: {terms}"
    fields = page.locator("#config-table tbody th").all_inner_texts()
    assert "data.path" in fields and "data.n_samples" not in fields and "data.cluster_std" not in fields
    page.locator("#run-header .status-completed").wait_for(timeout=120_000)  # it trains on the table
    assert page.locator("#run-dataset").count() == 1, "the live header refresh dropped the dataset"
    page.screenshot(path=OUTPUT / "dataset_run_page.png", full_page=True)
