"""The sweep pages in a real Chromium against the real server (one worker): a small sweep created from the
form fills its trials table and charts live, shows its best trial, queues it again and opens the run form
with its config; a long sweep is cancelled from its page. Screenshots (desktop and phone) go to test-output/."""

from __future__ import annotations

import json
import re

import pytest
from chromium import MISSING, OUTPUT, sync_api
from factories import LONG

pytestmark = pytest.mark.browser
if MISSING:
    pytest.skip(MISSING, allow_module_level=True)

# 2 epochs of 256 samples at 32 a batch: 14 batches, about a second a trial on a busy CPU
BASE_CONFIG = "epochs = 2\nbatch_size = 32\nhidden_sizes = [16]\n[data]\nn_samples = 256\n"
TRIALS = 4
_CHART_TITLE = "(id) => document.getElementById(id).layout.title.text"


def _no_sideways_scroll(page: sync_api.Page) -> None:
    width, viewport = page.evaluate("() => [document.scrollingElement.scrollWidth, window.innerWidth]")
    assert width <= viewport, f"the page scrolls sideways: {width} px wide in a {viewport} px window"


def _fill_form(page: sync_api.Page) -> None:
    page.fill("#name", "browser sweep")
    page.select_option("#preset", "collapse-prone")
    page.fill("#config", BASE_CONFIG)
    # the first row comes filled (lr on a log range), the second empty; a third is added, then removed
    assert page.input_value("#space-1-field") == "lr" and page.input_value("#space-1-kind") == "log"
    page.fill("#space-1-high", "0.5")
    page.select_option("#space-2-field", "entropy_penalty")
    assert page.input_value("#space-2-kind") == "choices", "a field that is not a number is searched over choices"
    assert not page.locator("#space-2-low").is_visible() and page.locator("#space-2-choices").is_visible()
    page.fill("#space-2-choices", "linear, quadratic")
    page.click("#add-row")
    assert page.locator("[data-row]").count() == 3 and page.locator("#space-3-field").is_visible()
    page.locator("[data-row]").last.get_by_role("button", name="Remove this row").click()
    assert page.locator("[data-row]").count() == 2
    page.select_option("#sampler", "random")
    page.fill("#n_trials", str(TRIALS))
    page.fill("#parallelism", "2")


def test_a_sweep_from_the_form_fills_live_and_its_best_trial_is_queued_again(page: sync_api.Page) -> None:
    page.goto("/")
    page.locator("nav").get_by_role("link", name="Sweeps").click()
    page.wait_for_url(re.compile(r"/sweeps$"))
    page.locator(".page-head").get_by_role("link", name="New sweep").click()
    page.wait_for_url(re.compile(r"/sweeps/new$"))
    _fill_form(page)
    page.screenshot(path=OUTPUT / "sweep_form.png", full_page=True)
    page.click("#start-top")
    page.wait_for_url(re.compile(r"/sweeps/\d+$"))
    sweep_id = int(page.url.rsplit("/", 1)[1])
    sweep = page.request.get(f"/api/sweeps/{sweep_id}").json()
    assert sweep["search_space"]["entropy_penalty"] == {"choices": ["linear", "quadratic"]}
    assert sweep["search_space"]["lr"]["log"] is True and sweep["config"]["epochs"] == 2
    page.evaluate("() => { window.__sameDocument = true; }")  # gone if anything reloads the page

    # live: the table fills and every trial ends without a reload, the charts drawn from the same data
    page.wait_for_function("() => document.querySelectorAll('#trials-body tr[data-trial]').length >= 1", timeout=30_000)
    page.wait_for_function(
        f"""() => document.getElementById('sweep-head').dataset.live === 'false'
             && document.querySelectorAll('#trials-body tr[data-trial]').length === {TRIALS}""",
        timeout=60_000,
    )
    assert page.evaluate("() => window.__sameDocument === true"), "the page reloaded"
    statuses = page.eval_on_selector_all("#trials-body tr[data-trial]", "rows => rows.map(r => r.dataset.status)")
    assert all(s in ("completed", "pruned", "failed") for s in statuses), statuses
    assert page.locator("#sweep-head .status-completed").count() == 1
    page.wait_for_function(
        f"() => document.getElementById('chart-parallel').data?.length === {TRIALS}", timeout=10_000
    )  # one line per trial
    charts = ("chart-objective", "chart-parallel", "chart-collapse")
    titles = {c: page.evaluate(f"({_CHART_TITLE})('{c}')") for c in charts}
    assert titles["chart-objective"].startswith("Objective vs trial: val_kl, minimized")
    assert "over normalised axes" in titles["chart-parallel"]
    assert titles["chart-collapse"] == "Collapse rate by lr and entropy_penalty"
    y_title = page.evaluate("() => document.getElementById('chart-objective').layout.yaxis.title.text")
    assert y_title == "validation KL(target ‖ prediction), nats"
    cells = page.evaluate("() => document.getElementById('chart-collapse').data[0].text.flat().filter(Boolean)")
    judged = sum(s in ("completed", "pruned") for s in statuses)
    assert sum(int(c.split("/")[1]) for c in cells) == judged, cells  # each judged trial in one cell
    page.select_option("#heat-y", "")
    page.wait_for_function(f"() => ({_CHART_TITLE})('chart-collapse') === 'Collapse rate by lr'", timeout=5_000)

    # the best trial: queue it again (a child of its run, the same config) and apply its config
    best = page.request.get(f"/api/sweeps/{sweep_id}").json()["best_trial"]
    assert best is not None
    assert page.locator("#best-trial .best-line").get_attribute("data-run-id") == str(best["run_id"])
    page.set_viewport_size({"width": 1440, "height": 900})
    page.wait_for_timeout(300)
    page.screenshot(path=OUTPUT / "sweep_page.png", full_page=True)
    page.click("#queue-again")
    page.locator("#queue-result a").wait_for(timeout=10_000)
    queued_id = int(page.locator("#queue-result a").inner_text().split("#")[1])
    queued = page.request.get(f"/api/runs/{queued_id}").json()
    trained = page.request.get(f"/api/runs/{best['run_id']}").json()
    assert queued["parent_id"] == best["run_id"] and queued["config"] == trained["config"]

    page.set_viewport_size({"width": 390, "height": 844})
    page.wait_for_function(f"() => ({_CHART_TITLE})('chart-objective').includes('<br>')", timeout=5_000)  # redrawn
    page.wait_for_timeout(300)
    _no_sideways_scroll(page)
    page.screenshot(path=OUTPUT / "sweep_page_phone.png", full_page=True)
    page.click("#apply-config")
    page.wait_for_url(re.compile(rf"/runs/new\?parent={best['run_id']}$"))
    assert float(page.input_value("#lr")) == pytest.approx(best["params"]["lr"])
    assert page.input_value("#entropy_penalty") == best["params"]["entropy_penalty"]

    page.goto("/sweeps/new")
    _no_sideways_scroll(page)
    page.screenshot(path=OUTPUT / "sweep_form_phone.png", full_page=True)
    page.goto("/sweeps")
    assert page.locator(f"#sweeps-body tr[data-sweep-id='{sweep_id}']").count() == 1
    _no_sideways_scroll(page)


