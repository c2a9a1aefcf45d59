"""Database tables (`Run`, `Sweep`, `StatChunk`, `StatBlock`, `EvalStat`, `RunWarning`, `Dataset`, `WorkerHost`) and
the API schemas.

Batch statistics are stored a chunk of consecutive batches per row (`StatChunk`), each statistic
as a packed array: one INSERT per chunk instead of one per batch, and a read of a few thousand
batches decodes a handful of blobs instead of building a Python object per value.
"""

from __future__ import annotations

import difflib
import math
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError, ValidatorFunctionWrapHandler, computed_field, field_validator, model_validator
from pydantic_core import PydanticCustomError
from sqlalchemy import JSON, BigInteger, Column, DateTime, Index, LargeBinary, Text, TypeDecorator
from sqlmodel import Field, SQLModel
from sqlmodel._compat import SQLModelConfig

from trainer import BATCH_COLUMNS

# StatBlock.nan_any keeps one bit per statistic
if len(BATCH_COLUMNS) > 63:
    raise RuntimeError(f"StatBlock.nan_any holds 63 columns; trainer.BATCH_COLUMNS has {len(BATCH_COLUMNS)}")

FINISHED_STATUSES = ("completed", "failed", "cancelled", "diverged")
MAX_DOCTOR_ATTEMPTS = 10
RUN_STATUSES = ("queued", "running", *FINISHED_STATUSES)
SEVERITY_RANK = {"info": 0, "warning": 1, "critical": 2}
SUMMARY_COLUMNS = ("entropy_mean", "onehot_frac", "hist_top_share", "loss", "target_entropy_mean")
# The largest id any table holds: ids are INTEGER primary keys, 32-bit on PostgreSQL (64-bit on SQLite),
# so an id parameter is bounded by the smaller and a larger one is refused before it reaches a query.
MAX_ID = 2**31 - 1
# Steps are BIGINT columns (StatChunk, StatBlock); a step parameter beyond them cannot match a row.
MAX_STEP = 2**63 - 1


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """Stored as naive UTC (SQLite has no time zones), always read back as an aware UTC datetime."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is not None and value.tzinfo is not None:
            value = value.astimezone(UTC).replace(tzinfo=None)
        return value

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        return None if value is None else value.replace(tzinfo=UTC)


# --- tables ---------------------------------------------------------------------------------------
class RunBase(SQLModel):
    name: str = Field(max_length=200)
    preset: str = "fixed"
    parent_id: int | None = Field(default=None, foreign_key="run.id", ondelete="SET NULL")
    dataset_id: int | None = Field(default=None, foreign_key="dataset.id", ondelete="SET NULL")


class Run(RunBase, table=True):
    """One training run: a queue entry, then its live state, then its result."""

    # ids are never reused after a delete: a late write of a deleted run must not land on a new one
    __table_args__ = {"sqlite_autoincrement": True}

    id: int | None = Field(default=None, primary_key=True)
    status: str = Field(default="queued", index=True)
    config: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    num_classes: int = 8
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    started_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    finished_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    heartbeat_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    worker: str | None = None
    # the fencing token of the worker's claim (app/worker/lease.py): +1 at every claim and whenever someone else
    # marks the run lost; a worker writes for the run only while the lease is still the epoch it claimed with
    lease: int = 0
    # logged by a user's own loop through the client library (collapsewatch/, POST /api/ingest/runs): created
    # running, never queued, so no worker claims it; its client heartbeats like a worker
    external: bool = False
    # an external run's key chosen by its client (ExternalRunCreate.client_key): one run per key
    client_key: str | None = Field(default=None, max_length=64, unique=True, index=True)
    cancel_requested: bool = False
    # doctor mode (app/worker/doctor.py): attempts allowed in the lineage, this run's attempt (1 = the first),
    # "watching" -> "stopping" (a warning fired: asked to stop) -> "done" with its outcome; NULL: not doctored
    doctor_max: int | None = None
    doctor_attempt: int | None = None
    doctor_state: str | None = Field(default=None, index=True)
    doctor_outcome: str | None = Field(default=None, sa_type=Text)
    # a sweep's trial (app/sweeps/): its sweep and Optuna trial number; NULL for a run of its own
    sweep_id: int | None = Field(default=None, foreign_key="sweep.id", ondelete="SET NULL", index=True)
    trial_number: int | None = None
    error: str | None = Field(default=None, sa_type=Text)
    # what the sink could not store after retrying (app/worker/sink.py), e.g. "50 batches (steps 400-449) ..."
    data_lost: str | None = Field(default=None, sa_type=Text)
    duration_s: float | None = None
    # kept up to date by the sink once per flushed chunk, so list views never touch StatChunk
    steps: int = 0
    last_step: int = -1
    latest: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON))
    warning_count: int = 0
    max_severity: str | None = None
    info: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON))  # RunInfo without the config
    # the user's labels (PATCH /api/runs/{id}); an upgraded database's older runs hold NULL tags: read as none
    tags: list[str] | None = Field(default_factory=list, sa_column=Column(JSON))
    notes: str = Field(default="", sa_type=Text)


class Sweep(SQLModel, table=True):
    """A search over config fields on Optuna (app/sweeps/): each trial is an ordinary queued `Run`."""

    __table_args__ = {"sqlite_autoincrement": True}

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(max_length=200)
    status: str = Field(default="queued", index=True)  # SWEEP_STATUSES (app/storage/sweep_models.py)
    preset: str = "fixed"
    config: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))  # base, effective
    search_space: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    sampler: str = "tpe"
    seed: int = 0
    n_trials: int
    parallelism: int
    objective: str = "val_kl"
    direction: str = "minimize"
    study_name: str = Field(default="", max_length=200)  # the Optuna study in Optuna's own tables
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    finished_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    best_run_id: int | None = None  # no foreign key (Run points here): a deleted run reads as no best
    error: str | None = Field(default=None, sa_type=Text)
    # every trial's end told to Optuna; the driver leaves a settled sweep alone
    settled: bool = False
    # the server driving it until `driver_until` (the database's clock): one driver per sweep at a time
    driver: str | None = None
    driver_until: datetime | None = Field(default=None, sa_type=UTCDateTime)


class StatChunk(SQLModel, table=True):
    """Consecutive recorded batches of one run (ascending steps, at most CHUNK_ROWS of them).

    `columns` names the statistics the chunk holds, comma-separated, in the order of `values`:
    float64 (len(columns), rows), row-major, so one statistic is one contiguous slice. NaN and
    infinities are stored as they are; a statistic missing from `columns` was not recorded. `steps`
    and `epochs` are int64 (rows,), `class_hist` float32 (rows, classes) shares.
    """

    run_id: int = Field(foreign_key="run.id", primary_key=True, ondelete="CASCADE")
    first_step: int = Field(primary_key=True, sa_type=BigInteger)
    last_step: int = Field(sa_type=BigInteger)
    rows: int
    columns: str = Field(sa_type=Text)
    steps: bytes = Field(sa_type=LargeBinary)
    epochs: bytes = Field(sa_type=LargeBinary)
    values: bytes = Field(sa_type=LargeBinary)
    class_hist: bytes = Field(sa_type=LargeBinary)


class StatBlock(SQLModel, table=True):
    """Min/max summary of 16, 256 or 4096 consecutive batches (level 0, 1, 2), written by the
    sink so that a chart of a million batches reads thousands of rows instead (see app/storage/rollups.py)."""

    run_id: int = Field(foreign_key="run.id", primary_key=True, ondelete="CASCADE")
    level: int = Field(primary_key=True)
    first_step: int = Field(primary_key=True, sa_type=BigInteger)
    last_step: int = Field(sa_type=BigInteger)
    first_epoch: int
    last_epoch: int
    rows: int
    nan_any: int = Field(sa_type=BigInteger)  # bit i: BATCH_COLUMNS[i] was NaN somewhere in the block
    stats: bytes = Field(sa_type=LargeBinary)  # float64 (4, K): min, max, step of min, step of max
    hist: bytes | None = Field(default=None, sa_type=LargeBinary)  # float64 (C,): sum of class shares


class EvalStat(SQLModel, table=True):
    """One validation pass; non-finite metrics are kept as the strings "NaN", "Infinity", "-Infinity"."""

    __table_args__ = {"sqlite_autoincrement": True}  # ids are cursors of the event stream

    id: int | None = Field(default=None, primary_key=True)
    run_id: int = Field(foreign_key="run.id", index=True, ondelete="CASCADE")
    step: int
    epoch: int
    metrics: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    pred_hist: list[float] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    target_hist: list[float] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    confusion: list[list[int]] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))


class RunWarning(SQLModel, table=True):
    """A collapse warning raised by the detector, with its evidence and advice."""

    __table_args__ = {"sqlite_autoincrement": True}  # ids are cursors of the event stream

    id: int | None = Field(default=None, primary_key=True)
    run_id: int = Field(foreign_key="run.id", index=True, ondelete="CASCADE")
    kind: str
    severity: str
    step: int
    message: str = Field(sa_type=Text)
    evidence: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    advice: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON))
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


class WorkerHost(SQLModel, table=True):
    """A process that runs workers (`collapsewatch serve` or `worker`, on any machine) as it last reported itself,
    every few seconds on the database's clock (app/worker/hosts.py): a host with no HTTP server is seen this way."""

    __table_args__ = (Index("ix_workerhost_host_pid", "host", "pid", unique=True),)

    id: int | None = Field(default=None, primary_key=True)
    host: str = Field(max_length=200)  # the machine's name (or the worker's --name)
    pid: int
    role: str = "worker"  # "serve" | "worker"
    workers_configured: int = 0
    workers_alive: int = 0
    restarts: int = 0
    last_exit: str | None = Field(default=None, sa_type=Text)
    started_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    updated_at: datetime | None = Field(default=None, sa_type=UTCDateTime, index=True)


