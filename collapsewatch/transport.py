"""Sending a run to the server (the ingest API) from one background thread, so the loop never waits on it.

The caller only appends to a queue. The sender creates the run, then sends every record in order, a
heartbeat when idle; a failure it may outlive (server down, 5xx, a timeout) is retried with backoff,
keeping what is unsent in memory up to `max_pending_batches` batches: past that the oldest unsent
chunks are dropped, counted, and the count goes to the run's `data_lost` when it ends. A refusal (4xx)
drops that record with a logged reason; a run the server no longer has stops the sending.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import threading
import time
from collections import deque
from typing import Any

import httpx
import numpy as np

from trainer.records import BatchChunk, CollapseWarning, EvalRecord

log = logging.getLogger("collapsewatch")
RETRY_DELAYS = (0.1, 0.25, 0.5, 1.0, 2.0, 5.0)  # then every 5 s
GIVE_UP_AFTER = 120.0  # seconds after the run ended (finish) that the sender keeps retrying what is left
MAX_PENDING_BATCHES = 100_000  # about 30 MB of statistics for 10 classes
_RETRYABLE = {408, 425, 429, 500, 502, 503, 504}


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


def chunk_body(chunk: BatchChunk) -> dict[str, Any]:
    """A chunk as the compact, columnar body of POST /api/ingest/runs/{id}/chunks."""
    columns = {}
    for j, name in enumerate(chunk.columns):
        col = chunk.values[:, j]
        columns[name] = col.tolist() if np.isfinite(col).all() else jsonable(col)
    return {
        "steps": chunk.steps.tolist(),
        "epochs": chunk.epochs.tolist(),
        "values": columns,
        "class_hist": np.clip(np.nan_to_num(chunk.class_hist), 0.0, 1.0).tolist(),  # shares, rounding aside
    }


@dataclasses.dataclass(eq=False)  # compared by identity: the record in flight is found as itself
class _Item:
    path: str  # under /api/ingest/runs/{id}/
    body: Any  # the record; encoded in the sender thread
    batches: int = 0
    steps: tuple[int, int] = (0, 0)


class HttpTransport:
    """One run's records to `server`; every method returns at once but `finish`, which waits up to its timeout."""

    def __init__(
        self,
        server: str,
        create: dict[str, Any],
        *,
        token: str | None = None,
        max_pending_batches: int = MAX_PENDING_BATCHES,
        heartbeat_seconds: float = 1.0,
        timeout: float = 10.0,
        give_up_after: float = GIVE_UP_AFTER,
    ) -> None:
        self.server = server.rstrip("/")
        self.run_id: int | None = None
        self.cancel_requested = False  # someone asked to cancel the run from the dashboard
        self.dropped_batches = 0
        self.failure: str | None = None  # why the sender stopped for good (a refused token, a deleted run)
        self._create, self._max_pending, self._heartbeat = create, max_pending_batches, heartbeat_seconds
        self._give_up_after, self._ended_at = give_up_after, math.inf
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(base_url=f"{self.server}/api", headers=headers, timeout=timeout)
        self._queue: deque[_Item] = deque()
        self._pending_batches = 0
        self._dropped_steps = (math.inf, -math.inf)  # the first and last step dropped
        self._cond = threading.Condition()
        self._finish: _Item | None = None
        self._inflight: _Item | None = None  # never dropped while the sender posts it
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name="collapsewatch-sender", daemon=True)
        self._thread.start()

    @property
    def url(self) -> str | None:
        return f"{self.server}/runs/{self.run_id}" if self.run_id is not None else None

    # --- the caller's side: append and return ---------------------------------------------------
    def start(self, info: dict[str, Any]) -> None:
        """What the first chunk taught (the server learns the class count from the chunk itself)."""

    def send_chunk(self, chunk: BatchChunk) -> None:
        n = len(chunk)
        item = _Item("chunks", chunk, n, (int(chunk.steps[0]), int(chunk.steps[-1])))
        with self._cond:
            self._queue.append(item)
            self._pending_batches += n
            while self._pending_batches > self._max_pending and self._drop_oldest_chunk():
                pass
            self._cond.notify()

    def send_eval(self, record: EvalRecord) -> None:
        self._put(_Item("evals", dataclasses.asdict(record)))

    def send_warning(self, warning: CollapseWarning) -> None:
        self._put(_Item("warnings", dataclasses.asdict(warning)))

    def finish(self, status: str, error: str | None, duration_s: float, timeout: float) -> bool:
        """Send the end after everything queued; wait up to `timeout` s. Whether all of it was delivered."""
        with self._cond:
            self._finish = _Item("finish", {"status": status, "error": error, "duration_s": duration_s})
            self._ended_at = time.monotonic()
            self._cond.notify()
        delivered = self._done.wait(timeout)
        if not delivered:
            with self._cond:
                unsent = self._pending_batches
            log.warning(
                "collapsewatch: %s could not be sent within %.0f s; run %s stays marked running until the server's "
                "heartbeat timeout marks it lost", f"{unsent} batches" if unsent else "the end of the run", timeout,
                self.run_id,
            )  # fmt: skip
        return delivered and self.failure is None

    def _put(self, item: _Item) -> None:
        with self._cond:
            self._queue.append(item)
            self._cond.notify()

    def _drop_oldest_chunk(self) -> bool:
        for i, item in enumerate(self._queue):
            if item.path == "chunks" and item is not self._inflight:
                del self._queue[i]
                self._count_dropped(item)
                return True
        return False

    def _count_dropped(self, item: _Item) -> None:
        self._pending_batches -= item.batches
        self.dropped_batches += item.batches
        first, last = self._dropped_steps
        self._dropped_steps = (min(first, item.steps[0]), max(last, item.steps[1]))

    def dropped_note(self) -> str | None:
        if not self.dropped_batches:
            return None
        first, last = self._dropped_steps
        return (
            f"{self.dropped_batches} batches (between steps {first} and {last}) were dropped by the client "
            f"(collapsewatch): the server could not take them in time"
        )

    # --- the sender thread ----------------------------------------------------------------------
    def _run(self) -> None:
        attempt, last_sent = 0, time.monotonic()
        while True:
            with self._cond:
                item = self._next()
                while item is None and time.monotonic() - last_sent < self._heartbeat:
                    self._cond.wait(max(0.01, self._heartbeat - (time.monotonic() - last_sent)))
                    item = self._next()
                self._inflight = item
            try:
                done = self._send(item)
            except (httpx.TransportError, _Retry) as exc:
                if attempt == 0:
                    log.warning("collapsewatch: sending to %s failed (%s); retrying meanwhile", self.server, exc)
                if time.monotonic() - self._ended_at > self._give_up_after:
                    self.failure = f"the server did not answer within {self._give_up_after:.0f} s of the run's end"
                    log.error("collapsewatch: %s; what is left of run %s is dropped", self.failure, self.run_id)
                    self._abandon()
                    return
                time.sleep(RETRY_DELAYS[min(attempt, len(RETRY_DELAYS) - 1)])
                attempt += 1
                continue
            except Exception as exc:  # _Stop, or a bug of ours: the loop must not notice either
                if not isinstance(exc, _Stop):
                    log.exception("collapsewatch: the sender failed; nothing more is sent")
                    self.failure = self.failure or f"{type(exc).__name__}: {exc}"
                self._abandon()
                return
            if attempt:
                log.warning("collapsewatch: the server answers again; sending what waited")
            attempt, last_sent = 0, time.monotonic()
            if done or self.failure is not None:
                self._abandon()
                return

    def _next(self) -> _Item | None:
        """The next record (the end only once everything before it is sent); None: a heartbeat is due."""
        if self._queue:
            return self._queue[0]
        return self._finish

    def _send(self, item: _Item | None) -> bool:
        """Deliver one record (None: a heartbeat); True once the end is delivered. Raises to be retried."""
        if self.run_id is None:
            answer = self._post("/ingest/runs", jsonable(self._create))
            if answer is None:
                return self._stop("the server refused to create the run")
            self.run_id = int(answer["id"])
            log.info("collapsewatch: run %s at %s", self.run_id, self.url)
            return False
        if item is None:
            answer = self._post(f"/ingest/runs/{self.run_id}/heartbeat", None)
            self.cancel_requested = bool(answer and answer.get("cancel_requested"))
            return False
        if item.path == "finish":
            body = {**item.body, "data_lost": self.dropped_note()}
            self._post(f"/ingest/runs/{self.run_id}/finish", body)
            return True
        body = chunk_body(item.body) if item.path == "chunks" else jsonable(item.body)
        stored = self._post(f"/ingest/runs/{self.run_id}/{item.path}", body) is not None
        with self._cond:
            self._queue.remove(item)
            if stored:
                self._pending_batches -= item.batches
            else:  # refused (logged): not sent again
                self._count_dropped(item)
        return False

    def _post(self, path: str, body: Any) -> dict[str, Any] | None:
        """The answer's JSON; None when the server refused this record (logged). Raises `_Retry`."""
        response = self._http.post(path, json=body)
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

    def _stop(self, why: str) -> bool:
        self.failure = self.failure or why
        return False

    def _abandon(self) -> None:
        """The end is delivered, or the server will take nothing more: count what is left as dropped,
        release `finish` and close the connection."""
        with self._cond:
            for item in self._queue:
                if item.path == "chunks":
                    self._count_dropped(item)
            self._queue.clear()
        self._done.set()
        self._http.close()


class _Retry(Exception):
    """An answer worth trying again later (a 5xx, a 429)."""


class _Stop(Exception):
    """The server will never take this run's records (a refused token, a deleted run)."""
