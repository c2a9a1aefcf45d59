"""The compare page's verdict: each run's last evaluation side by side, the best value of each measure
marked, and which run is better by how much, said only where the difference is clear.

"Clear" is a difference of at least `min_gap` in the measure's own units and `MIN_RELATIVE` of the
runner-up's value: smaller ones are within what a different seed moves (on the built-in data, seeds move
val loss by about 2-3%).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from app.storage.models import SEVERITY_RANK, EvalSummary, RunPublic, WarningPublic

MIN_RELATIVE = 0.05


@dataclass(frozen=True)
class Measure:
    key: str
    label: str
    better: str  # "lower" | "higher" | "closer" (to the targets' entropy)
    min_gap: float
    title: str


MEASURES = (
    Measure("soft_ce", "Val loss", "lower", 0.01,
            "Soft cross-entropy against the raw targets on the held-out split: the same loss for every run, "
            "whatever its regularizers (nats, lower is better)"),
    Measure("accuracy", "Accuracy", "higher", 0.01, "argmax(prediction) = argmax(target) on the held-out split"),
    Measure("ece", "ECE", "lower", 0.005, "Expected calibration error, 15 bins (lower is better)"),
    Measure("kl", "KL(target ‖ pred)", "lower", 0.01, "Mean KL divergence from the targets (nats, lower is better)"),
    Measure("entropy_gap", "Entropy vs target", "closer", 0.02,
            "Mean prediction entropy / the targets' mean entropy (nats): closest to the targets is best"),
)  # fmt: skip


@dataclass
class Cell:
    value: float | None  # what is compared (for entropy: |entropy - target|); None: no finite value
    text: str
    nonfinite: str | None = None  # "NaN", "Infinity": shown instead of a number
    best: bool = False


@dataclass
class Row:
    run: RunPublic
    cells: dict[str, Cell]
    warnings: list[WarningPublic]
    worst_severity: str | None
    warnings_best: bool = False


@dataclass
class Finding:
    measure: Measure
    best: list[int]  # run ids with the best value
    text: str
    clear: bool


@dataclass
class Comparison:
    measures: tuple[Measure, ...]
    rows: list[Row]
    findings: list[Finding]
    verdict: str
    caveats: list[str] = field(default_factory=list)


def fmt(value: float | None, digits: int = 4) -> str:
    return "—" if value is None else f"{value:.{digits}g}"


def _cell(measure: Measure, ev: EvalSummary | None) -> Cell:
    if ev is None:
        return Cell(None, "—")
    if measure.key == "entropy_gap":
        h, t = ev.metrics.get("entropy_mean"), ev.metrics.get("target_entropy_mean")
        bad = ev.nonfinite.get("entropy_mean") or ev.nonfinite.get("target_entropy_mean")
        if bad or h is None or t is None:
            return Cell(None, bad or "—", bad)
        return Cell(abs(h - t), f"{fmt(h, 3)} / {fmt(t, 3)} ({h - t:+.2g})")
    bad = ev.nonfinite.get(measure.key)
    value = ev.metrics.get(measure.key)
    if bad or value is None:
        return Cell(None, bad or "—", bad)
    return Cell(value, fmt(value))


def _sign(measure: Measure) -> float:
    """Turns every measure into "smaller is better"."""
    return -1.0 if measure.better == "higher" else 1.0


def _finding(measure: Measure, rows: list[Row]) -> Finding | None:
    """The best run(s) of one measure, marked, and how far ahead of the runner-up."""
    scored = sorted(
        ((r.cells[measure.key].value, r) for r in rows if r.cells[measure.key].value is not None),
        key=lambda vr: _sign(measure) * vr[0],
    )
    if not scored:
        return None
    best_value = scored[0][0]
    best = [r for v, r in scored if math.isclose(v, best_value, rel_tol=1e-9, abs_tol=1e-12)]
    if len(best) == len(rows):
        return Finding(measure, [], f"{measure.label}: every run has {fmt(best_value)}.", False)
    for r in best:
        r.cells[measure.key].best = True
    names = " and ".join(f"#{r.run.id}" for r in best)
    others = [(v, r) for v, r in scored if r not in best]
    if not others:  # the rest have no finite value: a diverged run, or one not evaluated yet
        missing = ", ".join(f"#{r.run.id} {r.cells[measure.key].nonfinite or 'none'}" for r in rows if r not in best)
        text = f"{measure.label}: only {names} has a finite value ({missing})."
        return Finding(measure, [r.run.id for r in best], text, True)
    runner_value, runner = others[0]
    gap = abs(runner_value - best_value)
    relative = gap / abs(runner_value) if runner_value else math.inf
    clear = gap >= measure.min_gap and relative >= MIN_RELATIVE
    if measure.key == "accuracy":
        by = f"{gap * 100:.1f} points higher"
    else:
        word = "closer to the targets" if measure.better == "closer" else measure.better
        by = f"{fmt(gap, 3)} {word}" + (f", {relative:.0%}" if math.isfinite(relative) else "")
    unit = " nats off" if measure.key == "entropy_gap" else ""
    text = (
        f"{measure.label}: {names} {'is' if len(best) == 1 else 'are'} best, {fmt(best_value)}{unit} against "
        f"{fmt(runner_value)} for #{runner.run.id} ({by})"
    )
    return Finding(measure, [r.run.id for r in best], text + ("." if clear else ": too close to call."), clear)


def _mark_warnings(rows: list[Row]) -> None:
    """Fewest warnings of the lowest worst severity is best, when not every run has the same."""
    keys = [(SEVERITY_RANK.get(r.worst_severity, -1) if r.worst_severity else -1, len(r.warnings)) for r in rows]
    if len(set(keys)) > 1:
        for row, key in zip(rows, keys, strict=True):
            row.warnings_best = key == min(keys)


def _verdict(findings: list[Finding], rows: list[Row]) -> str:
    clear = [f for f in findings if f.clear]
    if not any(r.run.final_eval for r in rows):
        return "No run has been evaluated yet: nothing to compare."
    if not clear:
        return "Too close to call: no measure differs clearly (by 5% or more) between these runs."
    winners = {run_id for f in clear for run_id in f.best}
    if len(winners) == 1 and all(len(f.best) == 1 for f in clear):
        (winner,) = winners
        labels = _and([f.measure.label for f in clear])
        unclear = len(findings) - len(clear)
        tail = f"; the other {unclear} differ too little to say" if unclear else ""
        return f"#{winner} is better: it wins every measure that differs clearly ({labels}){tail}."
    wins: dict[int, list[str]] = {}
    for f in clear:
        for run_id in f.best:
            wins.setdefault(run_id, []).append(f.measure.label)
    ranked = sorted(wins.items(), key=lambda item: -len(item[1]))
    split = "; ".join(f"#{run_id} wins {_and(labels)}" for run_id, labels in ranked)
    return f"No run is better on every measure: {split}."


def _and(words: list[str]) -> str:
    return words[0] if len(words) == 1 else f"{', '.join(words[:-1])} and {words[-1]}"


def compare_runs(runs: list[RunPublic], warnings: dict[int, list[WarningPublic]]) -> Comparison:
    rows = []
    for run in runs:
        found = warnings.get(run.id, [])
        worst = max((w.severity for w in found), key=lambda s: SEVERITY_RANK.get(s, 0), default=None)
        rows.append(Row(run, {m.key: _cell(m, run.final_eval) for m in MEASURES}, found, worst))
    findings = [f for m in MEASURES if (f := _finding(m, rows)) is not None]
    _mark_warnings(rows)
    caveats = []
    unfinished = [r.run for r in rows if r.run.status in ("queued", "running")]
    if unfinished:
        ids = ", ".join(f"#{r.id}" for r in unfinished)
        verb = "is" if len(unfinished) == 1 else "are"
        caveats.append(f"{ids} {verb} not finished: values are from the latest evaluation so far (reload for newer).")
    data = {repr(r.config.get("data")) + repr(r.dataset_id) for r in runs}
    if len(data) > 1:
        caveats.append("These runs trained on different data, so their validation sets differ: compare with care.")
    return Comparison(MEASURES, rows, findings, _verdict(findings, rows), caveats)
