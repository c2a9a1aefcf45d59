"""`database_url` mode: the run goes straight into the database, as a worker writes its runs.

The one place the client reaches into `app/` (imported here only, when this mode is chosen): the external
run is created by `app.storage.ingest`, its records go through the worker's own `DatabaseSink` (a queue
and one writer thread, retries, rollups) and its heartbeat is a worker's `Heartbeat` thread.
"""

from __future__ import annotations

import logging
import os
import socket
from typing import Any

from collapsewatch.transport import jsonable
from trainer.records import BATCH_COLUMNS, BatchChunk, CollapseWarning, DataProfile, EvalRecord, RunInfo, TrainResult

log = logging.getLogger("collapsewatch")


class DatabaseTransport:
    """One run's records into the database at `url` (created and upgraded as the server would)."""

    def __init__(self, url: str, create: dict[str, Any], *, heartbeat_seconds: float = 1.0) -> None:
        from sqlmodel import Session

        from app.storage.engine import init_db, make_engine
        from app.storage.ingest import create_external_run
        from app.storage.ingest_models import ExternalRunCreate
        from app.worker.claim import Heartbeat
        from app.worker.sink import DatabaseSink

        self.engine = make_engine(url)
        init_db(self.engine)
        client = create.get("client") or f"{socket.gethostname()}:{os.getpid()}"
        with Session(self.engine) as session:
            run, _ = create_external_run(session=session, run_in=ExternalRunCreate(**jsonable(create)), client=client)
            self.run_id: int | None = run.id
            self.worker = str(run.worker)
        self._config = dict(run.config)
        self._steps_per_epoch = create.get("steps_per_epoch") or 0
        assert self.run_id is not None
        self._sink = DatabaseSink(self.engine, self.run_id, worker=self.worker)
        self._heartbeat = Heartbeat(self.engine, self.run_id, self.worker, heartbeat_seconds).__enter__()
        self._steps = 0
        self._epoch = 0
        self._warnings: list[CollapseWarning] = []
        self.url: str | None = None
        self.failure: str | None = None

    @property
    def cancel_requested(self) -> bool:
        return self._heartbeat.stop_reason == "cancelled"

    @property
    def dropped_batches(self) -> int:
        return self._sink.lost_batches

    def start(self, info: dict[str, Any]) -> None:
        """Store what the first chunk taught: the class count and the targets' profile (Run.info)."""
        profile: DataProfile = info["profile"]
        self._sink.on_start(
            RunInfo(
                config=self._config,
                device=str(info.get("device", "")),
                num_classes=profile.num_classes,
                columns=BATCH_COLUMNS,
                profile=profile,
                class_weights=[],
                n_parameters=0,
                steps_per_epoch=self._steps_per_epoch,
            )
        )

    def send_chunk(self, chunk: BatchChunk) -> None:
        self._steps += len(chunk)
        self._epoch = int(chunk.epochs[-1])
        self._sink.on_batches(chunk)

    def send_eval(self, record: EvalRecord) -> None:
        self._sink.on_eval(record)

    def send_warning(self, warning: CollapseWarning) -> None:
        self._warnings.append(warning)
        self._sink.on_warning(warning)

    def send_scalars(self, chunk: Any) -> None:
        """Written at once, in the caller's thread: once a chunk of batches, a small transaction."""
        from sqlmodel import Session

        from app.storage.ingest import append_scalars
        from app.storage.ingest_models import ScalarsIn

        try:
            with Session(self.engine) as session:
                append_scalars(session=session, run_id=self.run_id or 0, body=ScalarsIn(**chunk.body()))
        except Exception as exc:  # the loop goes on; what is lost is said on the run
            log.error("collapsewatch: scalars of run %s not stored: %s", self.run_id, exc)
            self.failure = self.failure or f"scalars not stored: {exc}"

    def finish(self, status: str, error: str | None, duration_s: float, timeout: float) -> bool:
        """The end through the sink (which waits for its writer), then the worker's own final write as a
        safety net; a run the reaper marked lost meanwhile is taken back first."""
        from app.worker.claim import finish_run

        self._heartbeat.__exit__(None, None, None)
        result = TrainResult(
            status=status,
            config=self._config,
            steps=self._steps,
            epochs=self._epoch + 1 if self._steps else 0,
            duration_s=duration_s,
            final_eval=None,
            warnings=self._warnings,
            error=error,
        )
        self._sink.on_end(result)
        try:
            run_id = self.run_id or 0
            finish_run(self.engine, run_id, worker=self.worker, status=status, error=error, duration_s=duration_s)
        except Exception as exc:  # the database is gone: the reaper marks the run lost
            log.error("collapsewatch: could not store the end of run %s: %s", self.run_id, exc)
            self.failure = str(exc)
        self.engine.dispose()
        return self._sink.error is None and self.failure is None
