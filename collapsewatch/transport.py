"""Sending a run to the server (the ingest API) from one background thread, so the loop never waits on it.

The caller only appends to an inbox. The sender thread encodes each record, appends it to the run's spool
on disk (collapsewatch/spool.py: a killed process loses only its last unflushed batches, and
`collapsewatch sync` uploads what is left), then sends every record in order, a heartbeat when idle. A
failure it may outlive (server down, 5xx, a timeout) is retried with backoff; meanwhile at most
`max_pending_batches` batches stay in memory and the older ones are read back from the spool. Without a
spool (none asked for, or a full disk) the oldest unsent chunks are dropped instead, counted, and the count
goes to the run's `data_lost`. A refusal (4xx) drops that record with a logged reason; a run the server no
longer has stops the sending. Offline mode is the same spool with no sender.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import logging
import math
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from collapsewatch.scalars import ScalarChunk
from collapsewatch.spool import Record, Spool, encode
from trainer.records import BatchChunk, CollapseWarning, EvalRecord

log = logging.getLogger("collapsewatch")
RETRY_DELAYS = (0.1, 0.25, 0.5, 1.0, 2.0, 5.0)  # then every 5 s
GIVE_UP_AFTER = 120.0  # seconds after the run ended (finish) that the sender keeps retrying what is left
MAX_PENDING_BATCHES = 100_000  # about 30 MB of statistics for 10 classes
# what the loop may hand over before the sender thread takes it: a loop on a busy machine can outrun it
# by a few chunks, and only a sender stuck for long (a request hanging) should cost data
MIN_INBOX_BATCHES = 10_000
_RETRYABLE = {408, 425, 429, 500, 502, 503, 504}
_ENDED = {"completed", "failed", "cancelled", "diverged"}


def jsonable(value: Any) -> Any:
    """JSON with non-finite numbers as "NaN" / "Infinity" / "-Infinity" (as the API reads them); numpy
    scalars and arrays as numbers and lists, anything else JSON has no type for as its str()."""
    if isinstance(value, np.ndarray | np.generic):
        value = value.tolist()
    if isinstance(value, bool | int | str) or value is None:
        return value
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, float):
        return value
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    return str(value)


def chunk_body(chunk: BatchChunk, *, packed: bool = True) -> dict[str, Any]:
    """A chunk as the body of POST /api/ingest/runs/{id}/chunks: its numbers packed as base64 float64 arrays
    (NaN kept as it is; JSON lists of floats cost 10x as much to encode, in a process that trains), or with
    `packed=False` as columnar JSON lists."""
    hist = np.clip(np.nan_to_num(chunk.class_hist), 0.0, 1.0)  # shares, rounding aside
    head = {"steps": chunk.steps.tolist(), "epochs": chunk.epochs.tolist()}
    if packed:
        values = np.ascontiguousarray(chunk.values.T, dtype="<f8")  # (columns, steps)
        return head | {
            "packed": {
                "columns": list(chunk.columns),
                "values": base64.b64encode(values.tobytes()).decode("ascii"),
                "class_hist": base64.b64encode(np.ascontiguousarray(hist, dtype="<f8").tobytes()).decode("ascii"),
            }
        }
    columns = {}
    for j, name in enumerate(chunk.columns):
        col = chunk.values[:, j]
        columns[name] = col.tolist() if np.isfinite(col).all() else jsonable(col)
    return head | {"values": columns, "class_hist": hist.tolist()}


def as_record(path: str, item: Any) -> Record:
    """What the caller handed over, encoded (in the sender thread, never the loop's)."""
    if path == "chunks":
        return Record(path, len(item), (int(item.steps[0]), int(item.steps[-1])), encode(chunk_body(item)))
    body = jsonable(dataclasses.asdict(item)) if dataclasses.is_dataclass(item) else jsonable(item)
    return Record(path, data=encode(body))


class Spooler:
    """The caller's side of a run (append and return) and a thread that spools each record to disk;
    `HttpTransport` also sends them. Offline mode uses this class as it is."""

    server: str | None = None

    def __init__(
        self, spool: Spool | None, *, max_pending_batches: int = MAX_PENDING_BATCHES, upload: list[Record] | None = None
    ) -> None:
        self.run_id: int | None = None
        self.cancel_requested = False  # someone asked to cancel the run from the dashboard
        self.dropped_batches = 0
        self.failure: str | None = None  # why the sender stopped for good (a refused token, a deleted run)
        self.spool, self._max_pending = spool, max_pending_batches
        self._inbox: list[tuple[str, Any]] = []
        self._inbox_batches = 0
        self._queue: list[Record] = list(upload or [])  # spooled, not yet acknowledged; the sender thread's own
        self._memory_batches = 0  # batches of `_queue` whose body is in memory
        self._dropped_steps = (math.inf, -math.inf)  # the first and last step dropped
        self._cond = threading.Condition()
        self._upload = upload is not None  # a sync: send what the spool holds, then stop
        self._ended_at = time.monotonic() if self._upload else math.inf
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name="collapsewatch-sender", daemon=True)
        self._thread.start()

    @property
    def url(self) -> str | None:
        return f"{self.server}/runs/{self.run_id}" if self.server and self.run_id is not None else None

    # --- the caller's side ----------------------------------------------------------------------
    def start(self, info: dict[str, Any]) -> None:
        """What the first chunk taught (the server learns the class count from the chunk itself)."""

    def send_chunk(self, chunk: BatchChunk) -> None:
        with self._cond:
            self._inbox.append(("chunks", chunk))
            self._inbox_batches += len(chunk)
            while self._inbox_batches > max(self._max_pending, MIN_INBOX_BATCHES) and self._drop_oldest_in_inbox():
                pass  # the sender thread is stuck (a request hanging): keep memory bounded
            self._cond.notify()

    def send_eval(self, record: EvalRecord) -> None:
        self._put("evals", record)

    def send_warning(self, warning: CollapseWarning) -> None:
        self._put("warnings", warning)

    def send_scalars(self, chunk: ScalarChunk) -> None:
        self._put("scalars", chunk.body())

    def finish(self, status: str, error: str | None, duration_s: float, timeout: float) -> bool:
        """Send the end after everything queued; wait up to `timeout` s. Whether all of it was delivered."""
        self._put("finish", {"status": status, "error": error, "duration_s": duration_s, "data_lost": None})
        with self._cond:
            self._ended_at = time.monotonic()
        delivered = self._done.wait(timeout)
        if not delivered:
            where = f"; it is kept in {self.spool.directory}: `collapsewatch sync {self.spool.directory}` uploads it"
            log.warning(
                "collapsewatch: the end of run %s could not be sent within %.0f s%s", self.run_id, timeout,
                where if self.spool else "",
            )  # fmt: skip
        return delivered and self.failure is None

    def wait(self, timeout: float | None = None) -> bool:
        """Wait for the sender to end (everything delivered, or given up); whether it did within `timeout`."""
        return self._done.wait(timeout)

    def _put(self, path: str, item: Any) -> None:
        with self._cond:
            self._inbox.append((path, item))
            self._cond.notify()

    def _drop_oldest_in_inbox(self) -> bool:
        for i, (path, item) in enumerate(self._inbox):
            if path == "chunks":
                del self._inbox[i]
                self._inbox_batches -= len(item)
                self._count_dropped(len(item), (int(item.steps[0]), int(item.steps[-1])))
                return True
        return False

    def _count_dropped(self, batches: int, steps: tuple[int, int]) -> None:
        self.dropped_batches += batches
        first, last = self._dropped_steps
        self._dropped_steps = (min(first, steps[0]), max(last, steps[1]))

    def dropped_note(self) -> str | None:
        if not self.dropped_batches:
            return None
        first, last = self._dropped_steps
        return (
            f"{self.dropped_batches} batches (between steps {first} and {last}) were dropped by the client "
            f"(collapsewatch): the server could not take them in time"
        )

    # --- the sender thread ----------------------------------------------------------------------
    def _take_inbox(self, wait: float = 0.0) -> bool:
        """Move what the caller handed over into the spool and the queue; whether the end was among it."""
        with self._cond:
            if not self._inbox and wait > 0:
                self._cond.wait(wait)
            items, self._inbox, self._inbox_batches = self._inbox, [], 0
        ended = False
        for path, item in items:
            record = as_record(path, item)
            ended = ended or path == "finish"
            self._spool_record(record)
            self._queue.append(record)
            self._memory_batches += record.batches
        self._bound_memory()
        return ended

    def _spool_record(self, record: Record) -> None:
        if self.spool is None:
            return
        try:
            self.spool.append(record)
        except OSError as exc:  # a full disk: go on in memory, bounded (dropping the oldest chunks)
            log.error("collapsewatch: writing the spool %s failed (%s); records stay in memory", self.spool, exc)
            self.spool = None

    def _bound_memory(self) -> None:
        for i, record in enumerate(self._queue):
            if self._memory_batches <= self._max_pending:
                return
            if record.path != "chunks" or record.data is None or i == 0:
                continue  # the head may be in flight
            self._memory_batches -= record.batches
            if record.offset is not None:
                record.data = None  # read back from the spool when its turn comes
            else:
                del self._queue[i]
                self._count_dropped(record.batches, record.steps)
                return self._bound_memory()

    def _run(self) -> None:
        """Offline: spool everything, then close the spool at the end."""
        ended = False
        while not ended:
            ended = self._take_inbox(wait=1.0)
            for record in self._queue:
                if record.offset is None and record.path == "chunks":  # the disk refused it
                    self._count_dropped(record.batches, record.steps)
            self._queue.clear()
            self._memory_batches = 0
        if self.spool is not None:
            self.spool.close()
            log.info("collapsewatch: run kept in %s; `collapsewatch sync %s` uploads it", *[self.spool.directory] * 2)
        else:
            self.failure = "the run could not be written to disk"
        self._done.set()