POLL_MS = 150  # the cancel test's polling (the page's own is 2 s)


def _changing_head_every_poll(page: sync_api.Page) -> list[int]:
    """The sweep page polls every POLL_MS, and each live answer's head differs (a poll counter), as a sweep's
    head does while its trials come and go; returns the counts of live answers served so far."""
    polls: list[int] = []

    def fast_meta(route: sync_api.Route) -> None:
        response = route.fetch()
        html, found = re.subn(r'"poll_ms": \d+', f'"poll_ms": {POLL_MS}', response.text())
        assert found == 1, "the sweep page's meta has no poll_ms"
        route.fulfill(response=response, body=html)

    def counted_head(route: sync_api.Route) -> None:
        response = route.fetch()
        polls.append(len(polls) + 1)
        html, found = re.subn(r'id="sweep-head"', f'id="sweep-head" data-poll="{len(polls)}"', response.text())
        assert found == 1, "the live answer has no sweep head"
        route.fulfill(response=response, body=html)

    page.route(re.compile(r"/sweeps/\d+$"), fast_meta)
    page.route(re.compile(r"/sweeps/\d+/live$"), counted_head)
    return polls


def test_cancelling_a_sweep_from_its_page_stops_its_trials(page: sync_api.Page) -> None:
    body = {"name": "to cancel", "config": LONG, "search_space": {"seed": {"low": 0, "high": 99}}, "n_trials": 3,
            "parallelism": 1}  # fmt: skip
    response = page.request.post("/api/sweeps", data=json.dumps(body), headers={"content-type": "application/json"})
    assert response.status == 201, response.text()
    sweep_id = response.json()["id"]
    polls = _changing_head_every_poll(page)
    page.goto(f"/sweeps/{sweep_id}")
    page.locator("#trials-body tr[data-status='running']").wait_for(timeout=30_000)
    # the head (with its Cancel button) changes on every poll: focus stays on the button, and a press held over
    # several polls still clicks it (a head swapped under the pointer would take the mouseup and lose the click)
    page.focus("#cancel-sweep")
    seen = len(polls)
    page.wait_for_function(f"() => document.getElementById('sweep-head').dataset.poll > {seen + 2}", timeout=5_000)
    assert page.evaluate("() => document.activeElement.id") == "cancel-sweep"
    page.once("dialog", lambda dialog: dialog.accept())
    box = page.locator("#cancel-sweep").bounding_box()
    assert box is not None
    page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    page.mouse.down()
    seen = len(polls)
    page.wait_for_timeout(3 * POLL_MS)
    assert len(polls) > seen, "no live refresh came while the button was held"
    page.mouse.up()
    page.locator("#queue-result").get_by_text("The sweep is cancelled").wait_for(timeout=10_000)
    page.wait_for_function("() => document.getElementById('sweep-head').dataset.live === 'false'", timeout=30_000)
    assert page.locator("#sweep-head .status-cancelled").count() == 1 and page.locator("#cancel-sweep").count() == 0
    statuses = page.eval_on_selector_all("#trials-body tr[data-trial]", "rows => rows.map(r => r.dataset.status)")
    assert statuses and set(statuses) == {"cancelled"}, statuses
    trials = page.request.get(f"/api/sweeps/{sweep_id}").json()["trials"]
    assert len(trials) == len(statuses) < 3  # no trial was queued after the cancel
    page.unroute_all(behavior="ignoreErrors")


