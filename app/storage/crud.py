"""Keyword-only functions over runs, statistics, warnings, presets and datasets (API and pages share them).

They raise `app.errors.NotFound` (404) and `app.errors.InputError` (422); never an HTTP exception.
"""

from __future__ import annotations

import shutil
import unicodedata
import uuid
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

from sqlalchemy import delete, update
from sqlmodel import Session, SQLModel, col, select

from app.budgets import Limits, check_run, check_table_size, copy_capped, describe_table, summarise_table
from app.errors import InputError, NotFound, config_error_items, table_error_items
from app.storage.listing import elapsed, list_runs, run_summary
from app.storage.models import (
    MAX_ID,
    Dataset,
    DatasetPreview,
    EvalPublic,
    EvalStat,
    PresetPublic,
    Run,
    RunCreate,
    RunPublic,
    RunUpdate,
    RunWarning,
    ScalarChunk,
    StatBlock,
    StatChunk,
    WarningPublic,
    utcnow,
)
from app.storage.reads import get_stats
from app.storage.values import finite_or_none, split_nonfinite
from trainer import (
    BATCH_COLUMNS,
    PRESET_DESCRIPTIONS,
    ConfigError,
    TableError,
    TrainConfig,
    from_dict,
    preset,
    preset_names,
)
from trainer.config import device_problem

__all__ = [
    "apply_advice",
    "cancel_run",
    "create_dataset",
    "create_run",
    "delete_run",
    "get_dataset",
    "get_run",
    "get_stats",
    "list_datasets",
    "list_evals",
    "list_presets",
    "list_runs",
    "list_warnings",
    "preview_dataset",
    "run_public",
    "run_summary",
    "update_run",
]
TABLE_SUFFIXES = (".csv", ".tsv", ".txt", ".parquet", ".pq", ".npz")
# never part of a name: a control character (PostgreSQL refuses NUL in text) or a lone surrogate (it
# has no UTF-8 form, so neither database, nor the JSON of an answer, can hold it)
_REFUSED_CHARACTERS = {"Cc": "control character", "Cs": "lone surrogate"}
_Row = TypeVar("_Row", bound=SQLModel)
_LINE_BREAKS = str.maketrans("\t\n\r", "   ")


def _by_id(session: Session, model: type[_Row], id_: int) -> _Row | None:
    """The row with this id; None, without a query, for an id no table can hold (PostgreSQL's INTEGER
    keys end at 2**31 - 1, and SQLite overflows past 2**63 - 1): callers reached by ids parsed from
    form fields and URLs get the same "not found" as for any other missing id."""
    return session.get(model, id_) if 1 <= id_ <= MAX_ID else None


def _refuse_control_characters(loc: list[str | int], text: str | None, subject: str) -> None:
    for position, char in enumerate(text or ""):
        kind = _REFUSED_CHARACTERS.get(unicodedata.category(char))
        if kind is not None:
            message = f"{subject} must not contain a {kind}: U+{ord(char):04X} at position {position}"
            raise InputError.at(loc, message, "value_error.text")


# --- runs -------------------------------------------------------------------------------------------
def create_run(*, session: Session, run_in: RunCreate, limits: Limits | None = None) -> Run:
    """Validate the preset plus overrides (and the dataset, parent, and the server's budgets) and queue
    the run; nothing is stored when anything is invalid."""
    config = dict(run_in.config)
    preset_name = config.pop("preset", run_in.preset)  # a config file may name its preset
    if not isinstance(preset_name, str):  # from_dict would take it for a config to start from
        raise InputError.at(
            ["body", "config", "preset"],
            f"must be a preset name ({', '.join(preset_names())}), got {type(preset_name).__name__} {preset_name!r}",
        )
    _refuse_control_characters(["body", "name"], run_in.name, "a run's name")
    if run_in.parent_id is not None and _by_id(session, Run, run_in.parent_id) is None:
        raise InputError.at(["body", "parent_id"], f"Run {run_in.parent_id} not found")
    _refuse_file_references(config, run_in.dataset_id)
    dataset = None
    if run_in.dataset_id is not None:
        dataset = _by_id(session, Dataset, run_in.dataset_id)
        if dataset is None:
            raise InputError.at(["body", "dataset_id"], f"Dataset {run_in.dataset_id} not found")
        data = config.get("data", {})
        if isinstance(data, dict):  # anything else is reported by from_dict below
            config["data"] = {**data, **dataset_data(dataset)}
    shape = (dataset.rows, dataset.n_features) if dataset is not None else (None, None)
    cfg = trainable_config(config, preset_name, limits, shape)
    run = Run(
        name=run_in.name or "",
        preset=str(preset_name),
        config=cfg.to_dict(),
        num_classes=cfg.num_classes,
        dataset_id=run_in.dataset_id,
        parent_id=run_in.parent_id,
    )
    if run_in.doctor:
        run.doctor_max, run.doctor_attempt, run.doctor_state = run_in.doctor_max_attempts, 1, "watching"
    return _queue(session, run, default_name=f"{preset_name} #{{id}}")


