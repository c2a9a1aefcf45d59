"""The server's budgets: how large a run, an upload and a table may be, checked before anything is spent.

A run's memory and time come from `trainer.budget.estimate`; an upload is capped in bytes while it is
copied; an NPZ or Parquet table's size is read from its headers (zip members' uncompressed sizes and
.npy shapes, Parquet's footer) before a byte of it is decompressed, so a 1 MB file that inflates to
gigabytes is refused without inflating it.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import threading
import zipfile
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures import TimeoutError as FuturesTimeout
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.core.config import Settings
from app.errors import InputError
from trainer import TrainConfig
from trainer.budget import TABLE_BYTES_PER_CELL, estimate
from trainer.config import processes_problem
from trainer.table_checks import TableError


class TooLarge(ValueError):
    """An upload over the byte cap (413)."""


@dataclass(frozen=True)
class Limits:
    run_memory_bytes: int
    run_seconds: float
    upload_bytes: int

    @classmethod
    def from_settings(cls, settings: Settings) -> Limits:
        return cls(
            run_memory_bytes=settings.max_run_memory_mb * 2**20,
            run_seconds=settings.max_run_hours * 3600.0,
            upload_bytes=settings.max_upload_mb * 2**20,
        )

    @property
    def table_cells(self) -> int:
        """The most cells (rows x columns) a table may hold: what a run on it could load in its budget."""
        return self.run_memory_bytes // TABLE_BYTES_PER_CELL


def check_run(cfg: TrainConfig, limits: Limits, rows: int | None = None, features: int | None = None) -> None:
    """InputError (422 at `config`) when the run would need more memory or time than the server allows, or more
    CUDA devices than this machine has (422 at `config.processes`)."""
    problem = processes_problem(cfg.processes, cfg.device)
    if problem is not None:
        raise InputError.at(["body", "config", "processes"], problem, "value_error.config")
    cost = estimate(cfg, rows=rows, features=features)
    # every process of a run holds the data, the model and the torch runtime: the memory is per process. The
    # time stays one process's: on the CPU the processes share the worker's cores (bench/RESULTS.md, ddp)
    memory, described = cost.memory_bytes * cfg.processes, cost.describe()
    if cfg.processes > 1:
        described += f", on each of {cfg.processes} processes: {memory / 2**20:,.0f} MB in all"
    over = []
    if memory > limits.run_memory_bytes:
        over.append(f"the memory budget of {limits.run_memory_bytes // 2**20:,} MB (COLLAPSEWATCH_MAX_RUN_MEMORY_MB)")
    if cost.seconds > limits.run_seconds:
        over.append(f"the time budget of {limits.run_seconds / 3600:g} h (COLLAPSEWATCH_MAX_RUN_HOURS)")
    if over:
        fewer = "fewer processes, samples" if cfg.processes > 1 else "fewer samples"
        raise InputError.at(
            ["body", "config"],
            f"this run would need {described}: over {' and '.join(over)}. Use {fewer}, features, "
            "epochs or narrower hidden layers",
            "value_error.budget",
        )


def copy_capped(upload: BinaryIO, target: Path, limit: int) -> int:
    """Copy an upload to `target`, stopping (TooLarge) as soon as it passes `limit` bytes."""
    written = 0
    with target.open("wb") as fh:
        while chunk := upload.read(1 << 20):
            written += len(chunk)
            if written > limit:
                raise TooLarge(f"the upload is larger than the server's limit of {limit // 2**20:,} MB")
            fh.write(chunk)
    return written


def check_table_size(path: Path, limits: Limits) -> None:
    """InputError when a table's headers say it holds more than the budget, read without decompressing it."""
    suffix = path.suffix.lower()
    cells = None
    if suffix == ".npz":
        cells, inflated = _npz_size(path)
        small = cells is None or cells <= limits.table_cells
        if small and inflated is not None and inflated > limits.table_cells * 8:
            _refuse(f"the archive inflates to {inflated / 2**20:,.0f} MB", limits)
    elif suffix in (".parquet", ".pq"):
        cells = _parquet_cells(path)
    if cells is not None and cells > limits.table_cells:
        _refuse(f"the table holds {cells:,} cells", limits)


def _refuse(what: str, limits: Limits) -> None:
    raise InputError.at(
        ["body", "file"],
        f"{what}, more than a run could load in the server's memory budget of "
        f"{limits.run_memory_bytes // 2**20:,} MB (at most {limits.table_cells:,} cells)",
        "value_error.budget",
    )


def _npz_size(path: Path) -> tuple[int | None, int | None]:
    """(cells of its arrays from their .npy headers, total uncompressed bytes), or Nones if unreadable."""
    try:
        with zipfile.ZipFile(path) as archive:
            infos = archive.infolist()
            cells = 0
            for info in infos:
                if not info.filename.endswith(".npy"):
                    continue
                with archive.open(info) as member:
                    major, _ = np.lib.format.read_magic(member)
                    read_header = (
                        np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
                    )
                    shape, _, _ = read_header(member)  # the header only: the data stays compressed
                cells += int(np.prod(shape, dtype=np.int64))
            return cells, sum(i.file_size for i in infos)
    except Exception:  # not a zip, a broken header: the reader reports it with its own message
        return None, None


def _parquet_cells(path: Path) -> int | None:
    try:
        import pyarrow.parquet as pq

        meta = pq.read_metadata(path)
        return int(meta.num_rows) * int(meta.num_columns)
    except Exception:  # not Parquet after all: the reader says so
        return None