class HttpTransport(Spooler):
    """One run's records to `server`; every method returns at once but `finish`, which waits up to its timeout."""

    def __init__(
        self,
        server: str,
        create: dict[str, Any],
        *,
        token: str | None = None,
        spool: Spool | None = None,
        max_pending_batches: int = MAX_PENDING_BATCHES,
        heartbeat_seconds: float = 1.0,
        timeout: float = 10.0,
        give_up_after: float = GIVE_UP_AFTER,
        upload: list[Record] | None = None,
        resume: tuple[int | None, int] = (None, 0),
    ) -> None:
        self.server = server.rstrip("/")
        self._resume = resume  # a sync: (the run's id there, the lines it acknowledged) from the last one
        self._create, self._heartbeat, self._give_up_after = create, heartbeat_seconds, give_up_after
        self._sent_lines = 0
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(base_url=f"{self.server}/api", headers=headers, timeout=timeout)
        super().__init__(spool, max_pending_batches=max_pending_batches, upload=upload)

    def _run(self) -> None:
        attempt, last_sent = 0, time.monotonic()
        while True:
            idle = self._heartbeat - (time.monotonic() - last_sent)
            self._take_inbox(wait=max(0.01, idle) if not self._queue else 0.0)
            record = self._queue[0] if self._queue else None
            if record is None and self._upload and self.run_id is not None:
                return self._abandon()  # a sync of a run whose end was never written: all of it is sent
            if record is None and time.monotonic() - last_sent < self._heartbeat:
                continue
            try:
                done = self._send(record)
            except (httpx.TransportError, _Retry) as exc:
                if attempt == 0:
                    log.warning("collapsewatch: sending to %s failed (%s); retrying meanwhile", self.server, exc)
                if time.monotonic() - self._ended_at > self._give_up_after:
                    self.failure = f"the server did not answer within {self._give_up_after:.0f} s of the run's end"
                    log.error("collapsewatch: %s; what is left of run %s is not sent", self.failure, self.run_id)
                    return self._abandon()
                self._take_inbox(wait=RETRY_DELAYS[min(attempt, len(RETRY_DELAYS) - 1)])
                attempt += 1
                continue
            except Exception as exc:  # _Stop, or a bug of ours: the loop must not notice either
                if not isinstance(exc, _Stop):
                    log.exception("collapsewatch: the sender failed; nothing more is sent")
                    self.failure = self.failure or f"{type(exc).__name__}: {exc}"
                return self._abandon()
            if attempt:
                log.warning("collapsewatch: the server answers again; sending what waited")
            attempt, last_sent = 0, time.monotonic()
            if done:
                # everything is on the server; a sync's files are the user's and stay
                if self.spool is not None and self.failure is None and not self._upload:
                    self.spool.remove()
                return self._abandon()

    def _send(self, record: Record | None) -> bool:
        """Deliver one record (None: a heartbeat); True once the end is delivered. Raises to be retried."""
        if self.run_id is None:
            answer = self._post("/ingest/runs", encode(jsonable(self._create)))
            if answer is None:
                self.failure = self.failure or "the server refused to create the run"
                raise _Stop
            self.run_id = int(answer["id"])
            log.info("collapsewatch: run %s at %s", self.run_id, self.url)
            if answer.get("status") in _ENDED and self._upload:
                return self._already_ended(answer)
            if self._resume[0] == self.run_id:  # what the last sync delivered to this very run is skipped
                self._queue = [r for r in self._queue if r.line >= self._resume[1]]
            return False
        if record is None:
            answer = self._post(f"/ingest/runs/{self.run_id}/heartbeat", b"")
            self.cancel_requested = bool(answer and answer.get("cancel_requested"))
            return False
        body = self.spool.body(record) if record.data is None and self.spool else record.data
        assert body is not None
        if record.path == "finish":
            end = {**_loads(body)}
            end["data_lost"] = "; ".join(filter(None, [end.get("data_lost"), self.dropped_note()])) or None
            body = encode(end)
        stored = self._post(f"/ingest/runs/{self.run_id}/{record.path}", body) is not None
        self._queue.pop(0)
        if record.data is not None:
            self._memory_batches -= record.batches
        if not stored:  # refused (logged): not sent again
            self._count_dropped(record.batches, record.steps)
        self._acknowledge(record)
        return record.path == "finish"

    def _acknowledge(self, record: Record) -> None:
        if self.spool is not None and record.line >= 0 and self.run_id is not None:
            self._sent_lines = record.line + 1
            with contextlib.suppress(OSError):  # only a later sync's resume point is lost: nothing is stored twice
                self.spool.mark_sent(self.server or "", self.run_id, self._sent_lines)

    def _already_ended(self, answer: dict[str, Any]) -> bool:
        """A create answered with a run that ended already (a sync repeated after its state was lost): its
        records were all delivered before its end was, so there is nothing left to send."""
        log.info("collapsewatch: run %s ended on the server already (%s): nothing to do", self.run_id, answer["status"])
        self._queue.clear()
        return True

    def _post(self, path: str, body: bytes) -> dict[str, Any] | None:
        """The answer's JSON; None when the server refused this record (logged). Raises `_Retry`."""
        response = self._http.post(path, content=body, headers={"Content-Type": "application/json"})
        if response.status_code in _RETRYABLE:
            raise _Retry(f"{response.status_code} {response.text[:200]}")
        if response.status_code in (401, 403, 404):
            self.failure = f"{response.status_code}: {response.text[:300]}"
            log.error("collapsewatch: the server refused run %s: %s; nothing more is sent", self.run_id, self.failure)
            raise _Stop
        if not response.is_success:
            log.error("collapsewatch: the server refused a record (%s): %s", path, response.text[:300])
            return None
        return response.json() if response.content else {}

    def _abandon(self) -> None:
        """The end is delivered, or the server will take nothing more: count what is left and is on no disk
        as dropped, release `finish` and close the connection."""
        with self._cond:
            left = self._queue + [as_record(p, i) for p, i in self._inbox]
            self._inbox.clear()
        for record in left:
            if record.path == "chunks" and record.offset is None:
                self._count_dropped(record.batches, record.steps)
        self._queue.clear()
        if self.spool is not None:
            self.spool.close()
        self._done.set()
        self._http.close()


def _loads(body: bytes) -> dict[str, Any]:
    import json

    value = json.loads(body)
    return value if isinstance(value, dict) else {}


class _Retry(Exception):
    """An answer worth trying again later (a 5xx, a 429)."""


class _Stop(Exception):
    """The server will never take this run's records (a refused token, a deleted run)."""


def open_spool(root: Path | None, create: dict[str, Any], offline: bool) -> Spool | None:
    """A new spool directory for this run under `root`; None (logged) when the disk refuses it."""
    from collapsewatch.spool import default_root

    try:
        return Spool.new(root if root is not None else default_root(offline), create)
    except OSError as exc:
        if offline:
            raise
        log.error("collapsewatch: no spool for this run (%s): records wait in memory only", exc)
        return None
