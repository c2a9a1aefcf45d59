"""Runs: queue, list, read, label, statistics (JSON and CSV), evaluations, warnings, cancel, delete, apply advice."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import StreamingResponse
from sqlmodel import Session

from app.api.deps import EngineDep, Offset, RunId, SessionDep, SettingsDep, SinceStep
from app.budgets import Limits
from app.errors import InputError, NotFound, responses
from app.storage import crud
from app.storage.doctor import DoctorPublic, doctor_lineage
from app.storage.export import stats_csv
from app.storage.listing import RunSort
from app.storage.models import (
    MAX_TAG_LENGTH,
    ApplyAdvice,
    EvalPublic,
    RunCreate,
    RunPublic,
    RunsPage,
    RunUpdate,
    StatsPublic,
    WarningPublic,
)
from app.storage.scalars import ScalarsPublic, read_scalars

router = APIRouter(prefix="/runs", tags=["runs"], responses=responses(400, 401))

RunStatus = Literal["queued", "running", "completed", "failed", "cancelled", "diverged"]


@router.get("", response_model=RunsPage)
def list_runs(
    session: SessionDep,
    status: RunStatus | None = None,
    q: Annotated[str | None, Query(max_length=200, description="part of a name, tag or notes, any case")] = None,
    tag: Annotated[str | None, Query(max_length=MAX_TAG_LENGTH, description="runs with exactly this tag")] = None,
    sort: Annotated[
        RunSort, Query(description="val_loss..kl: the last evaluation; entropy..top_share: the latest batch")
    ] = "created",
    order: Literal["asc", "desc"] = "desc",
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
    offset: Offset = 0,
) -> RunsPage:
    """Runs matching every filter given, sorted (runs without the sorted value last, ties newest first)."""
    return crud.list_runs(
        session=session, status=status, q=q, tag=tag, sort=sort, order=order, limit=limit, offset=offset
    )


@router.post("", response_model=RunPublic, status_code=201, responses=responses(403, 413))
def create_run(session: SessionDep, settings: SettingsDep, run_in: RunCreate) -> RunPublic:
    run = crud.create_run(session=session, run_in=run_in, limits=Limits.from_settings(settings))
    return crud.run_public(session=session, run=run)


@router.get("/{run_id}", response_model=RunPublic, responses=responses(404))
def read_run(session: SessionDep, run_id: RunId) -> RunPublic:
    return crud.run_public(session=session, run=crud.get_run(session=session, run_id=run_id))


@router.patch("/{run_id}", response_model=RunPublic, responses=responses(403, 404))
def update_run(session: SessionDep, run_id: RunId, changes: RunUpdate) -> RunPublic:
    """Rename a run, or replace its tags or notes; fields left out stay as they are."""
    run = crud.update_run(session=session, run_id=run_id, changes=changes)
    return crud.run_public(session=session, run=run)


@router.get(
    "/{run_id}/stats.csv",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/csv": {}}, "description": "step, epoch, every statistic, class shares"}}
    | responses(404),
)
def export_run_stats(engine: EngineDep, run_id: RunId) -> StreamingResponse:
    """Every recorded batch of the run, one line each, streamed as it is read: a recorded NaN is `NaN`,
    infinities `inf`, a statistic the batch did not record an empty cell."""
    with Session(engine) as session:  # closed at once: no transaction stays open while the file streams
        num_classes = crud.get_run(session=session, run_id=run_id).num_classes
    headers = {"Content-Disposition": f'attachment; filename="run-{run_id}-stats.csv"'}
    rows = stats_csv(engine, run_id, num_classes)
    return StreamingResponse(rows, media_type="text/csv; charset=utf-8", headers=headers)


RAW_PAGE_ROWS = 10_000  # rows per answer without max_points, unless `limit` says otherwise
STATS_DESCRIPTION = """A run's batch statistics after `since_step`, ascending.

