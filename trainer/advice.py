"""The tuning ladder: for each collapse diagnosis, the next config change to try.

`advise(kind, config)` walks the knobs that fit the diagnosis and proposes the first one not yet at
its top rung; `ladder_position(config)` says where every knob stands, for display.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from trainer.config import TrainConfig
from trainer.records import Advice

# Below this the learning rate is not the problem any more: lowering it again only slows the run.
LR_FLOOR = 1e-5
# The learning rate moves in geometric steps: a collapse caused by the step size needs a real change,
# and halving from 1.0 three times still fails where x0.3 reaches the working range.
LR_FACTOR = 0.3
_EPS = 1e-9  # float slack, so 0.15000000001 counts as being at the 0.15 rung


@dataclass(frozen=True)
class _Ladder:
    """A numeric knob's rungs, weakest first; `higher` says whether a larger value regularizes more."""

    rungs: tuple[float, ...]
    higher: bool = True
    # one rung below the guide's first, so the "too far" advice can step under the defaults
    # without going back to the collapse-prone settings
    floor: float | None = None
    # explicit steps for loosening, when they differ from (floor, *rungs): e.g. smoothing that
    # over-smooths peaky targets needs to come down further than the guide's first rung
    down: tuple[float, ...] | None = None

    def stronger(self, a: float, b: float) -> bool:
        return a > b + _EPS if self.higher else a < b - _EPS

    def next_up(self, value: float | None) -> float | None:
        return next((r for r in self.rungs if value is None or self.stronger(r, value)), None)

    def next_down(self, value: float | None) -> float | None:
        if value is None:
            return None
        steps = self.down if self.down is not None else (self.floor, *self.rungs)
        below = sorted((r for r in steps if r is not None and self.stronger(value, r)), reverse=not self.higher)
        return below[-1] if below else None

    def rung(self, value: float | None) -> int:
        """0 below the first rung, k when at or past rung k (1-based)."""
        return sum(1 for r in self.rungs if value is not None and not self.stronger(r, value))


_LADDERS: dict[str, _Ladder] = {
    # measured on the bank: 0.15 -> 0.1 barely moves over-smoothed predictions; 0.05, then 0, do
    "label_smoothing": _Ladder((0.15, 0.2, 0.25), floor=0.1, down=(0.0, 0.05)),
    "temperature": _Ladder((4.0, 5.0, 6.0), floor=3.0),
    "entropy_weight": _Ladder((5.0, 7.0, 10.0), floor=3.0),
    "min_entropy": _Ladder((1.5, 1.8, 2.0), floor=1.2),
    "max_grad_norm": _Ladder((1.0, 0.8, 0.5), higher=False),  # None (off) is weaker than every rung
    "final_layer_weight_decay": _Ladder((0.01, 0.02, 0.05)),
}

_WHY: dict[str, str] = {
    "label_smoothing": "smoothing gives every class some target mass, so the optimum stops at finite logits",
    "temperature": "a higher temperature flattens softmax(z / T), so the same logits give softer predictions",
    "entropy_penalty": "the quadratic penalty pulls harder the further entropy falls below the threshold",
    "entropy_weight": "a heavier entropy penalty resists predictions sharper than the threshold",
    "min_entropy": "a higher entropy threshold makes the penalty act before predictions get sharp",
    "max_grad_norm": "clipping bounds the size of each update, so one bad batch cannot throw the model",
    "final_layer_weight_decay": "extra decay on the classifier layer keeps its weights, and so the logits, small",
    "lr": "smaller steps keep the optimizer from jumping into a collapsed state; the output regularizers only "
    "bound the logits, and a too-high learning rate collapses even with all of them on",
    "match_temperature": "a model trained on softmax(z / T) learns logits T times too large for T = 1; trained at "
    "the temperature it is used at, the smoothing and the entropy penalty act on the predictions it will serve",
    "match_temperature_cap": "a model trained on softmax(z / T) learns logits T times too large for T = 1; trained at "
    "the temperature it is used at, the regularizers act on the predictions it will serve, and with the entropy "
    "penalty capped at each target's own entropy it no longer holds them flatter than the data",
}
_WHY_DOWN: dict[str, str] = {
    "cap_entropy_at_target": "the penalty then no longer pushes a sample above its own target's entropy, so it "
    "stops fighting a correct fit",
    "min_entropy": "the entropy threshold is above what the targets need, so the penalty holds predictions too flat",
    "entropy_weight": "the entropy penalty outweighs the fit to the targets",
    "label_smoothing": "smoothing spreads more target mass over the classes than the data has",
    "temperature": "a lower temperature lets the model express the targets' confidence",
}
_WHY_LR_UNSTABLE = "a smaller step keeps one bad batch from throwing the weights far enough to blow up"
_UNSTABLE = frozenset({"exploding_gradients", "nonfinite_gradients", "nonfinite_loss", "val_loss_jump"})

