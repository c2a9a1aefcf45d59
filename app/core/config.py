"""One `Settings` object, read from `COLLAPSEWATCH_*` environment variables (pydantic-settings)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Where the database and uploads live, where to listen, and how workers keep in touch."""

    model_config = SettingsConfigDict(env_prefix="COLLAPSEWATCH_", extra="ignore")

    database_url: str = "sqlite:///./collapsewatch.db"
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    workers: int = Field(default=2, ge=0, le=256)
    data_dir: Path = Path("./data")
    heartbeat_seconds: float = Field(default=1.0, gt=0)
    # a running run whose worker has been silent this long is marked failed (see app/worker/claim.py)
    stale_after_seconds: float = Field(default=15.0, gt=0)
    # how often the web server itself looks for such runs
    reap_interval_seconds: float = Field(default=5.0, gt=0)
    doctor_interval_seconds: float = Field(default=1.0, gt=0)  # doctor mode: how often warned runs are treated
    # niceness of the worker processes that `serve` starts: training takes whatever CPU the web app
    # leaves, instead of making pages and streams wait for a time slice behind it (0: same priority)
    worker_nice: int = Field(default=10, ge=0, le=19)
    # needed by any bind beyond loopback: API requests send `Authorization: Bearer <token>`, pages log in
    token: str | None = Field(default=None, min_length=16)
    # Host header names this server answers to besides the loopback ones ("*": any); see app/security.py
    trusted_hosts: list[str] = Field(default_factory=list)
    # budgets (app/budgets.py): a run estimated above them is refused with the estimate; an upload
    # over the byte cap is cut off, and a table whose headers say it holds more than a run could load
    max_run_memory_mb: int = Field(default=4096, ge=64)
    max_run_hours: float = Field(default=24.0, gt=0)
    max_upload_mb: int = Field(default=256, ge=1)
    # each worker process that trains is capped at its baseline (interpreter and torch) plus this much
    # private memory (trainer/memory_limit.py): a run whose estimate was wrong fails with that reason
    # instead of taking the machine down. None: twice max_run_memory_mb; 0: no limit
    worker_memory_mb: int | None = Field(default=None, ge=0)

    @property
    def worker_memory_limit_mb(self) -> int:
        return 2 * self.max_run_memory_mb if self.worker_memory_mb is None else self.worker_memory_mb


class UnsafeBind(ValueError):
    """A bind beyond loopback without a token: anyone who reaches the port could run and delete runs."""


def check_bind(settings: Settings) -> None:
    from app.security import is_loopback

    if not is_loopback(settings.host) and not settings.token:
        raise UnsafeBind(
            f"refusing to listen on {settings.host} without a token: anyone who reaches the port could create, "
            "cancel and delete runs. Set COLLAPSEWATCH_TOKEN (16 characters or more) or pass --token, "
            "or listen on 127.0.0.1"
        )
