"""collapsewatch for your own training loop: the same per-batch statistics and collapse detector as the
built-in trainer, streamed to the dashboard while you train.

    import collapsewatch as cw

    run = cw.init(name="resnet-soft", config={"lr": 3e-4, "temperature": 2.0}, steps_per_epoch=len(loader))
    for x, t in loader:
        logits = model(x)
        ...
        run.log_batch(logits, t, loss=loss)  # tensors stay on the device: no host sync
    run.finish()

It reuses `trainer/`'s statistics and detector; only `database_url` mode reaches into `app/`.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from collapsewatch.run import CollapseDetected, Run
from trainer.records import CollapseWarning

__all__ = ["CollapseDetected", "CollapseWarning", "Run", "init"]

DEFAULT_SERVER = "http://127.0.0.1:8000"


def init(
    name: str | None = None,
    config: Mapping[str, Any] | None = None,
    *,
    server: str | None = None,
    database_url: str | None = None,
    mode: str = "online",
    dir: str | os.PathLike[str] | None = None,
    spool: bool = True,
    num_classes: int | None = None,
    steps_per_epoch: int | None = None,
    stop_on: str | None = None,
    on_warning: Callable[[CollapseWarning], Any] | None = None,
    token: str | None = None,
    flush_batches: int = 1024,
    flush_seconds: float = 0.5,
    flush_timeout: float = 10.0,
    max_pending_batches: int = 100_000,
    heartbeat_seconds: float = 1.0,
) -> Run:
    """Start a run of your own loop on the server at `server` (default $COLLAPSEWATCH_SERVER, else
    http://127.0.0.1:8000; `token` defaults to $COLLAPSEWATCH_TOKEN), or straight into the database at
    `database_url`. Returns at once in server mode: the run is created in the background, and an
    unreachable server never blocks or breaks the loop: every record is also kept on disk under `dir`
    (default $COLLAPSEWATCH_SPOOL, else ~/.cache/collapsewatch/spool; `spool=False`: memory only) until the
    server has it, and what a dead server or a killed process left there `collapsewatch sync DIR` uploads.
    `mode="offline"` sends nothing: the run is written under `dir` (default $COLLAPSEWATCH_DIR, else
    ./collapsewatch) for `collapsewatch sync` to upload later.

    `config` is stored with the run; its keys that the built-in trainer knows (temperature,
    label_smoothing, deploy_temperature, max_grad_norm, lr, ...) also tell the detector how the loop
    trains. `steps_per_epoch` (len(loader)) sizes the detector's warm-up and persistence (default 100).
    `stop_on` ("warning" or "critical"): the next `log_batch` after such a warning raises
    `CollapseDetected`. `on_warning(warning)` is called, in the training thread, for every warning.
    Statistics are sent a chunk at a time: every `flush_batches` batches (at most 1,024) or
    `flush_seconds`; `finish` waits up to `flush_timeout` s for the rest to be sent.
    """
    if server is not None and database_url is not None:
        raise ValueError("pass either server= or database_url=, not both")
    if mode not in ("online", "offline"):
        raise ValueError(f'mode must be "online" or "offline", got {mode!r}')
    if mode == "offline" and (server is not None or database_url is not None):
        raise ValueError('mode="offline" sends nothing: pass no server= or database_url= (sync later)')
    if stop_on not in (None, "warning", "critical"):
        raise ValueError(f'stop_on must be None, "warning" or "critical", got {stop_on!r}')
    if not 1 <= flush_batches <= 1024:
        raise ValueError(f"flush_batches must be in [1, 1024] (one request of the ingest API), got {flush_batches}")
    config = dict(config or {})
    create = {
        "name": name,
        "config": config,
        "num_classes": num_classes,
        "steps_per_epoch": steps_per_epoch,
        "client": f"{socket.gethostname()}:{os.getpid()}",
    }
    transport: Any
    if database_url is not None:
        from collapsewatch.database import DatabaseTransport  # the only import of app/, and only in this mode

        transport = DatabaseTransport(database_url, create, heartbeat_seconds=heartbeat_seconds)
    else:
        from collapsewatch.transport import HttpTransport, Spooler, open_spool

        root = Path(dir) if dir is not None else None
        offline = mode == "offline"
        kept = open_spool(root, create, offline) if (spool or offline) else None
        if offline:
            transport = Spooler(kept, max_pending_batches=max_pending_batches)
        else:
            transport = HttpTransport(
                server or os.environ.get("COLLAPSEWATCH_SERVER") or DEFAULT_SERVER,
                kept.create if kept else create,
                token=token if token is not None else os.environ.get("COLLAPSEWATCH_TOKEN"),
                spool=kept,
                max_pending_batches=max_pending_batches,
                heartbeat_seconds=heartbeat_seconds,
            )
    return Run(
        name=name,
        config=config,
        transport=transport,
        steps_per_epoch=steps_per_epoch,
        stop_on=stop_on,
        on_warning=on_warning,
        flush_batches=flush_batches,
        flush_seconds=flush_seconds,
        flush_timeout=flush_timeout,
    )