# what the charts draw from (templates/sweeps/_trials.html): trial 1 is lower but collapsed, 2 pruned, 3 the best
DRAWN = {
    "objective": "val_kl", "direction": "minimize", "objective_label": "validation KL", "objective_short": "KL",
    "search_space": {"lr": {"low": 0.001, "high": 1.0, "log": True, "step": None, "int": False},
                     "entropy_penalty": {"choices": ["linear", "quadratic"]}},
    "best_run_id": 13,
    "trials": [
        {"number": 0, "run_id": 10, "status": "completed", "objective": 0.5, "collapsed": False,
         "params": {"lr": 0.01, "entropy_penalty": "linear"}, "max_severity": None, "pruned_reason": None},
        {"number": 1, "run_id": 11, "status": "completed", "objective": 0.1, "collapsed": True,
         "params": {"lr": 0.2, "entropy_penalty": "linear"}, "max_severity": "warning", "pruned_reason": None},
        {"number": 2, "run_id": 12, "status": "pruned", "objective": 0.9, "collapsed": True,
         "params": {"lr": 0.2, "entropy_penalty": "quadratic"}, "max_severity": "critical", "pruned_reason": "x"},
        {"number": 3, "run_id": 13, "status": "completed", "objective": 0.3, "collapsed": False,
         "params": {"lr": 0.01, "entropy_penalty": "quadratic"}, "max_severity": None, "pruned_reason": None},
    ],
}  # fmt: skip


def test_collapsed_and_pruned_trials_are_drawn_apart_and_never_the_best_so_far(page: sync_api.Page) -> None:
    body = {"config": LONG, "search_space": {"seed": {"low": 0, "high": 9}}, "n_trials": 1}
    sweep = page.request.post("/api/sweeps", data=json.dumps(body), headers={"content-type": "application/json"})
    page.request.post(f"/api/sweeps/{sweep.json()['id']}/cancel")
    page.goto(f"/sweeps/{sweep.json()['id']}")  # a page with the charts' boxes and Plotly, no longer polling
    page.wait_for_function("() => document.getElementById('sweep-head').dataset.live === 'false'", timeout=20_000)
    drawn = page.evaluate(
        """async (data) => {
            const charts = await import('/static/js/sweep_charts.js');
            await charts.drawSweepCharts(data, { x: 'lr', y: 'entropy_penalty' });
            const traces = (id) => document.getElementById(id).data;
            return { objective: traces('chart-objective'), parallel: traces('chart-parallel'),
                     heat: traces('chart-collapse')[0] };
        }""",
        DRAWN,
    )
    by_name = {t["name"]: t for t in drawn["objective"]}
    assert by_name["best so far"]["y"] == [0.5, 0.5, 0.5, 0.3], "the collapsed 0.1 is never the best so far"
    collapsed = by_name["collapsed (never wins)"]
    assert collapsed["x"] == [1] and collapsed["marker"]["symbol"] == "x"
    assert by_name["pruned"]["x"] == [2] and by_name["pruned"]["marker"]["symbol"] == "triangle-down"
    assert by_name["completed"]["x"] == [0, 3] and by_name["best trial"]["x"] == [3]
    lines = drawn["parallel"]
    assert len(lines) == 4 and [t["line"]["dash"] for t in lines[:3]] == ["solid", "dash", "dot"]
    assert lines[3]["name"] == "best trial" and lines[0]["y"] == pytest.approx([1 / 3, 0.0, 0.5])  # lr, penalty, KL
    heat = drawn["heat"]
    assert heat["y"] == ["linear", "quadratic"] and heat["x"][1] == "0.004–0.016" and heat["x"][3] == "0.063–0.25"
    assert heat["text"] == [["", "0/1", "", "1/1", ""], ["", "0/1", "", "1/1", ""]]
    assert heat["z"][0][3] == 1 and heat["z"][1][1] == 0 and heat["z"][0][0] is None
