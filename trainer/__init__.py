"""collapsewatch's trainer: soft-target classifiers with anti-collapse regularizers, per-batch
collapse statistics, evaluation and a collapse detector. No web or database code lives here."""

from trainer.advice import advise
from trainer.config import (
    DATA_FIELDS_OF_KIND,
    PRESET_DESCRIPTIONS,
    ConfigError,
    DataSpec,
    TrainConfig,
    from_dict,
    load_config,
    preset,
    preset_names,
)
from trainer.data import TableError, TableIssue, load_table, read_table_summary
from trainer.detector import CollapseDetector
from trainer.loop import train
from trainer.records import (
    BATCH_COLUMNS,
    EVAL_METRICS,
    Advice,
    BatchChunk,
    CollapseWarning,
    DataProfile,
    EvalRecord,
    RunInfo,
    TrainResult,
)
from trainer.sinks import JsonlSink, ListSink, NullSink, Sink

__all__ = [
    "BATCH_COLUMNS",
    "DATA_FIELDS_OF_KIND",
    "EVAL_METRICS",
    "PRESET_DESCRIPTIONS",
    "Advice",
    "BatchChunk",
    "CollapseDetector",
    "CollapseWarning",
    "ConfigError",
    "DataProfile",
    "DataSpec",
    "EvalRecord",
    "JsonlSink",
    "ListSink",
    "NullSink",
    "RunInfo",
    "Sink",
    "TableError",
    "TableIssue",
    "TrainConfig",
    "TrainResult",
    "advise",
    "from_dict",
    "load_config",
    "load_table",
    "preset",
    "preset_names",
    "read_table_summary",
    "train",
]
