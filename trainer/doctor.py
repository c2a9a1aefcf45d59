"""Doctor mode's one step: from a run's config and the warnings it raised, the next config to try, or why
to stop. Pure (no database): the server's doctor (app/worker/doctor.py) and `bench.doctor` share it.

The first warning (in the order raised) of severity "warning" or "critical" whose advice changes the config
is followed, unless that change leads back to a config already tried in this lineage: then the next such
warning, and when none is left the advice has run out. "Too uniform" overshoot needs nothing special: its
advice steps the regularizers back down the ladder (trainer/advice.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from trainer.config import ConfigError, from_dict
from trainer.records import CollapseWarning

ACTIONABLE = ("warning", "critical")  # "info" warnings never stop a run


@dataclass(frozen=True)
class Prescription:
    """`overrides` to apply (with the warning they answer), or None with the reason the lineage stops."""

    overrides: dict[str, Any] | None
    warning: CollapseWarning | None
    reason: str

    @property
    def healthy(self) -> bool:
        return self.overrides is None and self.warning is None and self.reason == HEALTHY


HEALTHY = "healthy: no warning to act on"


def actionable(warnings: Sequence[CollapseWarning]) -> list[CollapseWarning]:
    return [w for w in warnings if w.severity in ACTIONABLE]


def prescribe(
    config: dict[str, Any], warnings: Sequence[CollapseWarning], tried: Sequence[dict[str, Any]] = ()
) -> Prescription:
    """The next step for a run with effective `config` that raised `warnings`; `tried` holds the effective
    configs of the lineage so far (this run's included or not), none of which is proposed again."""
    acting = actionable(warnings)
    if not acting:
        return Prescription(None, None, HEALTHY)
    base = from_dict(config)
    seen = [dict(c) for c in tried] + [base.to_dict()]
    for warning in acting:
        overrides = dict(warning.advice.overrides) if warning.advice else {}
        if not overrides:
            continue
        try:
            child = from_dict(overrides, base=base).to_dict()
        except ConfigError:
            continue  # advice made for another config version; the next warning may still apply
        if child not in seen:
            return Prescription(overrides, warning, f"{warning.kind}: {warning.advice.message}")  # type: ignore[union-attr]
    first = acting[0]
    advice = f" ({first.advice.message})" if first.advice and first.advice.message else ""
    return Prescription(
        None,
        first,
        f"advice ran out: {first.kind}{advice}; every change the warnings advise leads to a config already tried",
    )
