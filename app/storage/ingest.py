"""External runs: a user's own loop streams its statistics, evaluations and warnings (the ingest API).

An external run is created `running` and never queued, so no worker claims it. Every write to it opens
with an UPDATE of the run that stamps its heartbeat, so SQLite takes its write lock and PostgreSQL the
run's row lock before anything is read: two requests for one run never interleave. Statistics are stored
by `app.storage.writes`, as the worker's sink stores them (chunks, rollup blocks, the run's summary), and a
request repeated after a lost answer stores nothing twice. A run the reaper marked lost while its client
was only unreachable is taken back by the client's next request, as a worker's is.
"""

from __future__ import annotations

import json
from datetime import UTC, timedelta
from typing import Any

import numpy as np
from sqlalchemy import Connection, Row, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col

from app.errors import Conflict, InputError, NotFound
from app.storage import scalars
from app.storage.chunks import full_values
from app.storage.crud import _refuse_control_characters, get_run
from app.storage.ingest_chunks import chunk_from_body
from app.storage.ingest_models import (
    MAX_CONFIG_BYTES,
    ChunkAck,
    ChunkIn,
    EvalIn,
    ExternalRunCreate,
    HeartbeatPublic,
    RunFinish,
    ScalarsIn,
    WarningIn,
)
from app.storage.listing import elapsed
from app.storage.models import SEVERITY_RANK, EvalStat, Run, RunWarning, utcnow
from app.storage.reads import _read as read_batches
from app.storage.rollups import Rollup
from app.storage.values import to_json_safe
from app.storage.writes import eval_values, insert_warning, resume_rollup, write_chunks
from app.worker.claim import LOST_PREFIX, db_now, reclaim_run
from trainer import BATCH_COLUMNS, EVAL_METRICS, Advice, BatchChunk, CollapseWarning, EvalRecord

CLOCK_SLACK = timedelta(minutes=5)  # a client's clock ahead of the server's by up to this is not refused
EXTERNAL_PRESET = "external"  # what the runs list and the run page show as an external run's preset


def create_external_run(*, session: Session, run_in: ExternalRunCreate, client: str) -> tuple[Run, bool]:
    """A running external run, its heartbeat stamped now; `client` names the process that logs it.
    (the run, whether it is new): a create repeated with a `client_key` already stored returns that run."""
    _refuse_control_characters(["body", "name"], run_in.name, "a run's name")
    _refuse_control_characters(["body", "client"], client, "the client's name")
    config = to_json_safe(run_in.config)
    if len(json.dumps(config)) > MAX_CONFIG_BYTES:
        raise InputError.at(["body", "config"], f"is larger than {MAX_CONFIG_BYTES:,} bytes of JSON")
    if run_in.client_key is not None and (held := _by_key(session, run_in.client_key)) is not None:
        return held, False
    now = utcnow()
    started = run_in.started_at
    if started is not None:
        started = started if started.tzinfo else started.replace(tzinfo=UTC)
        if started > now + CLOCK_SLACK:
            raise InputError.at(["body", "started_at"], f"is {started.isoformat()}, later than the server's clock")
    run = Run(
        name=run_in.name or "",
        preset=EXTERNAL_PRESET,
        status="running",
        external=True,
        client_key=run_in.client_key,
        worker=f"external:{client}",
        config=config,
        num_classes=run_in.num_classes or 0,  # 0 until the first chunk says
        started_at=started or now,
        info={"steps_per_epoch": run_in.steps_per_epoch} if run_in.steps_per_epoch else None,
    )
    session.add(run)
    try:
        session.flush()
    except IntegrityError:  # the same key created meanwhile by a concurrent request
        session.rollback()
        held = _by_key(session, run_in.client_key or "")
        if held is None:
            raise
        return held, False
    values: dict[str, Any] = {"heartbeat_at": db_now(session.connection())}  # the reaper reads the database's clock
    if not run.name:
        values["name"] = f"external #{run.id}"
    session.exec(update(Run).where(col(Run.id) == run.id).values(**values))
    session.commit()
    session.refresh(run)
    return run, True


def _by_key(session: Session, key: str) -> Run | None:
    return session.exec(select(Run).where(col(Run.client_key) == key)).scalars().first()


