"""Ingest: a user's own training loop streams a run (the client library, `import collapsewatch as cw`).

Create an external run, then append statistic chunks, evaluations and warnings, heartbeat while alive and
finish it. Behind the same access rules as every other write (app/security.py). A request repeated after
its answer was lost stores nothing twice and answers 200 instead of 201.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response

from app.api.deps import RunId, SessionDep
from app.errors import responses
from app.storage import crud, ingest
from app.storage.ingest_models import (
    ChunkAck,
    ChunkIn,
    EvalIn,
    ExternalRunCreate,
    HeartbeatPublic,
    RunFinish,
    ScalarsIn,
    StoredPublic,
    WarningIn,
)
from app.storage.models import RunPublic

router = APIRouter(prefix="/ingest/runs", tags=["ingest"], responses=responses(400, 401, 403, 413))
_WRITE = responses(404, 409)


def _repeat(what: str) -> dict[int | str, dict[str, Any]]:
    return {200: {"model": StoredPublic, "description": f"this {what} is already stored: not stored again"}} | _WRITE


@router.post(
    "",
    response_model=RunPublic,
    status_code=201,
    responses={200: {"model": RunPublic, "description": "a run with this client_key exists: it is returned"}},
)
def create_external_run(
    request: Request, session: SessionDep, run_in: ExternalRunCreate, response: Response
) -> RunPublic:
    """An external run, `running` from now on and never claimed by a worker. Heartbeat (or send anything)
    at least every `stale_after_seconds` (15 s by default), or it is marked failed as "worker lost".
    With a `client_key` already used, the run created with it is answered (200), whatever its state."""
    client = run_in.client or (request.client.host if request.client else "unknown")
    run, created = ingest.create_external_run(session=session, run_in=run_in, client=client)
    if not created:
        response.status_code = 200
    return crud.run_public(session=session, run=run)


@router.post(
    "/{run_id}/chunks",
    response_model=ChunkAck,
    status_code=201,
    responses={200: {"model": ChunkAck, "description": "these exact batches are already stored"}} | _WRITE,
)
def append_run_chunk(session: SessionDep, run_id: RunId, body: ChunkIn, response: Response) -> ChunkAck:
    """Up to 1,024 consecutive batches after the run's last stored step, one number per step for each
    statistic sent (the others are left unrecorded) and the class shares of each batch's predictions.
    Steps that overlap stored ones are a 409 unless they repeat them exactly (200, nothing stored)."""
    ack, stored = ingest.append_chunk(session=session, run_id=run_id, body=body)
    if not stored:
        response.status_code = 200
    return ack


@router.post("/{run_id}/evals", response_model=StoredPublic, status_code=201, responses=_repeat("evaluation"))
def append_run_eval(session: SessionDep, run_id: RunId, body: EvalIn, response: Response) -> StoredPublic:
    """One validation pass (what `trainer.evaluation.evaluate_predictions` returns)."""
    stored = ingest.append_eval(session=session, run_id=run_id, body=body)
    response.status_code = 201 if stored else 200
    return StoredPublic(stored=stored)


@router.post("/{run_id}/warnings", response_model=StoredPublic, status_code=201, responses=_repeat("warning"))
def append_run_warning(session: SessionDep, run_id: RunId, body: WarningIn, response: Response) -> StoredPublic:
    """A collapse warning raised by the client's detector: shown on the run page and in its event stream."""
    stored = ingest.append_warning(session=session, run_id=run_id, body=body)
    response.status_code = 201 if stored else 200
    return StoredPublic(stored=stored)


@router.post("/{run_id}/scalars", response_model=StoredPublic, status_code=201, responses=_repeat("scalar chunk"))
def append_run_scalars(session: SessionDep, run_id: RunId, body: ScalarsIn, response: Response) -> StoredPublic:
    """Scalars of the user's own (`log_batch(..., name=value)`): up to 32 names a run, each a series of
    steps after its stored ones, charted on the run page. GET /api/runs/{id}/scalars reads them back."""
    stored = ingest.append_scalars(session=session, run_id=run_id, body=body)
    response.status_code = 201 if stored else 200
    return StoredPublic(stored=stored)


@router.post("/{run_id}/heartbeat", response_model=HeartbeatPublic, responses=_WRITE)
def heartbeat_run(session: SessionDep, run_id: RunId) -> HeartbeatPublic:
    """The client is alive. The answer says whether someone asked to cancel the run from the dashboard."""
    return ingest.beat(session=session, run_id=run_id)


@router.post("/{run_id}/finish", response_model=RunPublic, responses=_WRITE)
def finish_external_run(session: SessionDep, run_id: RunId, body: RunFinish) -> RunPublic:
    """The run's end: completed, failed (with its error), cancelled or diverged; what the client could not
    send goes into `data_lost`. The same end sent again is answered as the first."""
    run = ingest.finish_external_run(session=session, run_id=run_id, body=body)
    return crud.run_public(session=session, run=run)
