"""The runs list page: its columns (each sortable in the database), filters, and the links that keep them.

Every link (a column's sort, the pager, the live rows partial) carries the same query, so a reload, a page
turn and a live refresh all show the same slice of the same list.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fastapi import Request
from sqlmodel import Session

from app.storage import crud
from app.storage.listing import SORT_KEYS
from app.storage.models import MAX_ID, MAX_TAG_LENGTH, RUN_STATUSES
from app.storage.sweep_links import trial_links

RUNS_PER_PAGE = 50
MAX_QUERY_LENGTH = 200


@dataclass(frozen=True)
class ListColumn:
    label: str
    sort: str | None  # the API's sort key; None: not sortable
    first_order: str = "asc"  # a first click sorts this way: the better or the larger end first
    numeric: bool = False
    title: str = ""


COLUMNS = (
    ListColumn("Run", "name", title="Name, tags and notes"),
    ListColumn("Preset", "preset"),
    ListColumn("Status", "status"),
    ListColumn("Steps", "steps", "desc", True, "Batches recorded"),
    ListColumn("Duration", "duration", "desc", True, "Training time (so far, while it runs)"),
    ListColumn(
        "Val loss", "val_loss", "asc", True,
        "Soft cross-entropy against the raw targets at the last evaluation: the same loss whatever the regularizers",
    ),
    ListColumn("Accuracy", "accuracy", "desc", True, "Validation accuracy at the last evaluation"),
    ListColumn("ECE", "ece", "asc", True, "Validation expected calibration error (15 bins) at the last evaluation"),
    ListColumn("KL", "kl", "asc", True, "KL(target ‖ prediction) on the validation split at the last evaluation"),
    ListColumn(
        "Entropy / target", "entropy", "asc", True,
        "Latest batch's mean prediction entropy, and the targets' own mean entropy (nats)",
    ),
    ListColumn("One-hot", "onehot", "asc", True, "Share of the latest batch's predictions with max-probability > 0.99"),
    ListColumn("Top class", "top_share", "asc", True, "Largest share of the latest batch's predicted-class histogram"),
    ListColumn("Warnings", "warnings", "desc"),
    ListColumn("Created", "created", "desc"),
    ListColumn("Parent", None),
)  # fmt: skip
SORT_LABELS = {c.sort: c.label for c in COLUMNS if c.sort}


class ListQueryError(ValueError):
    """A query the list cannot answer; the message says which parameter and what it may be."""


def check_query(status: str | None, q: str | None, tag: str | None, sort: str, order: str, offset: int) -> None:
    if status and status not in RUN_STATUSES:
        raise ListQueryError(f"Unknown status {status!r}; known: {', '.join(RUN_STATUSES)}.")
    if sort not in SORT_KEYS:
        raise ListQueryError(f"Unknown sort {sort!r}; known: {', '.join(SORT_KEYS)}.")
    if order not in ("asc", "desc"):
        raise ListQueryError(f"order must be asc or desc, got {order!r}.")
    if len(q or "") > MAX_QUERY_LENGTH:
        raise ListQueryError(f"A search is at most {MAX_QUERY_LENGTH} characters, got {len(q or '')}.")
    if len(tag or "") > MAX_TAG_LENGTH:
        raise ListQueryError(f"A tag is at most {MAX_TAG_LENGTH} characters, got {len(tag or '')}.")
    if not 0 <= offset <= MAX_ID:  # the database cannot take more, and no table holds that many rows
        raise ListQueryError(f"offset must be 0 to {MAX_ID:,}, got {offset:,}.")


def runs_context(
    request: Request,
    session: Session,
    *,
    status: str | None,
    q: str | None,
    tag: str | None,
    sort: str,
    order: str,
    offset: int,
) -> dict[str, Any]:
    """The list page's context (raises ListQueryError for a bad query)."""
    q, tag = (q or "").strip() or None, (tag or "").strip() or None
    check_query(status, q, tag, sort, order, offset)
    page = crud.list_runs(
        session=session, status=status or None, q=q, tag=tag, sort=sort, order=order,  # type: ignore[arg-type]
        limit=RUNS_PER_PAGE, offset=offset,
    )  # fmt: skip
    query = {k: v for k, v in {"status": status, "q": q, "tag": tag}.items() if v}
    if (sort, order) != ("created", "desc"):
        query |= {"sort": sort, "order": order}
    base = request.url_for("pages:runs")

    def link(**changes: Any) -> str:
        params = {k: v for k, v in {**query, **changes}.items() if v not in (None, "", 0)}
        return str(base.include_query_params(**params)) if params else str(base)

    headers = [
        {
            "column": c,
            "aria_sort": ("ascending" if order == "asc" else "descending") if c.sort == sort else None,
            "url": link(sort=c.sort, order=(("desc" if order == "asc" else "asc") if c.sort == sort else c.first_order))
            if c.sort
            else None,
        }
        for c in COLUMNS
    ]
    return {
        "runs": page.items,
        "trials": trial_links(session=session, run_ids=[r.id for r in page.items]),  # a sweep's trials link to it
        "total": page.total,
        "status": status or None,
        "q": q,
        "tag": tag,
        "sort": sort,
        "order": order,
        "offset": offset,
        "limit": RUNS_PER_PAGE,
        "statuses": RUN_STATUSES,
        "sort_labels": SORT_LABELS,
        "headers": headers,
        "filtered": bool(status or q or tag),
        "rows_url": str(request.url_for("pages:runs_rows").include_query_params(**query, offset=offset)),
        "newer_url": link(offset=max(offset - RUNS_PER_PAGE, 0)) if offset > 0 else None,
        "older_url": link(offset=offset + RUNS_PER_PAGE) if offset + RUNS_PER_PAGE < page.total else None,
        "without_tag_url": link(tag=None),
        "tag_url": lambda t: link(tag=t),
    }