class ScalarChunk(SQLModel, table=True):
    """Consecutive values of one scalar of the user's own (`log_batch(..., name=value)`) as float64 and int64
    bytes (NaN and infinities kept): a chunk a request, so a long run stays a few rows per name."""

    __table_args__ = (Index("ix_scalarchunk_run_name_step", "run_id", "name", "first_step", unique=True),)

    id: int | None = Field(default=None, primary_key=True)
    run_id: int = Field(foreign_key="run.id", index=True, ondelete="CASCADE")
    name: str = Field(max_length=64)
    first_step: int
    last_step: int
    steps: bytes = Field(sa_type=LargeBinary)
    values: bytes = Field(sa_type=LargeBinary)


class DatasetBase(SQLModel):
    name: str = Field(max_length=200)
    filename: str
    format: str
    rows: int
    n_features: int
    num_classes: int
    target_kind: str
    label_column: str | None = None
    # these are None on a dataset uploaded by a version that did not keep them
    sha256: str | None = Field(default=None, max_length=64)  # hex digest of the uploaded bytes
    target_entropy: float | None = None  # mean over rows of each soft target's entropy, nats (at most ln C)


class Dataset(DatasetBase, table=True):
    """An uploaded table, validated on upload and stored under a generated name in data_dir."""

    __table_args__ = {"sqlite_autoincrement": True}  # an id is never reused

    id: int | None = Field(default=None, primary_key=True)
    path: str
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    feature_columns: list[str] | None = Field(default=None, sa_column=Column(JSON))
    target_columns: list[str] | None = Field(default=None, sa_column=Column(JSON))
    class_names: list[str] | None = Field(default=None, sa_column=Column(JSON))
    class_shares: list[float] | None = Field(default=None, sa_column=Column(JSON))  # mean target of each class