def trainable_config(
    config: dict[str, Any], preset_name: str, limits: Limits | None, shape: tuple[int | None, int | None] = (None, None)
) -> TrainConfig:
    """The effective config of preset plus overrides, trainable on this server: a 422 naming the field for a
    bad value, a device this machine lacks, or a run over the server's budgets (`shape`: a table's rows
    and features)."""
    try:
        cfg = from_dict(config, base=preset_name)
    except ConfigError as exc:
        raise InputError(config_error_items(exc)) from exc
    # checked here, where a run is submitted, not in from_dict: a config stays valid on any machine,
    # but this server's workers train it on this machine's devices
    problem = device_problem(cfg.device)
    if problem is not None:
        raise InputError.at(["body", "config", "device"], problem, "value_error.config")
    if limits is not None:
        check_run(cfg, limits, *shape)
    return cfg


def _refuse_file_references(config: dict[str, Any], dataset_id: int | None) -> None:
    """A config from the API or the form never names a file: a table is a stored dataset, chosen by
    `dataset_id` and resolved inside the data directory (a path would let anyone read any file the
    server can, echoed back in the run's error)."""
    data = config.get("data")
    if not isinstance(data, dict):
        return  # from_dict reports a `data` that is not a table of fields
    if "path" in data:
        raise InputError.at(
            ["body", "config", "data", "path"],
            "a run config never names a file: upload the table (POST /api/datasets, or the form's upload) "
            "and pass its dataset_id",
        )
    if data.get("kind") == "table" and dataset_id is None:
        raise InputError.at(
            ["body", "dataset_id"], 'data.kind "table" trains on an uploaded dataset: pass its dataset_id'
        )


def dataset_data(dataset: Dataset) -> dict[str, Any]:
    """The `data` config that trains on an uploaded dataset."""
    return {
        "kind": "table",
        "path": dataset.path,
        "label_column": dataset.label_column,
        "num_classes": dataset.num_classes,
    }


def _queue(session: Session, run: Run, default_name: str) -> Run:
    session.add(run)
    session.flush()
    if not run.name:
        run.name = default_name.format(id=run.id)
    session.commit()
    session.refresh(run)
    return run


def get_run(*, session: Session, run_id: int) -> Run:
    run = _by_id(session, Run, run_id)
    if run is None:
        raise NotFound(f"Run {run_id} not found")
    return run


def run_public(*, session: Session, run: Run) -> RunPublic:
    last_eval = session.exec(
        select(EvalStat).where(EvalStat.run_id == run.id).order_by(col(EvalStat.step).desc(), col(EvalStat.id).desc())
    ).first()
    latest = run.latest or {}
    return RunPublic.model_validate(
        run,
        update={
            "latest": {k: latest.get(k) for k in BATCH_COLUMNS},
            "columns": list(BATCH_COLUMNS),
            "final_eval": eval_public(last_eval) if last_eval else None,
            "duration_s": run.duration_s if run.duration_s is not None else elapsed(run),
            "tags": run.tags or [],
        },
    )


def update_run(*, session: Session, run_id: int, changes: RunUpdate) -> Run:
    """Rename a run or set its tags or notes (what `changes` names); its training is left alone."""
    run = get_run(session=session, run_id=run_id)
    _refuse_control_characters(["body", "name"], changes.name, "a run's name")
    # notes are free text over lines: tabs and line breaks are kept, other control characters refused
    _refuse_control_characters(["body", "notes"], (changes.notes or "").translate(_LINE_BREAKS), "notes")
    values = {k: v for k, v in changes.model_dump(exclude_unset=True).items() if v is not None}
    if values:
        session.exec(update(Run).where(col(Run.id) == run_id).values(**values))
        session.commit()
        session.refresh(run)
    return run