_DIAGNOSIS: dict[str, str] = {
    "one_hot": "Near-one-hot predictions",
    "dominant_class": "Mode collapse (one class dominates the predictions)",
    "low_entropy": "Predictions far sharper than the targets",
    "exploding_logits": "Exploding logits",
    "exploding_gradients": "Exploding gradients",
    "nonfinite_gradients": "Non-finite gradients",
    "nonfinite_loss": "Non-finite loss (the run diverged)",
    "val_loss_jump": "Validation loss jump",
    "too_uniform": "Predictions pushed towards uniform",
    "deployed_collapse": "Collapse hidden by the temperature (healthy as trained, collapsed as deployed)",
}

# "enable_clipping" is max_grad_norm's first rung only: turning clipping on is cheap and always fits
# an unstable run, while tightening it further matters little under Adam (its steps ignore gradient scale).
_KNOBS: dict[str, tuple[str, ...]] = {
    "one_hot": ("label_smoothing", "temperature", "entropy_penalty", "entropy_weight", "min_entropy",
                "final_layer_weight_decay"),
    "dominant_class": ("lr", "enable_clipping", "label_smoothing"),
    "low_entropy": ("entropy_penalty", "entropy_weight", "label_smoothing", "temperature", "min_entropy"),
    "exploding_logits": ("lr", "label_smoothing", "final_layer_weight_decay", "enable_clipping"),
    "deployed_collapse": ("match_temperature", "label_smoothing", "entropy_penalty", "entropy_weight"),
    "exploding_gradients": ("max_grad_norm", "lr"),
    "nonfinite_gradients": ("enable_clipping", "lr", "max_grad_norm"),
    "nonfinite_loss": ("enable_clipping", "lr", "max_grad_norm"),
    "val_loss_jump": ("enable_clipping", "lr", "max_grad_norm"),
    "too_uniform": ("match_temperature", "cap_entropy_at_target", "label_smoothing", "min_entropy", "entropy_weight",
                    "temperature"),
}  # fmt: skip
ADVICE_KINDS: tuple[str, ...] = tuple(_KNOBS)


def _round(value: float) -> float:
    return float(f"{value:.3g}")  # 0.3 * 0.3 = 0.09, not 0.09000000000000001


def _fmt(value: Any) -> str:
    if value is None:
        return "off"
    return f"{value:g}" if isinstance(value, float) else str(value)


def _min_entropy_ladder(config: TrainConfig) -> _Ladder:
    # a threshold above ln C cannot be met by any distribution: the penalty would never let go
    top = math.log(config.num_classes) + _EPS
    base = _LADDERS["min_entropy"]
    return _Ladder(tuple(r for r in base.rungs if r <= top), floor=base.floor)


def _ladder(knob: str, config: TrainConfig) -> _Ladder:
    return _min_entropy_ladder(config) if knob == "min_entropy" else _LADDERS[knob]


def _penalty_active(config: TrainConfig) -> bool:
    return config.entropy_weight > 0 and config.min_entropy > 0


def _next_value(knob: str, config: TrainConfig, down: bool) -> tuple[str, Any] | None:
    """(field, new value) for one step of `knob`, or None when the knob has no step left."""
    value = getattr(config, "max_grad_norm" if knob == "enable_clipping" else knob, None)
    if knob == "enable_clipping":
        return ("max_grad_norm", _LADDERS["max_grad_norm"].rungs[0]) if value is None else None
    if knob == "lr":
        return ("lr", _round(value * LR_FACTOR)) if value * LR_FACTOR >= LR_FLOOR else None
    if knob == "match_temperature":
        # when loosening, only from above: a model trained hotter than it is used is sharper as deployed
        target = config.deploy_temperature
        if (down and config.temperature <= target + _EPS) or abs(config.temperature - target) <= _EPS:
            return None
        return "temperature", target
    if knob == "entropy_penalty":
        return ("entropy_penalty", "quadratic") if value == "linear" and config.entropy_weight > 0 else None
    if knob == "cap_entropy_at_target":
        return (knob, True) if not value and _penalty_active(config) else None
    if knob == "min_entropy" and config.entropy_weight <= 0:
        return None  # the threshold does nothing while the penalty's weight is zero
    if knob == "entropy_weight" and down and not _penalty_active(config):
        return None
    ladder = _ladder(knob, config)
    new = ladder.next_down(value) if down else ladder.next_up(value)
    return None if new is None else (knob, new)


