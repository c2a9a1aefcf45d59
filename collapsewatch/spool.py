"""A run's records on local disk: the client's write-ahead log, what offline mode writes and what
`collapsewatch sync` uploads.

    DIR/<key>/run.json       what creates the run (name, config, ...), with its client key and start time
    DIR/<key>/records.jsonl  one JSON line per record, in the order logged: {"path", "batches", "steps", "body"}
    DIR/<key>/sent.json      per server, the run's id there and how many lines it acknowledged

Lines are appended and flushed as the sender takes them (fsynced at the end), so a killed process loses
only what it had not flushed; `sent.json` is replaced atomically after each acknowledged record, so a sync
resumes where the last one stopped and the server's idempotent ingest stores nothing twice either way.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

FORMAT = 1
RUN_FILE, RECORDS_FILE, SENT_FILE = "run.json", "records.jsonl", "sent.json"


def default_root(offline: bool) -> Path:
    """Offline runs go to ./collapsewatch (or $COLLAPSEWATCH_DIR); a live run's safety copy to the user's
    cache (or $COLLAPSEWATCH_SPOOL)."""
    if offline:
        return Path(os.environ.get("COLLAPSEWATCH_DIR") or "collapsewatch")
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return Path(os.environ.get("COLLAPSEWATCH_SPOOL") or cache / "collapsewatch" / "spool")


def encode(body: Any) -> bytes:
    """A record's body as compact JSON (non-finite numbers are already strings: see transport.jsonable)."""
    return json.dumps(body, separators=(",", ":"), allow_nan=False).encode()


@dataclass(eq=False)  # compared by identity: the record in flight is found as itself
class Record:
    path: str  # under /api/ingest/runs/{id}/: chunks, evals, warnings, finish
    batches: int = 0
    steps: tuple[int, int] = (0, 0)
    data: bytes | None = None  # the encoded body; None once evicted from memory (read back from the file)
    offset: int | None = None  # where its line starts in records.jsonl; None when it was never spooled
    line: int = -1  # its line number (0-based); -1 when never spooled


class Spool:
    """One run's directory. Made by `Spool.new` (a run starting now) or `Spool.open` (an existing one)."""

    def __init__(self, directory: Path, create: dict[str, Any]) -> None:
        self.directory = directory
        self.create = create
        self.key: str = create["client_key"]
        self._file = open(directory / RECORDS_FILE, "ab")  # noqa: SIM115  (kept open for the run's life)
        self.lines = 0
        self._sent: dict[str, dict[str, Any]] = {}

    @classmethod
    def new(cls, root: Path, create: dict[str, Any]) -> Spool:
        key = uuid.uuid4().hex
        directory = Path(root) / key
        directory.mkdir(parents=True, exist_ok=False)
        create = {**create, "client_key": key, "started_at": datetime.now(UTC).isoformat()}
        _replace(directory / RUN_FILE, json.dumps({"format": FORMAT, "create": create}, indent=1).encode())
        return cls(directory, create)

    @classmethod
    def open(cls, directory: Path) -> Spool:
        """An existing run directory; raises ValueError naming what is wrong with it."""
        try:
            head = json.loads((directory / RUN_FILE).read_bytes())
        except (OSError, ValueError) as exc:
            raise ValueError(f"{directory} holds no readable {RUN_FILE}: {exc}") from exc
        if not isinstance(head, dict) or head.get("format") != FORMAT or "client_key" not in head.get("create", {}):
            raise ValueError(f"{directory / RUN_FILE} is not a collapsewatch run (format {FORMAT})")
        spool = cls(directory, head["create"])
        try:
            spool._sent = json.loads((directory / SENT_FILE).read_bytes())
        except FileNotFoundError:
            pass
        except ValueError as exc:
            raise ValueError(f"{directory / SENT_FILE} is damaged ({exc}): delete it to upload it all again") from exc
        return spool

    # --- writing --------------------------------------------------------------------------------
    def append(self, record: Record) -> None:
        """Write the record's line (flushed to the OS, not fsynced); raises OSError (a full disk)."""
        assert record.data is not None
        head = json.dumps({"path": record.path, "batches": record.batches, "steps": list(record.steps)})
        line = head[:-1].encode() + b',"body":' + record.data + b"}\n"
        record.offset = self._file.tell()
        self._file.write(line)
        self._file.flush()
        record.line = self.lines
        self.lines += 1

    def close(self) -> None:
        if not self._file.closed:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()

    def remove(self) -> None:
        """Everything reached the server: the safety copy is not needed any more."""
        self._file.close()
        shutil.rmtree(self.directory, ignore_errors=True)

    # --- reading --------------------------------------------------------------------------------
    def body(self, record: Record) -> bytes:
        """The record's encoded body, from memory or read back from its line."""
        if record.data is not None:
            return record.data
        assert record.offset is not None
        with open(self.directory / RECORDS_FILE, "rb") as f:
            f.seek(record.offset)
            return encode(json.loads(f.readline())["body"])

    def records(self) -> list[Record]:
        """Every complete line of the file (a line cut short by a kill is left out), bodies not loaded."""
        out: list[Record] = []
        offset = 0
        with open(self.directory / RECORDS_FILE, "rb") as f:
            for raw in f:
                if not raw.endswith(b"\n"):
                    break
                try:
                    line = json.loads(raw)
                    out.append(Record(line["path"], int(line["batches"]), tuple(line["steps"]), None, offset, len(out)))
                except (ValueError, KeyError, TypeError):
                    break  # a damaged line: what follows it cannot be trusted in order
                offset += len(raw)
        self.lines = len(out)
        return out

    # --- what a server acknowledged ---------------------------------------------------------------
    def sent(self, server: str) -> tuple[int | None, int]:
        """(the run's id on `server`, how many lines it acknowledged)."""
        state = self._sent.get(server) or {}
        return state.get("run_id"), int(state.get("lines", 0))

    def mark_sent(self, server: str, run_id: int, lines: int) -> None:
        self._sent[server] = {"run_id": run_id, "lines": lines}
        _replace(self.directory / SENT_FILE, json.dumps(self._sent).encode())


def _replace(path: Path, data: bytes) -> None:
    """Write `data` to `path` atomically: a reader sees the old file or the new one, never half of one."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def run_directories(path: Path) -> list[Path]:
    """`path` itself if it is a run directory, else the run directories directly in it, oldest first."""
    path = Path(path)
    if (path / RUN_FILE).is_file():
        return [path]
    if not path.is_dir():
        raise ValueError(f"{path} is not a directory")
    found = [p for p in path.iterdir() if (p / RUN_FILE).is_file()]
    return sorted(found, key=lambda p: (p / RUN_FILE).stat().st_mtime)