def cancel_run(*, session: Session, run_id: int) -> Run:
    """A queued run is cancelled at once; a running one is asked to stop (its worker does within ~1 s)."""
    run = get_run(session=session, run_id=run_id)
    # conditional updates: a worker may claim the run between our read and our write
    queued = session.exec(
        update(Run)
        .where(col(Run.id) == run_id, col(Run.status) == "queued")
        .values(status="cancelled", finished_at=utcnow(), cancel_requested=True)
    )
    if not queued.rowcount:
        session.exec(
            update(Run).where(col(Run.id) == run_id, col(Run.status) == "running").values(cancel_requested=True)
        )
    session.commit()
    session.refresh(run)
    return run


def delete_run(*, session: Session, run_id: int) -> None:
    """Delete a run with its statistics, evaluations and warnings; a running run is cancelled first."""
    run = get_run(session=session, run_id=run_id)
    if run.status == "running":
        cancel_run(session=session, run_id=run_id)
    for table in (StatChunk, StatBlock, EvalStat, RunWarning, ScalarChunk):
        session.exec(delete(table).where(table.run_id == run_id))
    session.exec(update(Run).where(col(Run.parent_id) == run_id).values(parent_id=None))
    session.exec(delete(Run).where(col(Run.id) == run_id))
    session.commit()


def child_config(parent_config: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any] | None:
    """The effective config a run made from this advice has (None when the advice no longer applies)."""
    try:
        return from_dict(overrides, base=from_dict(parent_config)).to_dict()
    except ConfigError:
        return None


def applied_child(session: Session, parent: Run | RunPublic, overrides: dict[str, Any]) -> int | None:
    """The oldest child of `parent` whose effective config is the one this advice makes."""
    wanted = child_config(parent.config, overrides)
    if wanted is None:
        return None
    for child_id, config in session.execute(
        select(Run.id, Run.config).where(Run.parent_id == parent.id).order_by(Run.id)
    ).all():
        if config == wanted:
            return int(child_id)
    return None


def apply_advice(*, session: Session, run_id: int, warning_id: int) -> tuple[Run, bool]:
    """Queue a child run: the parent's effective config plus the warning's advice overrides. Advice that
    already made a child (from this warning or another with the same changes) returns that child and
    False instead of queueing the same run twice."""
    parent = get_run(session=session, run_id=run_id)
    warning = _by_id(session, RunWarning, warning_id)
    if warning is None or warning.run_id != run_id:
        raise NotFound(f"Warning {warning_id} not found")
    if not warning.advice or not warning.advice.get("overrides"):
        raise InputError.at(["body", "warning_id"], f"Warning {warning_id} has no advice to apply")
    overrides: dict[str, Any] = warning.advice["overrides"]
    existing = applied_child(session, parent, overrides)
    if existing is not None:
        return get_run(session=session, run_id=existing), False
    try:
        child = advice_child(parent, overrides)
    except ConfigError as exc:
        raise InputError.at(["body", "warning_id"], f"the advice of warning {warning_id} is invalid: {exc}") from exc
    return _queue(session, child, default_name=""), True


def advice_child(parent: Run, overrides: dict[str, Any]) -> Run:
    """The run (not yet stored) that tries `overrides` on `parent`'s effective config; raises ConfigError."""
    cfg = from_dict(overrides, base=from_dict(parent.config))
    change = ", ".join(f"{k}={v}" for k, v in overrides.items())
    return Run(
        name=f"{parent.name} + {change}"[:200],
        preset=parent.preset,
        config=cfg.to_dict(),
        num_classes=cfg.num_classes,
        dataset_id=parent.dataset_id,
        parent_id=parent.id,
    )


# --- evaluations and warnings --------------------------------------------------------------------------
def eval_public(row: EvalStat) -> EvalPublic:
    metrics, nonfinite = split_nonfinite(row.metrics)
    return EvalPublic(
        step=row.step,
        epoch=row.epoch,
        metrics=metrics,
        nonfinite=nonfinite,
        pred_hist=[finite_or_none(v) or 0.0 for v in row.pred_hist],
        target_hist=[finite_or_none(v) or 0.0 for v in row.target_hist],
        confusion=row.confusion,
    )


