"""`collapsewatch sync DIR`: upload runs kept on disk (offline mode, or a live run's spool that outlived its
server) to a server, in order, resuming where the last sync stopped. Idempotent: each run is created under
its client key, so a second sync finds it, and the ingest API stores a repeated record once.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from collapsewatch.spool import Spool, run_directories
from collapsewatch.transport import HttpTransport

log = logging.getLogger("collapsewatch")
DEFAULT_SERVER = "http://127.0.0.1:8000"


@dataclass
class Synced:
    directory: Path
    run_id: int | None
    url: str | None
    records: int  # records this sync sent (those a former sync delivered are not sent again)
    ended: bool  # the run's end was recorded (a killed process records none: the server marks it lost)
    error: str | None = None

    def line(self) -> str:
        if self.error:
            return f"{self.directory}: not synced: {self.error}"
        end = "" if self.ended else " (no end was recorded: the server marks the run lost after its heartbeat timeout)"
        return f"{self.directory}: run {self.run_id} at {self.url}, {self.records} records sent{end}"


def sync(path: Path | str, server: str | None = None, token: str | None = None, timeout: float = 60.0) -> list[Synced]:
    """Upload every run directory in `path` (or `path` itself) to `server` (default $COLLAPSEWATCH_SERVER, else
    http://127.0.0.1:8000); each gives up after `timeout` s without an answer."""
    server = (server or os.environ.get("COLLAPSEWATCH_SERVER") or DEFAULT_SERVER).rstrip("/")
    token = token if token is not None else os.environ.get("COLLAPSEWATCH_TOKEN")
    done = []
    for directory in run_directories(Path(path)):
        try:
            spool = Spool.open(directory)
        except ValueError as exc:
            done.append(Synced(directory, None, None, 0, False, str(exc)))
            continue
        done.append(_upload(spool, server, token, timeout))
    return done


def _upload(spool: Spool, server: str, token: str | None, timeout: float) -> Synced:
    records = spool.records()
    resume = spool.sent(server)
    sender = HttpTransport(
        server, spool.create, token=token, spool=spool, upload=records, resume=resume, give_up_after=timeout
    )
    sender.wait()
    sent = spool.sent(server)[1]
    count = max(0, sent - (resume[1] if resume[0] == sender.run_id else 0))
    ended = any(r.path == "finish" for r in records)
    return Synced(spool.directory, sender.run_id, sender.url, count, ended, sender.failure)
