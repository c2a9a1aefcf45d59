"""Sweeps: create a search over config fields (trials are ordinary queued runs), list, read with every
trial and the best, cancel, export the trials as CSV. The driver (app/sweeps/driver.py) does the rest."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query, Response

from app.api.deps import Offset, SessionDep, SettingsDep
from app.budgets import Limits
from app.errors import responses
from app.storage import sweeps
from app.storage.models import MAX_ID, ErrorPublic
from app.storage.sweep_models import SweepCreate, SweepPublic, SweepSummary

router = APIRouter(prefix="/sweeps", tags=["sweeps"], responses=responses(400, 401))
SweepId = Annotated[int, Path(ge=1, le=MAX_ID, description="a sweep's id")]
_ENDED = {409: {"model": ErrorPublic, "description": "the sweep already ended (completed or failed)"}}


@router.post("", response_model=SweepPublic, status_code=201, responses=responses(403, 413))
def create_sweep(session: SessionDep, settings: SettingsDep, sweep_in: SweepCreate) -> SweepPublic:
    """Queue a sweep: its trials are queued as runs, `parallelism` at a time, by the server's sweep driver."""
    sweep = sweeps.create_sweep(session=session, sweep_in=sweep_in, limits=Limits.from_settings(settings))
    return sweeps.sweep_public(session=session, sweep=sweep)


@router.get("", response_model=list[SweepSummary])
def list_sweeps(
    session: SessionDep, limit: Annotated[int, Query(ge=1, le=500)] = 50, offset: Offset = 0
) -> list[SweepSummary]:
    """Sweeps, newest first."""
    return sweeps.list_sweeps(session=session, limit=limit, offset=offset)


@router.get("/{sweep_id}", response_model=SweepPublic, responses=responses(404))
def read_sweep(session: SessionDep, sweep_id: SweepId) -> SweepPublic:
    """The sweep with each trial (its run, params, status, objective, warnings, why it was pruned) and the best."""
    return sweeps.sweep_public(session=session, sweep=sweeps.get_sweep(session=session, sweep_id=sweep_id))


@router.post("/{sweep_id}/cancel", response_model=SweepPublic, responses=responses(403, 404) | _ENDED)
def cancel_sweep(session: SessionDep, sweep_id: SweepId) -> SweepPublic:
    """Cancel the queued trials at once and ask the running ones to stop; cancelling again changes nothing."""
    sweep = sweeps.cancel_sweep(session=session, sweep_id=sweep_id)
    return sweeps.sweep_public(session=session, sweep=sweep)


@router.get(
    "/{sweep_id}/trials.csv",
    response_class=Response,
    responses={200: {"content": {"text/csv": {}}, "description": "one line per trial"}} | responses(404),
)
def export_sweep_trials(session: SessionDep, sweep_id: SweepId) -> Response:
    """Every trial: number, run, status, objective, each searched field, warnings, why it was pruned, error."""
    sweep = sweeps.get_sweep(session=session, sweep_id=sweep_id)
    headers = {"Content-Disposition": f'attachment; filename="sweep-{sweep_id}-trials.csv"'}
    body = sweeps.trials_csv(session=session, sweep=sweep)
    return Response(body, media_type="text/csv; charset=utf-8", headers=headers)
