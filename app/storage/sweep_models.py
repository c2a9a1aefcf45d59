"""Sweep API schemas: `SweepCreate` (a request), `SweepSummary` / `SweepPublic` and `TrialPublic` (answers)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import StringConstraints
from sqlmodel import Field, SQLModel

from app.storage.models import RequestBody

SWEEP_STATUSES = ("queued", "running", "completed", "cancelled", "failed")
MAX_SWEEP_TRIALS, MAX_PARALLELISM, DEFAULT_TRIALS = 500, 64, 20
Objective = Literal["val_kl", "accuracy", "ece"]
# the evaluation metric each objective reads (trainer.records.EVAL_METRICS) and which way is better
OBJECTIVES: dict[str, tuple[str, str]] = {
    "val_kl": ("kl", "minimize"),
    "accuracy": ("accuracy", "maximize"),
    "ece": ("ece", "minimize"),
}
PresetName = Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=r"^[a-z0-9][a-z0-9-]*$")]


class SweepCreate(RequestBody):
    """A search: a preset plus overrides as the base config, the fields to turn, how and how long."""

    name: str | None = Field(default=None, max_length=200)
    preset: PresetName = "fixed"
    config: dict[str, Any] = Field(default_factory=dict, description="overrides of the preset, as for a run")
    search_space: dict[str, dict[str, Any]] = Field(
        description='per config field: {"low": a, "high": b, "log"?: true, "step"?: s} or {"choices": [...]}; '
        'data fields as "data.imbalance"'
    )
    sampler: Literal["grid", "random", "tpe"] = "tpe"
    n_trials: int | None = Field(
        default=None, ge=1, le=MAX_SWEEP_TRIALS, description=f"default: the grid's size, else {DEFAULT_TRIALS}"
    )
    parallelism: int = Field(default=2, ge=1, le=MAX_PARALLELISM, description="trials queued or running at once")
    objective: Objective = Field(default="val_kl", description="of the final evaluation: val_kl and ece minimized")
    seed: int = Field(default=0, ge=0, le=2**31 - 1, description="the sampler's")


class TrialPublic(SQLModel):
    number: int  # Optuna's trial number, from 0
    run_id: int
    name: str
    status: str  # the run's, or "pruned" for a run the pruner stopped
    params: dict[str, Any]  # the searched fields' values ("data.imbalance": 2.0)
    objective: float | None  # of the run's last evaluation; null before one, or when not finite
    warning_count: int
    max_severity: str | None
    collapsed: bool  # a warning or critical collapse warning: this trial never wins
    pruned_reason: str | None
    error: str | None
    steps: int
    duration_s: float | None


class SweepSummary(SQLModel):
    id: int
    name: str
    status: str
    preset: str
    sampler: str
    objective: Objective
    direction: str  # "minimize" | "maximize"
    n_trials: int
    parallelism: int
    study_name: str  # the Optuna study (optuna.load_study(study_name=..., storage=...))
    created_at: datetime
    finished_at: datetime | None
    error: str | None
    trials_started: int
    trials_finished: int
    best_run_id: int | None
    best_objective: float | None


class SweepPublic(SweepSummary):
    config: dict[str, Any]  # the base effective config
    search_space: dict[str, dict[str, Any]]
    seed: int
    trials: list[TrialPublic]
    best_trial: TrialPublic | None  # the best objective among finished trials without a collapse warning