def _open(conn: Connection, run_id: int) -> Row[Any]:
    """Lock the run for this request and stamp its heartbeat (taking it back from the reaper if it was
    marked lost meanwhile); its row. A run no client may write to is a 404 or a 409 that says why."""
    conn.execute(
        update(Run)
        .where(Run.id == run_id, Run.external.is_(True), Run.status == "running")
        .values(heartbeat_at=db_now(conn))
    )
    row = _row(conn, run_id)
    lost = row.status == "failed" and (row.error or "").startswith(LOST_PREFIX) and row.worker
    if lost and reclaim_run(conn, run_id, worker=row.worker):  # the client was alive: the verdict was wrong
        row = _row(conn, run_id)
    return row


def _row(conn: Connection, run_id: int) -> Row[Any]:
    row = conn.execute(
        select(
            Run.status, Run.external, Run.worker, Run.error, Run.num_classes, Run.steps, Run.last_step,
            Run.max_severity, Run.cancel_requested,
        ).where(Run.id == run_id)
    ).first()  # fmt: skip
    if row is None:
        raise NotFound(f"Run {run_id} not found")
    if not row.external:
        raise Conflict(
            f"Run {run_id} is trained by a worker: only an external run (POST /api/ingest/runs) takes records"
        )
    return row


def _running(row: Row[Any], run_id: int) -> None:
    if row.status != "running":
        raise Conflict(f"Run {run_id} is {row.status}: it takes no more records")


# --- statistics ---------------------------------------------------------------------------------------
def append_chunk(*, session: Session, run_id: int, body: ChunkIn) -> tuple[ChunkAck, bool]:
    """Store a chunk after the run's last step; (the answer, whether it stored anything). A chunk equal
    to what is stored for its steps stores nothing; any other overlap is a 409."""
    conn = session.connection()
    row = _open(conn, run_id)
    _running(row, run_id)
    chunk = chunk_from_body(body, row.num_classes)
    first, last = int(chunk.steps[0]), int(chunk.steps[-1])
    stored = False
    if first <= row.last_step:
        if not _same_as_stored(conn, run_id, chunk):
            raise Conflict(
                f"steps {first}-{last} overlap the steps stored for run {run_id} (up to {row.last_step}) and differ "
                f"from them: send only steps after {row.last_step}"
            )
    else:
        width = chunk.class_hist.shape[1]
        if not row.num_classes:
            conn.execute(update(Run).where(Run.id == run_id).values(num_classes=width))
        rollup = Rollup(len(BATCH_COLUMNS), width) if row.steps == 0 else resume_rollup(conn, run_id, width)
        write_chunks(conn, run_id, [chunk], rollup)
        stored = True
    session.commit()
    n = len(chunk) if stored else 0
    last_step = last if stored else row.last_step
    return ChunkAck(run_id=run_id, stored=n, steps=row.steps + n, last_step=last_step), stored


def _same_as_stored(conn: Connection, run_id: int, chunk: BatchChunk) -> bool:
    """Whether the run holds exactly these batches, every column alike: a request repeated after its
    answer was lost."""
    names = list(BATCH_COLUMNS)
    held = read_batches(conn, run_id, int(chunk.steps[0]) - 1, int(chunk.steps[-1]), names, None, hist=True)
    values = full_values(chunk)  # NaN where the chunk has no such column
    sent_nan = np.isnan(values) & np.isin(names, chunk.columns)  # a NaN sent, not a statistic left out
    return (
        np.array_equal(held.steps, chunk.steps)
        and np.array_equal(held.epochs, chunk.epochs)
        and np.array_equal(held.values, values, equal_nan=True)
        and np.array_equal(held.nan, sent_nan)
        and np.array_equal(held.hist_array(), chunk.class_hist.astype(np.float32))  # stored as float32
    )