With `max_points` >= 2, at most that many points: the whole range in buckets (each bucket's first and last
step, each column's min and max), raw rows when there are no more than that.

With `max_points=0` (the default), raw rows, a page of at most `limit`: when more follow, the answer has a
`Link: <...>; rel="next"` header, the same request with `since_step` set to this page's `last_step`. Follow
it until there is none to read every row; a live client asks with `since_step=last_step` again later."""


_NEXT_PAGE = {
    "Link": {
        "description": 'with max_points=0, when more rows follow: `<url>; rel="next"`',
        "schema": {"type": "string"},
    }
}


@router.get(
    "/{run_id}/stats",
    response_model=StatsPublic,
    description=STATS_DESCRIPTION,
    responses={200: {"headers": _NEXT_PAGE}, **responses(404)},
)
def read_run_stats(
    request: Request,
    session: SessionDep,
    run_id: RunId,
    since_step: SinceStep = -1,
    max_points: Annotated[
        int, Query(ge=0, le=1_000_000, description="0: raw rows, a page of `limit`; else at least 2")
    ] = 0,
    limit: Annotated[int, Query(ge=1, le=100_000, description="with max_points=0: rows per page")] = RAW_PAGE_ROWS,
    columns: Annotated[str | None, Query(description="comma-separated column names; default all")] = None,
) -> Response:
    if max_points == 1:
        raise InputError.at(["query", "max_points"], "must be 0 (raw rows) or at least 2 (a bucket's min and max)")
    run = crud.get_run(session=session, run_id=run_id)
    names = [c.strip() for c in columns.split(",") if c.strip()] if columns else None
    raw_limit = limit if max_points == 0 else None
    stats = crud.get_stats(
        session=session, run=run, since_step=since_step, max_points=max_points, columns=names, limit=raw_limit
    )
    # already shaped like StatsPublic: no re-validation, and pydantic-core writes the JSON bytes itself
    # (a 2,000-point answer: ~6 ms, against ~75 ms for model_dump + json.dumps)
    response = Response(stats.model_dump_json(), media_type="application/json")
    # a full page is followed by more unless it reached the run's last step (-1: a run too old to keep it)
    if (
        raw_limit is not None
        and len(stats.steps) >= raw_limit
        and (run.last_step < 0 or stats.last_step < run.last_step)
    ):
        following = request.url.include_query_params(since_step=stats.last_step)
        response.headers["Link"] = f'<{following.path}?{following.query}>; rel="next"'
    return response


@router.get("/{run_id}/evals", response_model=list[EvalPublic], responses=responses(404))
def list_run_evals(session: SessionDep, run_id: RunId) -> list[EvalPublic]:
    crud.get_run(session=session, run_id=run_id)
    return [record for _, record in crud.list_evals(session=session, run_id=run_id)]


@router.get("/{run_id}/warnings", response_model=list[WarningPublic], responses=responses(404))
def list_run_warnings(session: SessionDep, run_id: RunId) -> list[WarningPublic]:
    crud.get_run(session=session, run_id=run_id)
    return crud.list_warnings(session=session, run_id=run_id)


@router.get("/{run_id}/scalars", response_model=ScalarsPublic, responses=responses(404))
def read_run_scalars(
    session: SessionDep, run_id: RunId, max_points: Annotated[int, Query(ge=10, le=20_000)] = 2000
) -> ScalarsPublic:
    """Scalars of the user's own logged by an external run (`log_batch(..., name=value)`), per name, at most
    `max_points` each (a bucket's min and max kept, so a spike survives)."""
    return read_scalars(session=session, run_id=run_id, max_points=max_points)


@router.get("/{run_id}/doctor", response_model=DoctorPublic, responses=responses(404))
def read_run_doctor(session: SessionDep, run_id: RunId) -> DoctorPublic:
    """Doctor mode's lineage of a run queued with `doctor: true`: each attempt, what it changed, its
    warnings and what the doctor did next; where the lineage stands."""
    lineage = doctor_lineage(session=session, run_id=run_id)
    if lineage is None:
        raise NotFound(f"Run {run_id} is not doctored (queue a run with \"doctor\": true)")
    return lineage


@router.post("/{run_id}/cancel", response_model=RunPublic, responses=responses(403, 404))
def cancel_run(session: SessionDep, run_id: RunId) -> RunPublic:
    run = crud.cancel_run(session=session, run_id=run_id)
    return crud.run_public(session=session, run=run)


@router.delete("/{run_id}", status_code=204, responses=responses(403, 404))
def delete_run(session: SessionDep, run_id: RunId) -> Response:
    crud.delete_run(session=session, run_id=run_id)
    return Response(status_code=204)


@router.post(
    "/{run_id}/apply-advice",
    response_model=RunPublic,
    status_code=201,
    responses={200: {"description": "This advice was already applied: the run it made", "model": RunPublic}}
    | responses(403, 404, 413),
)
def apply_advice(session: SessionDep, run_id: RunId, body: ApplyAdvice, response: Response) -> RunPublic:
    """Queue the child run a warning's advice describes (201); advice already applied to this run, by this
    warning or another with the same changes, answers 200 with the child it made."""
    run, created = crud.apply_advice(session=session, run_id=run_id, warning_id=body.warning_id)
    if not created:
        response.status_code = 200
    return crud.run_public(session=session, run=run)