# --- API schemas (a table class is never a response model) ------------------------------------------
class RequestBody(SQLModel):
    """A request body that refuses unknown keys: a typo such as `confg` would otherwise be dropped and
    the request would silently do the default. The 422 names the key and the closest known one."""

    model_config = SQLModelConfig(extra="forbid")

    @model_validator(mode="wrap")
    @classmethod
    def _name_unknown_keys(cls, data: Any, handler: ValidatorFunctionWrapHandler) -> Any:
        try:
            return handler(data)
        except ValidationError as exc:
            # the same errors, with pydantic's bare "Extra inputs are not permitted" reworded
            items = [_suggest_known_key(cls, e) if e["type"] == "extra_forbidden" else e for e in exc.errors()]
            line_errors = [
                {k: e[k] for k in ("type", "ctx") if k in e}
                | {"loc": sendable(e["loc"]), "input": sendable(e["input"])}
                for e in items
            ]
            raise ValidationError.from_exception_data(exc.title, line_errors) from None


def sendable(value: Any) -> Any:
    """`value` as the 422 can echo it: a lone surrogate (JSON allows "\\ud800", UTF-8 has no form for it)
    would make the answer itself fail to encode, so it is echoed escaped; so is a NaN or an infinity
    (json.loads reads the tokens NaN and Infinity; an answer cannot hold them) as "NaN", "Infinity", "-Infinity"."""
    if isinstance(value, str):
        return value.encode("utf-8", "backslashreplace").decode("utf-8")
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, dict):
        return {sendable(k): sendable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(sendable(v) for v in value)
    return value


def _suggest_known_key(model: type[SQLModel], error: Any) -> dict[str, Any]:
    key, known = str(error["loc"][-1]), list(model.model_fields)
    close = difflib.get_close_matches(key, known, n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    message = f"unknown field {key!r}: {hint}known fields: {', '.join(known)}"
    return {**error, "type": PydanticCustomError("extra_forbidden", message)}


class RunCreate(RequestBody):
    """A run to queue: a preset plus overrides (nested "data" allowed), optionally on an uploaded dataset."""

    name: str | None = Field(default=None, max_length=200)
    preset: str = "fixed"
    config: dict[str, Any] = Field(default_factory=dict)
    dataset_id: int | None = Field(default=None, ge=1, le=MAX_ID)
    parent_id: int | None = Field(default=None, ge=1, le=MAX_ID)
    doctor: bool = Field(
        default=False,
        description="when a warning fires, stop the run, apply its advice and queue the child; again until a "
        "run finishes healthy, the advice runs out or doctor_max_attempts runs were made",
    )
    doctor_max_attempts: int = Field(default=4, ge=1, le=MAX_DOCTOR_ATTEMPTS)


class ApplyAdvice(RequestBody):
    warning_id: int = Field(ge=1, le=MAX_ID)


MAX_TAGS, MAX_TAG_LENGTH, MAX_NOTES_LENGTH = 20, 40, 5000
_TAG_PUNCTUATION = "-_.:/+=@#"


class RunUpdate(RequestBody):
    """A run's labels to change; a field left out (or null) stays as it is. Tags are deduplicated in order."""

    name: str | None = Field(default=None, min_length=1, max_length=200)
    tags: list[str] | None = Field(default=None, max_length=MAX_TAGS)
    notes: str | None = Field(default=None, max_length=MAX_NOTES_LENGTH)

    @field_validator("name")
    @classmethod
    def _name_not_blank(cls, name: str | None) -> str | None:
        if name is not None and not name.strip():
            raise ValueError("a run's name must not be blank")
        return None if name is None else name.strip()

    @field_validator("tags")
    @classmethod
    def _tags_are_words(cls, tags: list[str] | None) -> list[str] | None:
        if tags is None:
            return None
        for tag in tags:
            if not 1 <= len(tag) <= MAX_TAG_LENGTH or not all(c.isalnum() or c in _TAG_PUNCTUATION for c in tag):
                raise ValueError(
                    f"a tag is 1 to {MAX_TAG_LENGTH} letters, digits or {' '.join(_TAG_PUNCTUATION)}, got {tag!r}"
                )
        return list(dict.fromkeys(tags))


class ErrorPublic(SQLModel):
    """The body of every error answer but a 422: one sentence that says what to do."""

    detail: str


class EvalSummary(SQLModel):
    step: int
    epoch: int
    metrics: dict[str, float | None]  # non-finite values are null here and named in `nonfinite`
    nonfinite: dict[str, str] = Field(default_factory=dict)


class EvalPublic(EvalSummary):
    pred_hist: list[float]
    target_hist: list[float]
    confusion: list[list[int]]


class RunSummary(RunBase):
    id: int
    status: str
    external: bool = False  # streamed by a user's own loop (the client library), not trained by a worker
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    steps: int
    warning_count: int
    max_severity: str | None
    latest: dict[str, float | None]  # SUMMARY_COLUMNS of the last recorded batch
    tags: list[str] = Field(default_factory=list)
    notes: str = ""
    duration_s: float | None = None  # so far, while it runs
    final_eval: EvalSummary | None = None  # the last evaluation's metrics (no histograms)


class RunPublic(RunSummary):
    config: dict[str, Any]  # the effective config, exactly as it trains
    error: str | None
    data_lost: str | None = None  # records the database never took, after retries: shown on the run page
    worker: str | None
    heartbeat_at: datetime | None
    cancel_requested: bool
    doctor_max: int | None = None  # doctor mode: attempts allowed in this run's lineage; null when off
    doctor_attempt: int | None = None
    doctor_state: str | None = None
    doctor_outcome: str | None = None  # what the doctor did after this run: "queued #12 ...", "healthy", ...
    duration_s: float | None
    num_classes: int
    last_step: int
    columns: list[str]
    final_eval: EvalPublic | None = None
    info: dict[str, Any] | None  # device, class weights used, parameter count, steps per epoch, data profile


class RunsPage(SQLModel):
    items: list[RunSummary]
    total: int


class StatsPublic(SQLModel):
    run_id: int
    status: str
    columns: dict[str, list[float | None]]
    steps: list[int]
    epochs: list[int]
    # per point, predicted-class shares: of that batch, or, downsampled, the mean over its bucket
    # (null where a bucket's blocks were written by a version that did not keep them)
    class_hist: list[list[float | None]]
    last_step: int  # the last step the database holds for the run (-1: none yet)
    downsampled: bool
    bucket_size: int  # steps per bucket (1 when not downsampled)
    # JSON has no NaN: such values are null in `columns` and listed here as [index, "NaN"|"Infinity"|"-Infinity"]
    nonfinite: dict[str, list[tuple[int, str]]] = Field(default_factory=dict)


class AdvicePublic(SQLModel):
    message: str
    overrides: dict[str, Any]


class WarningPublic(SQLModel):
    id: int
    run_id: int
    kind: str
    severity: str
    step: int
    message: str
    evidence: dict[str, Any]  # numbers; non-finite ones as "NaN" / "Infinity" / "-Infinity"
    advice: AdvicePublic | None
    created_at: datetime


class DatasetPreview(DatasetBase):
    """How an upload is read: which columns became features and which targets, and the targets' spread."""

    feature_columns: list[str] | None = None
    target_columns: list[str] | None = None  # the label column, the probability columns, or NPZ's "y" / "p"
    class_names: list[str] | None = None
    class_shares: list[float] | None = None

    @computed_field  # type: ignore[prop-decorator]
    @property
    def max_target_entropy(self) -> float:
        """ln C, the entropy of a uniform target: the most `target_entropy` can be."""
        return math.log(self.num_classes) if self.num_classes > 0 else 0.0


class DatasetPublic(DatasetPreview):
    id: int
    created_at: datetime


class PresetPublic(SQLModel):
    name: str
    description: str
    config: dict[str, Any]


class StatusEvent(SQLModel):
    status: str
    steps: int
    error: str | None


class WorkerHostPublic(SQLModel):
    """A process running workers, as /api/health lists it: `stale` once it has not reported for the stale limit."""

    host: str
    pid: int
    role: str
    workers_configured: int
    workers_alive: int
    restarts: int
    last_exit: str | None
    started_at: datetime | None
    updated_at: datetime | None
    seconds_since_report: float  # on the database's clock
    stale: bool


class HealthPublic(SQLModel):
    status: str  # "ok"; "degraded" while this server's own pool has fewer workers alive than configured
    cluster: str = "ok"  # the same over every host that reports (this server's pool included)
    database: str
    workers_configured: int  # worker processes this server runs (0: none here; workers may run elsewhere)
    workers_alive: int
    worker_restarts: int  # dead worker processes this server replaced since it started
    last_worker_exit: str | None  # the latest death: "collapsewatch-worker-0 (pid 4242) died with exit code -9 ..."
    busy_workers: int  # workers anywhere on this database training a run whose heartbeat is recent
    # every process running workers on this database (this server's own pool too) seen in the last hour;
    # on a server with a token, listed only to requests that carry it
    hosts: list[WorkerHostPublic] = Field(default_factory=list)