# --- evaluations, warnings ----------------------------------------------------------------------------
def append_eval(*, session: Session, run_id: int, body: EvalIn) -> bool:
    """Store one evaluation pass; False when the same pass is already stored (nothing stored twice)."""
    conn = session.connection()
    row = _open(conn, run_id)
    _running(row, run_id)
    unknown = sorted(set(body.metrics) - set(EVAL_METRICS))
    if unknown or "objective" not in body.metrics:
        what = f"unknown metric {unknown[0]!r}" if unknown else "the metric 'objective' is missing"
        raise InputError.at(["body", "metrics"], f"{what}; known metrics: {', '.join(EVAL_METRICS)}")
    c = row.num_classes or len(body.pred_hist)
    for name in ("pred_hist", "target_hist", "confusion"):
        seq = getattr(body, name)
        if len(seq) != c or (name == "confusion" and any(len(r) != c for r in seq)):
            shape = f"{c} x {c} counts" if name == "confusion" else f"{c} shares"
            raise InputError.at(["body", name], f"must hold {shape}, one per class of the run")
    record = EvalRecord(
        step=body.step,
        epoch=body.epoch,
        metrics={k: float(v) for k, v in body.metrics.items()},  # float("NaN") is nan
        pred_hist=list(body.pred_hist),
        target_hist=list(body.target_hist),
        confusion=[list(r) for r in body.confusion],
    )
    values = eval_values(run_id, record)
    same = conn.execute(
        select(EvalStat.metrics, EvalStat.pred_hist, EvalStat.target_hist, EvalStat.confusion).where(
            EvalStat.run_id == run_id, EvalStat.step == record.step, EvalStat.epoch == record.epoch
        )
    ).all()
    if any(tuple(r) == tuple(values[k] for k in ("metrics", "pred_hist", "target_hist", "confusion")) for r in same):
        session.commit()  # the heartbeat
        return False
    conn.execute(insert(EvalStat), [values])
    session.commit()
    return True


def append_warning(*, session: Session, run_id: int, body: WarningIn) -> bool:
    """Store a warning the client's detector raised; False when the same warning is already stored."""
    conn = session.connection()
    row = _open(conn, run_id)
    _running(row, run_id)
    advice = Advice(body.advice.message, dict(body.advice.overrides)) if body.advice else None
    warning = CollapseWarning(
        kind=body.kind,
        severity=body.severity,
        step=body.step,
        message=body.message,
        evidence={k: float(v) for k, v in body.evidence.items()},
        advice=advice,
    )
    _refuse_control_characters(["body", "message"], warning.message.replace("\n", " "), "a warning's message")
    repeat = conn.execute(
        select(RunWarning.id).where(
            RunWarning.run_id == run_id,
            RunWarning.kind == warning.kind,
            RunWarning.severity == warning.severity,
            RunWarning.step == warning.step,
            RunWarning.message == warning.message,
        )
    ).first()
    if repeat is None:
        insert_warning(conn, run_id, warning)
        summary: dict[str, Any] = {"warning_count": Run.warning_count + 1}
        if SEVERITY_RANK[warning.severity] > SEVERITY_RANK.get(row.max_severity or "", -1):
            summary["max_severity"] = warning.severity
        conn.execute(update(Run).where(Run.id == run_id).values(**summary))
    session.commit()
    return repeat is None


def append_scalars(*, session: Session, run_id: int, body: ScalarsIn) -> bool:
    """Store scalars of the user's own (app.storage.scalars); False when all of them were stored before."""
    conn = session.connection()
    _running(_open(conn, run_id), run_id)
    stored = scalars.append_scalars(conn, run_id, body)
    session.commit()
    return stored


# --- heartbeat and end --------------------------------------------------------------------------------
def beat(*, session: Session, run_id: int) -> HeartbeatPublic:
    """The client is alive: stamp the heartbeat (taking the run back if it was marked lost meanwhile)."""
    row = _open(session.connection(), run_id)
    session.commit()
    return HeartbeatPublic(
        status=row.status, cancel_requested=row.cancel_requested, steps=row.steps, last_step=row.last_step
    )


def finish_external_run(*, session: Session, run_id: int, body: RunFinish) -> Run:
    """Store the run's final status; repeating the same end is a no-op, another end of a finished run a 409.
    A note the run carries from being taken back from the reaper is kept in front of the error."""
    row = _open(session.connection(), run_id)
    run = get_run(session=session, run_id=run_id)
    if row.status != "running":
        if row.status == body.status:
            session.commit()
            return run
        raise Conflict(f"Run {run_id} already ended as {row.status}; it cannot end again as {body.status}")
    run.status = body.status
    run.error = "; ".join(filter(None, [row.error, body.error])) or None
    run.finished_at = utcnow()
    run.duration_s = body.duration_s if body.duration_s is not None else elapsed(run)
    if body.data_lost:
        run.data_lost = body.data_lost
    session.add(run)
    session.commit()
    session.refresh(run)
    return run
