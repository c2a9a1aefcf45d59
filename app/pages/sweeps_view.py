"""What the sweep pages show: each trial's parameters as text, whether the page still follows the sweep, the
best trial's "queue it again" request, and the data the charts draw (static/js/sweep_charts.js)."""

from __future__ import annotations

from typing import Any

from sqlmodel import Session

from app.pages.config_form import flatten, overrides_from
from app.pages.run_form import find_run
from app.storage.sweep_models import SweepPublic, TrialPublic
from app.storage.sweeps import ACTIVE
from trainer import preset, preset_names

# the objective's axis title: what it measures and its unit (trainer.evaluate computes each)
OBJECTIVE_LABELS = {
    "val_kl": "validation KL(target ‖ prediction), nats",
    "accuracy": "validation accuracy, share of the validation set",
    "ece": "validation expected calibration error (15 bins)",
}
OBJECTIVE_SHORT = {
    "val_kl": "val. KL, nats",
    "accuracy": "val. accuracy (share)",
    "ece": "val. ECE (15 bins)",
}  # phones
# what a chart needs of each trial (the whole TrialPublic also carries errors and durations)
_CHART_FIELDS = {"number", "run_id", "status", "params", "objective", "collapsed", "max_severity", "pruned_reason"}


def param_text(value: Any) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, float):
        return f"{value:.4g}"
    return "none" if value is None else str(value)


def space_text(spec: dict[str, Any]) -> str:
    """One searched field as the header lists it: "log range 0.001 to 0.3", "choices linear, quadratic"."""
    if "choices" in spec:
        return "choices " + ", ".join(param_text(c) for c in spec["choices"])
    kind = "log range" if spec.get("log") else "range"
    step = f", step {param_text(spec['step'])}" if spec.get("step") is not None else ""
    return f"{kind} {param_text(spec['low'])} to {param_text(spec['high'])}{step}"


def is_live(sweep: SweepPublic) -> bool:
    """Whether the page keeps polling: the sweep runs, or a cancelled one's trials are still stopping."""
    return sweep.status in ACTIVE or any(t.status in ACTIVE for t in sweep.trials)


def queue_again(session: Session, sweep: SweepPublic, best: TrialPublic) -> dict[str, Any] | None:
    """The POST /api/runs body that trains the best trial's config again (its preset plus the fields that
    differ from it, a child of the trial's run); None when its run was deleted or its preset is gone."""
    run = find_run(session, best.run_id)
    if run is None or sweep.preset not in preset_names():
        return None
    config = overrides_from(flatten(run.config), preset(sweep.preset).to_dict())
    name = f"{sweep.name}: trial {best.number} again"[:200]
    return {"name": name, "preset": sweep.preset, "config": config, "parent_id": run.id}


def chart_data(sweep: SweepPublic) -> dict[str, Any]:
    return {
        "objective": sweep.objective,
        "direction": sweep.direction,
        "objective_label": OBJECTIVE_LABELS[sweep.objective],
        "objective_short": OBJECTIVE_SHORT[sweep.objective],
        "search_space": sweep.search_space,
        "best_run_id": sweep.best_run_id,
        "trials": [t.model_dump(mode="json", include=_CHART_FIELDS) for t in sweep.trials],
    }


def sweep_context(session: Session, sweep: SweepPublic) -> dict[str, Any]:
    """The context of templates/sweeps/_live.html (the part of the page each poll renders afresh)."""
    best = sweep.best_trial
    return {
        "sweep": sweep,
        "live": is_live(sweep),
        "objective_label": OBJECTIVE_LABELS[sweep.objective],
        "space": [(name, space_text(spec)) for name, spec in sweep.search_space.items()],
        "params": {t.run_id: [(n, param_text(t.params.get(n))) for n in sweep.search_space] for t in sweep.trials},
        "running": sum(1 for t in sweep.trials if t.status == "running"),
        "queue_again": queue_again(session, sweep, best) if best else None,
        "chart_data": chart_data(sweep),
    }