# --- reading an upload in a child process --------------------------------------------------------------
# A table is parsed outside the web server: a file that needs more memory than the budget ends a child
# with a MemoryError (its address space is capped), not the server, and the server's event loop and
# memory stay free while it reads. One warm child is reused, so only the first upload pays the start.
READER_BASELINE_BYTES = 1536 * 2**20  # the interpreter with numpy and pyarrow mapped in
READ_TIMEOUT_S = 300.0
_reader: ProcessPoolExecutor | None = None
_reader_limit = 0
_reader_lock = threading.Lock()


def _cap_address_space(limit: int) -> None:
    import resource

    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def describe_table(path: str | Path, label_column: str | None) -> dict[str, Any]:
    """The table's summary (trainer.read_table_summary: columns, shape, target entropy and class shares)
    plus the sha256 of its bytes, so a run can say exactly which file it trained on."""
    from trainer.data import read_table_summary

    summary = read_table_summary(path, label_column=label_column)
    with Path(path).open("rb") as fh:
        summary["sha256"] = hashlib.file_digest(fh, "sha256").hexdigest()
    return summary


def _summarise(path: str, label_column: str | None) -> tuple[Any, ...]:
    from trainer.table_checks import TableError

    try:
        return ("ok", describe_table(path, label_column))
    except TableError as exc:  # sent as its parts: the exception itself does not survive pickling
        return ("table", exc.issues, exc.more)
    except MemoryError:
        return ("memory",)


def _reader_pool(limit: int) -> ProcessPoolExecutor:
    global _reader, _reader_limit
    with _reader_lock:
        if _reader is None or _reader_limit != limit:
            if _reader is not None:
                _reader.shutdown(wait=False, cancel_futures=True)
            context = multiprocessing.get_context("spawn")  # never fork a server with threads
            _reader = ProcessPoolExecutor(1, mp_context=context, initializer=_cap_address_space, initargs=(limit,))
            _reader_limit = limit
        return _reader


def _drop_reader() -> None:
    global _reader
    with _reader_lock:
        if _reader is not None:
            _reader.shutdown(wait=False, cancel_futures=True)
        _reader = None


def summarise_table(path: Path, label_column: str | None, limits: Limits) -> dict[str, Any]:
    """The table's summary, read in the capped child; TableError for a broken table, InputError when the
    reader ran out of memory or time."""
    limit = limits.run_memory_bytes + READER_BASELINE_BYTES
    try:
        outcome = _reader_pool(limit).submit(_summarise, str(path), label_column).result(READ_TIMEOUT_S)
    except BrokenProcessPool:
        _drop_reader()
        outcome = ("memory",)
    except FuturesTimeout:
        _drop_reader()
        raise InputError.at(["body", "file"], f"reading the table took longer than {READ_TIMEOUT_S:.0f} s") from None
    if outcome[0] == "table":
        raise TableError(outcome[1], outcome[2])
    if outcome[0] == "memory":
        raise InputError.at(
            ["body", "file"],
            f"reading the table needs more than the server's memory budget of {limits.run_memory_bytes // 2**20:,} MB",
            "value_error.budget",
        )
    summary = outcome[1]
    cells = summary["rows"] * (summary["n_features"] + summary["num_classes"])
    if cells > limits.table_cells:  # a CSV has no header that says its size: known once parsed
        _refuse(f"the table holds {cells:,} cells", limits)
    return summary


def shutdown_reader() -> None:
    """Stop the reader child (at server shutdown)."""
    _drop_reader()


class BodyLimitMiddleware:
    """Refuses a request body over `limit` bytes (413) before it is spooled to disk: by its Content-Length
    when it has one, else by counting as it arrives. A Content-Length that is not a byte count is a 400."""

    def __init__(self, app: ASGIApp, *, upload_mb: int) -> None:
        # a multipart body carries a little more than its file: the cap itself is checked on the file
        self.app, self.upload_mb, self.limit = app, upload_mb, (upload_mb + 1) * 2**20

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        lengths = {v for k, v in scope.get("headers", []) if k == b"content-length"}  # ASGI: names lowercased
        if lengths:
            length = _content_length(lengths)
            if length is None:
                detail = "the Content-Length header must be one number of bytes, in ASCII digits only"
                await _send_refusal(send, 400, detail)
                return
            if length > self.limit:
                await _send_refusal(send, 413, _too_large_detail(self.upload_mb))
                return
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit:
                raise TooLarge(f"the upload is larger than the server's limit of {self.upload_mb:,} MB")
            return message

        await self.app(scope, counted, send)


def _content_length(values: set[bytes]) -> int | None:
    """The body's length from its Content-Length headers, or None unless they agree on one 1*DIGIT
    (RFC 9110): bytes.isdigit is ASCII-only, so no sign, space or other script's digits pass. Leading
    zeros are dropped and the digits capped before int(), which refuses strings past 4,300 digits."""
    if len(values) != 1:
        return None
    (raw,) = values
    if not raw.isdigit():
        return None
    digits = raw.lstrip(b"0") or b"0"
    return int(digits) if len(digits) <= 30 else 10**30  # longer: far past any limit


def _too_large_detail(upload_mb: int) -> str:
    return f"the upload is larger than the server's limit of {upload_mb:,} MB (COLLAPSEWATCH_MAX_UPLOAD_MB)"


async def _send_refusal(send: Send, status: int, detail: str) -> None:
    body = json.dumps({"detail": detail}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