def advise(kind: str, config: TrainConfig) -> Advice:
    """The next rung to try for diagnosis `kind`: the first knob in its list with a step left."""
    if kind not in _KNOBS:
        raise ValueError(f"unknown diagnosis kind {kind!r}; known kinds: {', '.join(ADVICE_KINDS)}")
    down = kind == "too_uniform"
    for knob in _KNOBS[kind]:
        step = _next_value(knob, config, down)
        if step is not None:
            return _advice(kind, knob, config, *step, down=down)
    if down:
        return Advice(
            f"{_DIAGNOSIS[kind]}: every regularizer is already at the bottom of the ladder; "
            "the model may be too small or too slowly trained to fit the targets (try more epochs or a wider model)."
        )
    step = _next_value("lr", config, down=False)
    if step is not None:
        return _advice(kind, "lr", config, *step, down=False, exhausted=True)
    return Advice(
        f"{_DIAGNOSIS[kind]}: every knob on the ladder is at its top and the learning rate is already "
        f"{_fmt(config.lr)}; check the data and the model rather than the regularizers."
    )


def _advice(
    kind: str, knob: str, config: TrainConfig, field: str, new: Any, *, down: bool, exhausted: bool = False
) -> Advice:
    old = getattr(config, field)
    if knob == "cap_entropy_at_target":
        action = "turn on cap_entropy_at_target"
    elif knob == "enable_clipping" or (field == "max_grad_norm" and old is None):
        action = f"turn on gradient clipping (max_grad_norm {_fmt(new)})"
    elif knob == "lr":
        action = f"lower the learning rate from {_fmt(old)} to {_fmt(new)} (x{LR_FACTOR:g})"
    elif knob == "match_temperature":
        action = f"train at the deployment temperature: temperature from {_fmt(old)} to {_fmt(new)}"
        overrides = {field: new}
        if _penalty_active(config) and not config.cap_entropy_at_target:
            # the penalty's threshold was sized for the hotter view; at the deployment temperature it
            # would hold predictions above the data's own entropy (measured: too uniform on peaky data)
            action += ", with cap_entropy_at_target on"
            overrides["cap_entropy_at_target"] = True
            knob = "match_temperature_cap"
        why = _WHY[knob]
        message = f"{_DIAGNOSIS[kind]}: {action}. Why: {why}.{efficacy_sentence(kind, overrides)}"
        return Advice(message=message, overrides=overrides)
    else:
        verb = {"max_grad_norm": "tighten", "entropy_penalty": "switch"}.get(knob, "lower" if down else "raise")
        action = f"{verb} {field} from {_fmt(old)} to {_fmt(new)}"
    why = (_WHY_DOWN if down else _WHY)["max_grad_norm" if knob == "enable_clipping" else knob]
    if knob == "lr" and kind in _UNSTABLE:
        why = _WHY_LR_UNSTABLE
    lead = "every knob that fits is at its top rung, so " if exhausted else ""
    overrides = {field: new}
    message = f"{_DIAGNOSIS[kind]}: {lead}{action}. Why: {why}.{efficacy_sentence(kind, overrides)}"
    return Advice(message=message, overrides=overrides)


# How often each advice worked on the scenario bank: written by `python -m bench.diagnosis` (a full run),
# keyed by "kind:field,field" of the overrides, as [healthy after, tried]
EFFICACY_PATH = Path(__file__).with_name("advice_efficacy.json")


@lru_cache(maxsize=1)
def measured_efficacy() -> dict[str, tuple[int, int]]:
    try:
        raw = json.loads(EFFICACY_PATH.read_text())
    except (OSError, ValueError):
        return {}
    return {k: (int(v[0]), int(v[1])) for k, v in raw.get("efficacy", {}).items()}


def efficacy_key(kind: str, overrides: dict[str, Any]) -> str:
    return f"{kind}:{','.join(sorted(overrides))}"


def efficacy_sentence(kind: str, overrides: dict[str, Any]) -> str:
    """' Measured: turned 14 of 16 such runs healthy ...', or '' when the bank never tried this advice."""
    healthy, tried = measured_efficacy().get(efficacy_key(kind, overrides), (0, 0))
    if tried == 0:
        return ""
    return f" On the scenario bank (bench.diagnosis) this advice turned {healthy} of {tried} such runs healthy."


def ladder_position(config: TrainConfig) -> dict[str, dict[str, Any]]:
    """Each knob's current value, its rung (0 = below the ladder) and the next stronger value (None = top)."""
    out: dict[str, dict[str, Any]] = {}
    for knob in _LADDERS:
        ladder, value = _ladder(knob, config), getattr(config, knob)
        out[knob] = {"value": value, "rung": ladder.rung(value), "next": ladder.next_up(value)}
        out[knob]["ladder"] = list(ladder.rungs)
    penalty = config.entropy_penalty
    out["entropy_penalty"] = {
        "value": penalty,
        "rung": 1 if penalty == "quadratic" else 0,
        "next": "quadratic" if penalty == "linear" else None,
        "ladder": ["quadratic"],
    }
    lower = _round(config.lr * LR_FACTOR)
    out["lr"] = {"value": config.lr, "rung": None, "next": lower if lower >= LR_FLOOR else None, "ladder": []}
    return out