def list_evals(*, session: Session, run_id: int, after_id: int = 0) -> list[tuple[int, EvalPublic]]:
    """(id, evaluation) pairs in the order they were recorded; `after_id` gives only newer ones."""
    rows = session.exec(
        select(EvalStat).where(EvalStat.run_id == run_id, col(EvalStat.id) > after_id).order_by(col(EvalStat.id))
    ).all()
    return [(row.id or 0, eval_public(row)) for row in rows]


def list_warnings(*, session: Session, run_id: int, after_id: int = 0) -> list[WarningPublic]:
    rows = session.exec(
        select(RunWarning)
        .where(RunWarning.run_id == run_id, col(RunWarning.id) > after_id)
        .order_by(col(RunWarning.id))
    ).all()
    return [WarningPublic.model_validate(row) for row in rows]


def list_presets() -> list[PresetPublic]:
    return [
        PresetPublic(name=n, description=PRESET_DESCRIPTIONS.get(n, ""), config=preset(n).to_dict())
        for n in preset_names()
    ]


# --- datasets -------------------------------------------------------------------------------------
def create_dataset(
    *,
    session: Session,
    data_dir: Path,
    upload: BinaryIO,
    filename: str,
    name: str | None = None,
    label_column: str | None = None,
    limits: Limits | None = None,
) -> Dataset:
    """Store an upload under a generated name and validate it; on any problem the file is removed
    and nothing is stored (TableError -> InputError with each issue's row and column)."""
    fields, target = _read_upload(data_dir, upload, filename, name, label_column, limits)
    try:
        dataset = Dataset(**fields, path=str(target))
        session.add(dataset)
        session.commit()
    except BaseException:
        target.unlink(missing_ok=True)
        raise
    session.refresh(dataset)
    return dataset


def preview_dataset(
    *,
    data_dir: Path,
    upload: BinaryIO,
    filename: str,
    name: str | None = None,
    label_column: str | None = None,
    limits: Limits | None = None,
) -> DatasetPreview:
    """What `create_dataset` would store for this upload, read the same way; the file is removed and
    nothing is stored."""
    fields, target = _read_upload(data_dir, upload, filename, name, label_column, limits)
    target.unlink(missing_ok=True)
    return DatasetPreview(**fields)


def _read_upload(
    data_dir: Path, upload: BinaryIO, filename: str, name: str | None, label_column: str | None, limits: Limits | None
) -> tuple[dict[str, Any], Path]:
    """Copy and parse an upload: (the Dataset fields it describes, the copy). On any problem the copy is
    removed (TableError -> InputError with each issue's row and column)."""
    original = Path(filename or "upload").name
    _refuse_control_characters(["body", "file"], original, "the file's name")  # it is stored and shown
    _refuse_control_characters(["body", "name"], name, "a dataset's name")
    _refuse_control_characters(["body", "label_column"], label_column, "a column name")
    suffix = Path(original).suffix.lower()
    if suffix not in TABLE_SUFFIXES:
        raise InputError.at(
            ["body", "file"], f"unsupported file type {suffix or '(none)'!r}; upload CSV, Parquet or NPZ"
        )
    data_dir.mkdir(parents=True, exist_ok=True)
    target = (data_dir / f"{uuid.uuid4().hex}{suffix}").resolve()
    try:
        if limits is None:
            with target.open("wb") as fh:
                shutil.copyfileobj(upload, fh, 1 << 20)
            summary = describe_table(target, label_column or None)
        else:  # capped while copied, sized from its headers, then parsed outside this process
            copy_capped(upload, target, limits.upload_bytes)
            check_table_size(target, limits)
            summary = summarise_table(target, label_column or None, limits)
    except TableError as exc:
        target.unlink(missing_ok=True)
        raise InputError(table_error_items(exc)) from exc
    except BaseException:
        target.unlink(missing_ok=True)
        raise
    described = ("format", "rows", "n_features", "num_classes", "target_kind", "sha256", "target_entropy")
    listed = ("feature_columns", "target_columns", "class_names", "class_shares")
    fields = {
        "name": (name or Path(original).stem)[:200],
        "filename": original,
        "label_column": label_column or None,
        **{key: summary[key] for key in described + listed},
    }
    return fields, target


def get_dataset(*, session: Session, dataset_id: int) -> Dataset:
    dataset = _by_id(session, Dataset, dataset_id)
    if dataset is None:
        raise NotFound(f"Dataset {dataset_id} not found")
    return dataset


def list_datasets(*, session: Session) -> list[Dataset]:
    return list(session.exec(select(Dataset).order_by(col(Dataset.id).desc())).all())
