"""Runs: queue, list, read, statistics, evaluations, warnings, cancel, delete, apply advice."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query, Response

from app import crud
from app.api.deps import SessionDep, SettingsDep
from app.budgets import Limits
from app.errors import InputError
from app.models import ApplyAdvice, EvalPublic, RunCreate, RunPublic, RunsPage, StatsPublic, WarningPublic

router = APIRouter(prefix="/runs", tags=["runs"])

RunStatus = Literal["queued", "running", "completed", "failed", "cancelled", "diverged"]


@router.get("", response_model=RunsPage)
def list_runs(
    session: SessionDep,
    status: RunStatus | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> RunsPage:
    return crud.list_runs(session=session, status=status, limit=limit, offset=offset)


@router.post("", response_model=RunPublic, status_code=201)
def create_run(session: SessionDep, settings: SettingsDep, run_in: RunCreate) -> RunPublic:
    run = crud.create_run(session=session, run_in=run_in, limits=Limits.from_settings(settings))
    return crud.run_public(session=session, run=run)


@router.get("/{run_id}", response_model=RunPublic)
def read_run(session: SessionDep, run_id: int) -> RunPublic:
    return crud.run_public(session=session, run=crud.get_run(session=session, run_id=run_id))


@router.get("/{run_id}/stats", response_model=StatsPublic)
def read_run_stats(
    session: SessionDep,
    run_id: int,
    since_step: int = -1,
    max_points: Annotated[int, Query(ge=0, le=1_000_000, description="0: every row; else at least 2")] = 0,
    columns: Annotated[str | None, Query(description="comma-separated column names; default all")] = None,
) -> Response:
    if max_points == 1:
        raise InputError.at(["query", "max_points"], "must be 0 (every row) or at least 2 (a bucket's min and max)")
    run = crud.get_run(session=session, run_id=run_id)
    names = [c.strip() for c in columns.split(",") if c.strip()] if columns else None
    stats = crud.get_stats(session=session, run=run, since_step=since_step, max_points=max_points, columns=names)
    # already shaped like StatsPublic: no re-validation, and pydantic-core writes the JSON bytes itself
    # (a 2,000-point answer: ~6 ms, against ~75 ms for model_dump + json.dumps)
    return Response(stats.model_dump_json(), media_type="application/json")


@router.get("/{run_id}/evals", response_model=list[EvalPublic])
def list_run_evals(session: SessionDep, run_id: int) -> list[EvalPublic]:
    crud.get_run(session=session, run_id=run_id)
    return [record for _, record in crud.list_evals(session=session, run_id=run_id)]


@router.get("/{run_id}/warnings", response_model=list[WarningPublic])
def list_run_warnings(session: SessionDep, run_id: int) -> list[WarningPublic]:
    crud.get_run(session=session, run_id=run_id)
    return crud.list_warnings(session=session, run_id=run_id)


@router.post("/{run_id}/cancel", response_model=RunPublic)
def cancel_run(session: SessionDep, run_id: int) -> RunPublic:
    run = crud.cancel_run(session=session, run_id=run_id)
    return crud.run_public(session=session, run=run)


@router.delete("/{run_id}", status_code=204)
def delete_run(session: SessionDep, run_id: int) -> Response:
    crud.delete_run(session=session, run_id=run_id)
    return Response(status_code=204)


@router.post("/{run_id}/apply-advice", response_model=RunPublic, status_code=201)
def apply_advice(session: SessionDep, run_id: int, body: ApplyAdvice) -> RunPublic:
    run = crud.apply_advice(session=session, run_id=run_id, warning_id=body.warning_id)
    return crud.run_public(session=session, run=run)
