"""The ingest API's schemas: what a user's own loop (the client library, `collapsewatch`) sends and gets back.

Statistics travel columnar and compact, one chunk of up to CHUNK_ROWS batches per request. JSON has no NaN:
non-finite numbers are the strings "NaN", "Infinity" and "-Infinity", as everywhere in this API.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import Strict, StringConstraints
from sqlmodel import Field, SQLModel

from app.storage.chunks import CHUNK_ROWS
from app.storage.models import MAX_STEP, RequestBody

# a number, or a non-finite one by name; strict: "1.5" or true is no number
Number = Annotated[float, Strict()] | Literal["NaN", "Infinity", "-Infinity"]
Share = Annotated[float, Strict(), Field(ge=0.0, le=1.0)]
Step = Annotated[int, Strict(), Field(ge=0, le=MAX_STEP)]
Epoch = Annotated[int, Strict(), Field(ge=0, le=2**31 - 1)]
# SQLModel's Field(regex=...) checks nothing under pydantic 2: patterns go in the type
Kind = Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=r"^[a-z][a-z0-9_]*$")]
ClientKey = Annotated[str, StringConstraints(min_length=8, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")]
MAX_CONFIG_BYTES = 65_536  # a user's config is stored as given: bounded, as its JSON


class ExternalRunCreate(RequestBody):
    """A run that a user's own loop streams. It starts `running`, is never queued (no worker claims it) and
    is marked lost like a worker's run when its client stops heartbeating."""

    name: str | None = Field(default=None, max_length=200)
    config: dict[str, Any] = Field(default_factory=dict, description="the user's config, stored as given")
    num_classes: int | None = Field(default=None, ge=2, le=1000, description="null: set by the first chunk")
    steps_per_epoch: int | None = Field(default=None, ge=1, le=2**31 - 1)
    client: str | None = Field(
        default=None,
        max_length=120,
        description='"<host>:<pid>" of the logging process; its worker is shown as "external:<client>"',
    )
    client_key: ClientKey | None = Field(
        default=None,
        description="the client's own name for the run: a create repeated with the same key answers 200 with "
        "the run it created before (how `collapsewatch sync` resumes an upload without storing it twice)",
    )
    started_at: datetime | None = Field(
        default=None, description="when the loop started (an offline run synced later); default: now"
    )


# base64 of CHUNK_ROWS float64 values per column of every statistic, and of CHUNK_ROWS x 1,000 class shares
_PACKED_VALUES_CHARS = 4 * (CHUNK_ROWS * 64 * 8 // 3 + 1)
_PACKED_HIST_CHARS = 4 * (CHUNK_ROWS * 1000 * 8 // 3 + 1)


class PackedStats(RequestBody):
    """A chunk's numbers as little-endian float64 arrays in base64: what the client library sends (the same
    numbers as `values` and `class_hist`, NaN and infinities as they are, at a tenth of the encoding cost)."""

    columns: list[Annotated[str, StringConstraints(max_length=64)]] = Field(
        min_length=1, max_length=64, description="the statistic columns, in the order of `values`"
    )
    values: str = Field(
        max_length=_PACKED_VALUES_CHARS, description="base64 of float64 LE (len(columns), len(steps)), row-major"
    )
    class_hist: str = Field(
        max_length=_PACKED_HIST_CHARS, description="base64 of float64 LE (len(steps), classes): shares in [0, 1]"
    )


class ChunkIn(RequestBody):
    """Consecutive batches, columnar: `values` maps some of the run's statistic columns (GET /api/runs/{id}
    lists them in `columns`) to one number per step, a column left out was not recorded, and `class_hist`
    holds each step's class shares; or `packed` holds the same as base64 arrays."""

    steps: list[Step] = Field(min_length=1, max_length=CHUNK_ROWS, description="strictly increasing")
    epochs: list[Epoch] = Field(max_length=CHUNK_ROWS, description="one per step")
    values: dict[str, list[Number]] | None = Field(default=None, description="column -> one number per step")
    class_hist: list[list[Share]] | None = Field(
        default=None,
        max_length=CHUNK_ROWS,
        description="per step, the share of each class among the batch's predictions",
    )
    packed: PackedStats | None = Field(default=None, description="instead of `values` and `class_hist`")


ScalarName = Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=r"^[A-Za-z_][A-Za-z0-9_.]*$")]
MAX_SCALAR_NAMES = 32  # collapsewatch.scalars.MAX_SCALARS


class ScalarSeriesIn(RequestBody):
    steps: list[Step] = Field(min_length=1, max_length=CHUNK_ROWS, description="strictly increasing")
    values: list[Number] = Field(max_length=CHUNK_ROWS, description="one per step")


class ScalarsIn(RequestBody):
    """Scalars of the user's own (`log_batch(..., name=value)`): per name, steps after the ones stored for
    it and a value each. A repeat of stored values stores nothing; any other overlap is a 409."""

    series: dict[ScalarName, ScalarSeriesIn] = Field(min_length=1, max_length=MAX_SCALAR_NAMES)


class ChunkAck(SQLModel):
    run_id: int
    stored: int  # batches this request stored: 0 for an exact repeat of stored ones
    steps: int  # batches the run holds
    last_step: int


class EvalIn(RequestBody):
    """One validation pass, as `trainer.evaluation.evaluate_predictions` makes it."""

    step: Step
    epoch: Epoch = 0
    metrics: dict[str, Number] = Field(description="EVAL_METRICS names (objective at least) -> value")
    pred_hist: list[Share] = Field(max_length=1000)
    target_hist: list[Share] = Field(max_length=1000)
    confusion: list[list[Annotated[int, Strict(), Field(ge=0, le=2**53)]]] = Field(max_length=1000)


class StoredPublic(SQLModel):
    stored: bool  # False: the same record was already stored, nothing was stored again


class AdviceIn(RequestBody):
    message: str = Field(max_length=2000)
    overrides: dict[str, Any] = Field(default_factory=dict)


class WarningIn(RequestBody):
    """A warning the client's detector raised (trainer.detector.CollapseDetector, run client side)."""

    kind: Kind
    severity: Literal["info", "warning", "critical"]
    step: Step
    message: str = Field(max_length=2000)
    evidence: dict[str, Number] = Field(default_factory=dict)
    advice: AdviceIn | None = None


class RunFinish(RequestBody):
    status: Literal["completed", "failed", "cancelled", "diverged"] = "completed"
    error: str | None = Field(default=None, max_length=10_000)
    data_lost: str | None = Field(
        default=None, max_length=2000, description="what the client could not send (dropped batches)"
    )
    duration_s: float | None = Field(default=None, ge=0, le=10**9)


class HeartbeatPublic(SQLModel):
    status: str
    cancel_requested: bool  # a user asked to cancel the run from the dashboard
    steps: int
    last_step: int
