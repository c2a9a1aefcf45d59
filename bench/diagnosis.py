"""The detector and its advice judged on a scenario bank by a ground truth from the final predictions.

Trains every scenario (synthetic smooth / peaky / imbalanced / noisy-label data, a real data set that
scikit-learn ships, a learning-rate sweep, the deployment-temperature case) on seeds the tests never
use, labels each final model with `bench.ground_truth`, and prints detection rate, false-alarm rate,
onset-to-warning latency and how often following the advice (up to 3 rungs) turns a run healthy.
Run: `.venv/bin/python -m bench.diagnosis [--quick] [--workers 2]`.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import tempfile
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import append_results, machine_line
from bench.ground_truth import SATURATED, Verdict, batch_conditions, judge, onset, saturation_onset
from trainer.advice import EFFICACY_PATH, efficacy_key

SEEDS = (11, 12)
SMOOTH = {"n_annotators": 30, "class_separation": 1.25}  # targets' mean entropy ~1.1 nats
DATASETS: dict[str, dict[str, Any]] = {
    "smooth": SMOOTH,
    "peaky": {},  # the built-in default: 3 annotators, ~0.2 nats
    "imbalanced": {**SMOOTH, "imbalance": 10.0},
    "noisy": {"biased_annotator_rate": 0.4, "n_annotators": 5},
}
LRS = (0.003, 0.03, 0.3)
BATCH_COLUMNS_USED = (
    "onehot_frac", "entropy_mean", "deploy_onehot_frac", "deploy_entropy_mean", "loss", "logit_spread_max",
)  # fmt: skip


@dataclass
class Outcome:
    name: str
    config: dict[str, Any]
    verdict: Verdict
    warnings: list[dict[str, Any]]
    steps_per_epoch: int
    collapse_onset: int | None = None
    explosion_onset: int | None = None
    chain: list[Outcome] = field(default_factory=list)


def digits_table(folder: Path) -> Path:
    """Digits 0-7 (1,437 images of 8x8 pixels) with soft targets: each image's share of labels among its
    15 nearest neighbours, itself included. Needs scikit-learn (in the `bench` extra)."""
    from sklearn.datasets import load_digits
    from sklearn.neighbors import NearestNeighbors

    x, y = load_digits(n_class=8, return_X_y=True)
    _, idx = NearestNeighbors(n_neighbors=15).fit(x).kneighbors(x)
    p = np.stack([(y[idx] == c).mean(axis=1) for c in range(8)], axis=1)
    path = folder / "digits8.npz"
    np.savez(path, x=x.astype(np.float32), p=p)
    return path


def scenarios(quick: bool, table: Path | None) -> list[tuple[str, dict[str, Any]]]:
    seeds = SEEDS[:1] if quick else SEEDS
    data = {k: DATASETS[k] for k in (("smooth", "peaky") if quick else DATASETS)}
    lrs = (0.003, 0.3) if quick else LRS
    epochs = 5 if quick else 15
    out = []
    for seed in seeds:
        for preset in ("collapse-prone", "fixed"):
            for dname, spec in data.items():
                for lr in lrs:
                    cfg = {"preset": preset, "lr": lr, "epochs": epochs, "seed": seed, "data": {**spec, "seed": seed}}
                    out.append((f"{dname} {preset} lr={lr} seed={seed}", cfg))
            if table is not None:
                for lr in lrs:
                    cfg = {"preset": preset, "lr": lr, "epochs": epochs, "seed": seed,
                           "data": {"kind": "table", "path": str(table), "num_classes": 8, "seed": seed}}  # fmt: skip
                    out.append((f"digits {preset} lr={lr} seed={seed}", cfg))
            if not quick:
                cfg = {"preset": preset, "lr": 1.0, "epochs": epochs, "seed": seed, "data": {**SMOOTH, "seed": seed}}
                out.append((f"smooth {preset} lr=1.0 seed={seed}", cfg))
        if not quick:
            # the deployment-temperature case: trained at T, used at T = 1 (see the seed-report preset)
            cfg = {"preset": "seed-report", "seed": seed, "data": {"seed": seed}}
            out.append((f"seed-report fixed seed={seed}", cfg))
    return out


def run_one(job: tuple[str, dict[str, Any]]) -> Outcome:
    import torch

    from trainer import ListSink, from_dict, train

    torch.set_num_threads(1)
    name, values = job
    cfg = from_dict(values)
    sink = ListSink()
    result = train(cfg, sink)
    ev = result.final_eval
    profile = sink.info.profile if sink.info else None
    explosion = None
    if sink.chunks:
        explosion = saturation_onset(sink.steps, sink.column("logit_spread_max"), cfg.temperature)
    verdict = judge(
        result.status,
        ev.metrics if ev else None,
        ev.pred_hist if ev else [],
        ev.target_hist if ev else [],
        profile.target_onehot_frac if profile else 0.0,
        saturated=explosion is not None,
    )
    warnings = [
        {"kind": w.kind, "severity": w.severity, "step": w.step,
         "raised": int(w.evidence.get("raised_at_step", w.step)), "advice": w.advice.overrides if w.advice else {}}
        for w in result.warnings
    ]  # fmt: skip
    out = Outcome(name, cfg.to_dict(), verdict, warnings, sink.info.steps_per_epoch if sink.info else 1)
    out.explosion_onset = explosion
    if sink.chunks and profile is not None:
        cols = {c: sink.column(c) for c in BATCH_COLUMNS_USED}
        h_t = ev.metrics["target_entropy_mean"] if ev else profile.target_entropy_mean
        cond = batch_conditions(cols, sink.class_hist(), h_t, profile.target_onehot_frac, profile.target_class_share)
        if explosion is not None:
            cond = cond | (cols["logit_spread_max"] / cfg.temperature > SATURATED)
        out.collapse_onset = onset(sink.steps, cond) if verdict.collapsed else None
    return out


def _advice_of(o: Outcome) -> tuple[str, dict[str, Any]] | None:
    for w in sorted(o.warnings, key=lambda w: w["raised"]):
        if w["advice"]:
            return w["kind"], w["advice"]
    return None


def follow_advice(outcomes: list[Outcome], pool: Any, rungs: int = 3) -> None:
    """For every run that is not healthy, apply the first warning's advice, retrain, and repeat (up to `rungs`)."""
    heads = [o for o in outcomes if not o.verdict.healthy]
    active = {id(o): o for o in heads}
    for _ in range(rungs):
        jobs, owners = [], []
        for o in active.values():
            last = o.chain[-1] if o.chain else o
            if last.verdict.healthy or _advice_of(last) is None:
                continue
            kind, overrides = _advice_of(last)
            values = _merge(last.config, overrides)
            jobs.append((f"{o.name} +{kind}:{overrides}", values))
            owners.append(o)
        if not jobs:
            break
        for owner, result in zip(owners, pool.map(run_one, jobs), strict=True):
            owner.chain.append(result)


