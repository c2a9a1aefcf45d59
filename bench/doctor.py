"""Doctor mode against random search, on the diagnosis bank, judged by the ground truth of the final model.

Every scenario of `bench.diagnosis` (seeds the tests never use) is trained; each run the ground truth calls
unhealthy (collapsed, or too uniform) is then treated two ways with the same budget of retrains:
- the doctor: `trainer.doctor.prescribe` on the warnings raised up to the first actionable one (the server
  stops the run there), retrain, and again, as the server's doctor does;
- random search: that many configs drawn at random over the same knobs (the tuning ladder's rungs and the
  learning rate, log-uniform from 1/100 of the run's up to it), seeded per scenario.
Prints, for each, the share of unhealthy runs it made healthy and the retrains it needed.
Run: `.venv/bin/python -m bench.doctor [--quick] [--budget 4] [--workers 2]`.
"""

from __future__ import annotations

import argparse
import math
import multiprocessing as mp
import random
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import append_results, machine_line
from bench.diagnosis import Outcome, _merge, digits_table, run_one, scenarios
from trainer import Advice, CollapseWarning
from trainer.doctor import ACTIONABLE, prescribe

KNOBS: dict[str, tuple[Any, ...]] = {  # the ladder's rungs (trainer/advice.py), with the collapse-prone values
    "label_smoothing": (0.0, 0.15, 0.2, 0.25),
    "temperature": (1.0, 2.0, 4.0, 5.0, 6.0),
    "entropy_weight": (0.0, 2.0, 5.0, 7.0, 10.0),
    "min_entropy": (1.0, 1.5, 1.8, 2.0),
    "max_grad_norm": (None, 1.0, 0.8, 0.5),
    "final_layer_weight_decay": (0.0, 0.01, 0.02, 0.05),
}


def _warnings(o: Outcome) -> list[CollapseWarning]:
    """The warnings a stopped run would have raised: those up to the first actionable one."""
    ordered = sorted(o.warnings, key=lambda w: w["raised"])
    first = next((w["raised"] for w in ordered if w["severity"] in ACTIONABLE), None)
    kept = [w for w in ordered if first is not None and w["raised"] <= first]
    return [
        CollapseWarning(
            kind=w["kind"], severity=w["severity"], step=w["step"], message="", evidence={},
            advice=Advice("", dict(w["advice"])) if w["advice"] else None,
        )
        for w in kept
    ]  # fmt: skip


def _strip(config: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in config.items() if k != "data"}


def doctor(heads: list[Outcome], pool: Any, budget: int) -> dict[str, list[Outcome]]:
    chains: dict[str, list[Outcome]] = {o.name: [] for o in heads}
    active = {o.name: o for o in heads}
    for _ in range(budget):
        jobs, owners = [], []
        for name, head in active.items():
            last = chains[name][-1] if chains[name] else head
            if chains[name] and last.verdict.healthy:
                continue
            tried = [_strip(head.config)] + [_strip(c.config) for c in chains[name]]
            step = prescribe(_strip(last.config), _warnings(last), tried)
            if step.overrides is None:
                continue
            jobs.append((f"{name} doctor {len(chains[name]) + 1}", _merge(last.config, step.overrides)))
            owners.append(name)
        if not jobs:
            break
        for name, result in zip(owners, pool.map(run_one, jobs), strict=True):
            chains[name].append(result)
    return chains


def random_configs(head: Outcome, budget: int) -> list[dict[str, Any]]:
    rng = random.Random(head.name)
    lr = float(head.config["lr"])
    out = []
    for _ in range(budget):
        values = {k: rng.choice(v) for k, v in KNOBS.items()}
        values["lr"] = float(f"{math.exp(rng.uniform(math.log(lr / 100), math.log(lr))):.3g}")
        out.append(_merge(head.config, values))
    return out


def random_search(heads: list[Outcome], pool: Any, budget: int) -> dict[str, list[Outcome]]:
    jobs = [(f"{o.name} random {i + 1}", c) for o in heads for i, c in enumerate(random_configs(o, budget))]
    results = pool.map(run_one, jobs)
    return {o.name: results[i * budget : (i + 1) * budget] for i, o in enumerate(heads)}


def _first_healthy(chain: list[Outcome]) -> int | None:
    return next((i + 1 for i, o in enumerate(chain) if o.verdict.healthy), None)


Chains = dict[str, list[Outcome]]


def report(heads: list[Outcome], doctored: Chains, searched: Chains, budget: int) -> list[str]:
    lines = [f"{len(heads)} unhealthy runs by the ground truth (budget: {budget} retrains each)"]
    for label, chains in (("doctor", doctored), ("random search", searched)):
        fixed = {n: _first_healthy(c) for n, c in chains.items()}
        cured = [a for a in fixed.values() if a is not None]
        runs = sum(len(c) for c in chains.values())
        median = f", median {statistics.median(cured):g} retrains to the first healthy run" if cured else ""
        share = f"{len(cured)}/{len(heads)} ({len(cured) / max(1, len(heads)):.0%})"
        lines.append(f"{label:>14}: healthy {share}{median}; {runs} runs trained")
    lines.append("per run (doctor / random: retrains to healthy, - = not within the budget):")
    for head in heads:
        d, r = _first_healthy(doctored[head.name]), _first_healthy(searched[head.name])
        steps = " -> ".join(
            ",".join(f"{k}={v}" for k, v in _strip(c.config).items() if _strip(p.config).get(k) != v)
            for p, c in zip([head, *doctored[head.name]], doctored[head.name], strict=False)
        )  # fmt: skip
        lines.append(f"  {head.name} [{'+'.join(head.verdict.labels)}]: {d or '-'} / {r or '-'}   {steps}")
    return lines


def main(argv: list[str] | None = None) -> list[str]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a small subset, not recorded")
    parser.add_argument("--budget", type=int, default=4, help="retrains per unhealthy run, for each method")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args(argv)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        try:
            table: Path | None = digits_table(Path(tmp))
        except ImportError:
            table = None
            print("scikit-learn is not installed (pip install -e '.[bench]'): the digits scenarios are skipped")
        with mp.get_context("fork").Pool(args.workers) as pool:
            outcomes = pool.map(run_one, scenarios(args.quick, table))
            heads = [o for o in outcomes if not o.verdict.healthy]
            doctored = doctor(heads, pool, args.budget)
            searched = random_search(heads, pool, args.budget)
    lines = report(heads, doctored, searched, args.budget)
    wall = time.perf_counter() - started
    lines.append(f"{len(outcomes)} scenarios; wall time {wall:.0f} s on {args.workers} processes")
    print("\n".join(lines))
    if not args.quick:
        append_results(["## Doctor mode against random search (`python -m bench.doctor`)", f"Machine: {machine_line()}",
                        "", "```", *lines, "```"])  # fmt: skip
    return lines


if __name__ == "__main__":
    main()
