"""The collapse detector on a user's loop: the trainer's own `CollapseDetector`, run client side.

Its `TrainConfig` is built when the first chunk lands: a user's loop has none of the built-in trainer's
regularizers unless its config says so (LOOP_DEFAULTS), then every key of the user's config that
`TrainConfig` knows (temperature, label_smoothing, deploy_temperature, max_grad_norm, entropy_weight,
min_entropy, lr, ...), then what the first chunk shows: its batch size, class count, and the temperature
and smoothing the statistics were computed with. A known key whose value TrainConfig refuses is left out
(`Watch.ignored` says which, and why). The `DataProfile` every threshold is relative to is the first
chunk's raw targets (trainer.data.profile_targets): log a few representative batches first.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from typing import Any

from collapsewatch.recorder import Recorded
from trainer.config import ConfigError, TrainConfig, from_dict
from trainer.data import profile_targets
from trainer.detector import CollapseDetector
from trainer.records import CollapseWarning, EvalRecord

log = logging.getLogger("collapsewatch")

# no smoothing, no temperature, no penalty, no clipping: what a plain cross-entropy loop does
LOOP_DEFAULTS: dict[str, Any] = {
    "label_smoothing": 0.0,
    "temperature": 1.0,
    "entropy_weight": 0.0,
    "min_entropy": 0.0,
    "entropy_penalty": "linear",
    "class_weights": None,
    "max_grad_norm": None,
    "weight_decay": 0.0,
    "final_layer_weight_decay": 0.0,
}
# without steps_per_epoch the detector's warm-up (half an epoch, 10-50 batches) and persistence (a quarter
# of an epoch, 5-20 batches) take their longest values
DEFAULT_STEPS_PER_EPOCH = 100
_USER_KEYS = frozenset(f.name for f in dataclasses.fields(TrainConfig)) - {"data", "device"}


def detector_config(
    user: Mapping[str, Any],
    *,
    num_classes: int,
    batch_size: int,
    temperature: float,
    label_smoothing: float,
    lr: float | None = None,
) -> tuple[TrainConfig, dict[str, str]]:
    """The config the detector judges a user's loop by, and the user's keys left out, with the reason."""
    picked = {k: v for k, v in user.items() if k in _USER_KEYS}
    values: dict[str, Any] = {**LOOP_DEFAULTS, **picked}
    values.update(temperature=temperature, label_smoothing=label_smoothing, batch_size=batch_size)
    if "lr" not in picked and lr is not None:
        values["lr"] = lr
    values["data"] = {"num_classes": num_classes}
    ignored: dict[str, str] = {}
    for _ in range(len(values) + 1):
        try:
            return from_dict(values), ignored
        except ConfigError as exc:
            bad = {field.split(".")[0]: message for field, message in exc.errors}
            if not set(bad) - {"data"}:
                raise
            for name, message in bad.items():
                ignored[name] = message
                values.pop(name, None)
                if name in LOOP_DEFAULTS:
                    values[name] = LOOP_DEFAULTS[name]
    raise RuntimeError("unreachable: every refused key is dropped")


class Watch:
    """Feeds one run's chunks and evaluations to a detector built at the first chunk. A failure of the
    detector itself is logged and turns detection off: it never breaks the loop."""

    def __init__(self, config: Mapping[str, Any], steps_per_epoch: int | None) -> None:
        self.config, self.steps_per_epoch = config, steps_per_epoch
        self.detector: CollapseDetector | None = None
        self.ignored: dict[str, str] = {}
        self._broken = False

    def observe(self, recorded: Recorded) -> list[CollapseWarning]:
        if self._broken:
            return []
        try:
            if self.detector is None:
                self.detector = self._build(recorded)
            return self.detector.observe_batches(recorded.detector_view)
        except Exception:
            log.exception("collapsewatch: the collapse detector failed; detection is off for this run")
            self._broken = True
            return []

    def observe_eval(self, record: EvalRecord) -> list[CollapseWarning]:
        if self._broken or self.detector is None:
            return []
        try:
            return self.detector.observe_eval(record)
        except Exception:
            log.exception("collapsewatch: the collapse detector failed on an evaluation; detection is off")
            self._broken = True
            return []

    def _build(self, recorded: Recorded) -> CollapseDetector:
        assert recorded.targets is not None, "the first chunk carries its targets"
        num_classes = recorded.chunk.class_hist.shape[1]
        lrs = recorded.chunk.column("lr") if "lr" in recorded.chunk.columns else []
        cfg, self.ignored = detector_config(
            self.config,
            num_classes=num_classes,
            batch_size=recorded.batch_size,
            temperature=recorded.temperature,
            label_smoothing=recorded.label_smoothing,
            lr=float(lrs[0]) if len(lrs) else None,
        )
        if self.ignored:
            log.warning("collapsewatch: config keys the detector cannot use: %s", self.ignored)
        profile = profile_targets(recorded.targets, 0, 0)
        return CollapseDetector(cfg, profile, self.steps_per_epoch or DEFAULT_STEPS_PER_EPOCH)