def _merge(config: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    out = {**config, **{k: v for k, v in overrides.items() if k != "data"}}
    out["data"] = {**config["data"], **overrides.get("data", {})}
    return out


def report(outcomes: list[Outcome]) -> list[str]:
    collapsed = [o for o in outcomes if o.verdict.collapsed]
    uniform = [o for o in outcomes if o.verdict.labels == ["too_uniform"]]
    healthy = [o for o in outcomes if o.verdict.healthy]
    detected = [o for o in collapsed if any(w["kind"] != "too_uniform" for w in o.warnings)]
    uniform_found = [o for o in uniform if any(w["kind"] == "too_uniform" for w in o.warnings)]
    false_alarms = [o for o in healthy if o.warnings]
    lat_epochs, lat_steps, late_runs = [], [], []
    for o in collapsed:
        raised = [w["raised"] for w in o.warnings if w["kind"] != "too_uniform"]
        if o.collapse_onset is not None and raised:
            late = max(0, min(raised) - o.collapse_onset)
            lat_steps.append(late)
            lat_epochs.append(late / o.steps_per_epoch)
            if late > o.steps_per_epoch:
                late_runs.append(f"{o.name} {o.verdict.labels} onset {o.collapse_onset}, warned {min(raised)}")
    explosions = [o for o in outcomes if o.explosion_onset is not None]
    extreme = ("exploding_logits", "nonfinite_loss", "nonfinite_gradients")
    fast = [
        o for o in explosions
        if any(w["severity"] == "critical" and w["kind"] in extreme and w["raised"] - o.explosion_onset <= 10
               for w in o.warnings)
    ]  # fmt: skip
    treated = [o for o in outcomes if not o.verdict.healthy and o.chain]
    cured = [o for o in treated if any(c.verdict.healthy for c in o.chain)]
    over = [o for o in treated if any("too_uniform" in c.verdict.labels for c in o.chain) and o not in cured]

    def pct(a: list, b: list) -> str:
        return f"{len(a)}/{len(b)} = {len(a) / len(b):.0%}" if b else "n/a (none)"

    lines = [
        f"runs: {len(outcomes)}; ground truth: {len(collapsed)} collapsed ("
        + ", ".join(f"{k} {v}" for k, v in sorted(Counter(lbl for o in collapsed for lbl in o.verdict.labels).items()))
        + f"), {len(uniform)} too uniform only, {len(healthy)} healthy",
        f"detection (collapsed runs with a collapse warning): {pct(detected, collapsed)}  [target >= 95%]",
        f"too uniform runs with a too_uniform warning: {pct(uniform_found, uniform)}",
        f"false alarms (healthy runs with any warning): {pct(false_alarms, healthy)}  [target <= 2%]",
        "onset-to-warning latency: "
        + (
            f"median {np.median(lat_steps):.0f} batches ({np.median(lat_epochs):.2f} epochs), "
            f"within one epoch {sum(e <= 1 for e in lat_epochs)}/{len(lat_epochs)}  [target: all]"
            if lat_steps
            else "n/a"
        ),
        f"critical explosions (logits/T > 100 for 5 batches) flagged critical within 10 batches: "
        f"{pct(fast, explosions)}",
        f"advice: runs not healthy turned healthy within 3 rungs: {pct(cured, treated)}  [target >= 80%]; "
        f"ended too uniform: {len(over)}",
        "advice efficacy (warning kind: fields changed, healthy after / tried):",
        *[f"  {k}: {h}/{n}" for k, (h, n) in efficacy_table(outcomes).items()],
    ]
    misses = [o.name + " " + str(o.verdict.labels) for o in collapsed if o not in detected]
    alarms = [o.name + " " + str(sorted({w["kind"] for w in o.warnings})) for o in false_alarms]
    if misses:
        lines.append("missed: " + "; ".join(misses))
    for o in treated:
        if o not in cured:
            steps = " -> ".join(f"{c.name.rsplit(' +', 1)[-1]} {c.verdict.labels}" for c in o.chain)
            lines.append(f"not cured: {o.name} {o.verdict.labels} -> {steps}")
    if alarms:
        lines.append("false alarms: " + "; ".join(alarms))
    if late_runs:
        lines.append("later than one epoch: " + "; ".join(late_runs))
    return lines


def efficacy_table(outcomes: list[Outcome]) -> dict[str, list[int]]:
    """Per advice ("kind:field,field"): [runs healthy right after it, runs it was applied to]."""
    table: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for o in outcomes:
        prev = o
        for c in o.chain:
            kind, overrides = _advice_of(prev)
            entry = table[efficacy_key(kind, overrides)]
            entry[0] += c.verdict.healthy
            entry[1] += 1
            prev = c
    return dict(sorted(table.items()))


def main(argv: list[str] | None = None) -> list[str]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a small subset, not recorded")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--no-table", action="store_true", help="skip the scikit-learn data set")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        table = None
        if not args.no_table:
            try:
                table = digits_table(Path(tmp))
            except ImportError:
                print("scikit-learn is not installed (pip install -e '.[bench]'): the digits scenarios are skipped")
        jobs = scenarios(args.quick, table)
        with mp.get_context("fork").Pool(args.workers) as pool:
            outcomes = pool.map(run_one, jobs)
            follow_advice(outcomes, pool, rungs=1 if args.quick else 3)
    lines = report(outcomes)
    lines.append(f"wall time {time.perf_counter() - started:.0f} s on {args.workers} worker processes")
    print("\n".join(lines))
    if not args.quick:
        # the advice messages quote these figures ("turned 14 of 16 such runs healthy")
        EFFICACY_PATH.write_text(
            json.dumps({"measured": machine_line(), "efficacy": efficacy_table(outcomes)}, indent=1) + "\n"
        )
        append_results(["## Diagnosis: scenario bank (`python -m bench.diagnosis`)", f"Machine: {machine_line()}", "",
                        "```", *lines, "```"])  # fmt: skip
    return lines


if __name__ == "__main__":
    main()
