"""The collapse detector: reads per-batch statistics and evaluation passes and raises warnings with advice.

Thresholds are relative to the targets' own statistics. Logit limits (±10 warning, ±100 critical) apply to
logits as the softmax sees them: (raw - the sample's own mean) / T, as a healthy run at T=4 has raw logits of ±15.
A warning's step is the onset of its condition, even when that lies in the warm-up; an extreme value
(non-finite, logits past the critical limit) fires during the warm-up too.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

import numpy as np

from trainer.advice import advise
from trainer.config import TrainConfig
from trainer.detector_rules import (
    RULES,
    Rule,
    Signals,
    compute_signals,
    conditions,
    deployed_view,
    describe,
    describe_deployed,
)
from trainer.records import BatchChunk, CollapseWarning, DataProfile, EvalRecord

# The warm-up lets an untrained model move off its initial predictions: half an epoch, within these bounds,
# so a collapse from the first batch is still raised within the first epoch.
WARMUP_MIN_STEPS, WARMUP_MAX_STEPS = 10, 50
MIN_PERSIST = 5  # batch rules persist a quarter of an epoch, at least this many rows and at most the rule's
GRAD_HISTORY = 512  # recent healthy grad norms the running median is taken over
# val_loss_jump: a pass counts as a jump above JUMP_RATIO x best (and JUMP_ABS above it); two in a
# row raise it, one above BIG_JUMP_RATIO x best raises it at once; it clears below CLEAR_RATIO x best.
JUMP_RATIO, BIG_JUMP_RATIO, CRITICAL_JUMP_RATIO, CLEAR_RATIO, JUMP_ABS = 1.5, 3.0, 10.0, 1.2, 0.1


@dataclass
class _Event:
    row: int
    rule: Rule
    level: int
    start: int  # first step of the persistent run
    length: int  # rows in that run when it fired
    escalation: bool = False  # a raised warning turning critical


def _run_lengths(mask: np.ndarray, carry: np.ndarray) -> np.ndarray:
    """Consecutive True rows ending at each row (last axis); a leading run continues `carry` from the last chunk."""
    idx = np.arange(mask.shape[-1])
    last_false = np.maximum.accumulate(np.where(mask, -1, idx), axis=-1)
    return idx - last_false + np.where(last_false < 0, carry[..., None], 0)


def _first(runs: np.ndarray, need: int, pos: int) -> int | None:
    hits = np.flatnonzero(runs[pos:] >= need)
    return int(hits[0]) + pos if hits.size else None


class CollapseDetector:
    """Watches one run. Batch rules need a warm-up, persistence and hysteresis; non-finite values fire at once."""

    def __init__(self, config: TrainConfig, profile: DataProfile, steps_per_epoch: int) -> None:
        if steps_per_epoch < 1:
            raise ValueError(f"steps_per_epoch must be at least 1, got {steps_per_epoch}")
        if len(profile.target_class_share) != profile.num_classes:
            raise ValueError(
                f"profile.target_class_share has {len(profile.target_class_share)} entries "
                f"for {profile.num_classes} classes"
            )
        self.config, self.profile, self.steps_per_epoch = config, profile, steps_per_epoch
        self.warmup_steps = min(max(steps_per_epoch // 2, WARMUP_MIN_STEPS), WARMUP_MAX_STEPS)
        # predictions start uniform by construction: give the model longer to move off it
        self.uniform_warmup_steps = 2 * self.warmup_steps
        # per rule (R of them): 0 idle, 1 warning raised, 2 critical raised; back to 0 once cleared
        self._level = np.zeros(len(RULES), dtype=np.int64)
        # rows each rule needs in a run of its raise / critical / clear condition, and its warm-up
        rows_per_epoch = max(1, steps_per_epoch // max(1, config.stats_interval))
        short = max(MIN_PERSIST, rows_per_epoch // 4)
        self._need = np.array([(min(r.persist, short), min(r.crit_persist, short), r.clear) for r in RULES]).T
        warm = {"batch": self.warmup_steps, "uniform": self.uniform_warmup_steps, "none": -1}
        self._warm = np.array([warm[r.warmup] for r in RULES])  # (R,)
        self._crit_warm = np.array([-1 if r.critical_in_warmup else w for r, w in zip(RULES, self._warm, strict=True)])
        # the open runs of the three conditions at the end of the last chunk (length and first step), and of
        # the raise condition regardless of warm-up (row 3), whose first step is a warning's onset
        self._carry = np.zeros((4, len(RULES)), dtype=np.int64)
        self._carry_start = np.full((4, len(RULES)), -1, dtype=np.int64)
        self._grad_history: deque[float] = deque(maxlen=GRAD_HISTORY)
        self._warnings: list[CollapseWarning] = []
        self._best_val = math.inf
        self._jump_streak, self._jump_start, self._jump_level = 0, -1, 0
        self._deploy_level = 0

    @property
    def warnings(self) -> list[CollapseWarning]:
        """Every warning raised so far, in the order raised."""
        return list(self._warnings)

    # --- batches --------------------------------------------------------------------------------
    def observe_batches(self, chunk: BatchChunk) -> list[CollapseWarning]:
        """Read one chunk of batch rows; return the warnings it newly raises."""
        if len(chunk) == 0:
            return []
        self._check_chunk(chunk)
        sig = compute_signals(chunk, self.config, self.profile, self._grad_reference(chunk))
        masks = conditions(sig, self.config, self.profile)
        m = np.array([masks[rule.kind] for rule in RULES]).transpose(1, 0, 2)  # (3, R, N): raise, critical, clear
        onset = m[0].copy()
        m[1] &= onset & (sig.steps >= self._crit_warm[:, None])
        m[0] &= sig.steps >= self._warm[:, None]
        m[2] &= ~onset
        runs = _run_lengths(np.concatenate([m, onset[None]]), self._carry)  # (4, R, N)
        reach = (runs[:3] >= self._need[:, :, None]).any(axis=2)  # (3, R): could the condition fire in this chunk?
        level = self._level
        busy = np.where(level == 0, reach[0] | reach[1], np.where(level == 1, reach[1] | reach[2], reach[2]))
        events = [e for r in np.flatnonzero(busy) for e in self._advance(int(r), runs[:, r], sig.steps)]
        self._carry_over(runs, sig.steps)
        self._remember_grads(sig, masks["exploding_gradients"][0])
        events.sort(key=lambda e: e.row)
        new = [self._warning(e, sig) for e in events]
        self._warnings.extend(new)
        return new

    def _check_chunk(self, chunk: BatchChunk) -> None:
        n, c = len(chunk), self.profile.num_classes
        if chunk.values.shape != (n, len(chunk.columns)):
            raise ValueError(f"chunk values have shape {chunk.values.shape}, expected ({n}, {len(chunk.columns)})")
        if chunk.class_hist.shape != (n, c):
            raise ValueError(f"chunk class_hist has shape {chunk.class_hist.shape}, expected ({n}, {c}) classes")

    def _advance(self, r: int, runs: np.ndarray, steps: np.ndarray) -> list[_Event]:
        """Step rule r's state machine over a chunk, jumping from event to event rather than row by row."""
        rule, (need_on, need_crit, need_clear) = RULES[r], self._need[:, r]

        def start_of(which: int, row: int) -> int:
            first = row - int(runs[which, row]) + 1
            return int(steps[first]) if first >= 0 else int(self._carry_start[which, r])

        events, pos, n = [], 0, len(steps)
        while pos < n:
            level = int(self._level[r])
            fire_crit = _first(runs[1], need_crit, pos) if level < 2 else None
            if level == 0:
                fire_on = _first(runs[0], need_on, pos)
                found = [i for i in (fire_on, fire_crit) if i is not None]
                if not found:
                    break
                row = min(found)
                # already extreme for long enough: raise it critical, not twice
                level = 2 if runs[1, row] >= need_crit else 1
                events.append(_Event(row, rule, level, start_of(3, row), int(runs[3, row])))
            else:
                cleared = _first(runs[2], need_clear, pos)
                if fire_crit is not None and (cleared is None or fire_crit < cleared):
                    row, level = fire_crit, 2
                    events.append(_Event(row, rule, 2, start_of(1, row), int(runs[1, row]), escalation=True))
                elif cleared is not None:
                    row, level = cleared, 0
                else:
                    break
            self._level[r], pos = level, row + 1
        return events

    def _carry_over(self, runs: np.ndarray, steps: np.ndarray) -> None:
        n, last = len(steps), runs[:, :, -1]  # (4, R)
        opened_here = steps[np.clip(n - last, 0, n - 1)]
        self._carry_start = np.where(last == 0, -1, np.where(last <= n, opened_here, self._carry_start))
        self._carry = last

    def _grad_reference(self, chunk: BatchChunk) -> float:
        """Median of recent healthy grad norms; the chunk's own rows help only until the history is long enough."""
        history = np.fromiter(self._grad_history, dtype=float, count=len(self._grad_history))
        if len(history) < 20:
            g = chunk.column("grad_norm")
            history = np.concatenate([history, g[np.isfinite(g)]])
        return float(np.median(history)) if history.size else math.nan

    def _remember_grads(self, sig: Signals, exploding: np.ndarray) -> None:
        # exploding rows stay out of the history, so a long explosion cannot raise its own reference
        keep = np.isfinite(sig.grad) & ~exploding & ~(sig.grad_ratio > 10.0)
        self._grad_history.extend(sig.grad[keep].tolist())

    def _warning(self, event: _Event, sig: Signals) -> CollapseWarning:
        message, evidence = describe(event.rule.kind, event.row, sig, self.config, self.profile)
        evidence["batches"] = float(event.length)
        evidence["raised_at_step"] = float(sig.steps[event.row])
        prefix = "Now critical: " if event.escalation else ""
        return CollapseWarning(
            kind=event.rule.kind,
            severity="critical" if event.level == 2 else "warning",
            step=event.start,
            message=f"{prefix}{message} (since step {event.start}).",
            evidence=evidence,
            advice=advise(event.rule.kind, self.config),
        )

    # --- evaluation passes ----------------------------------------------------------------------
    def observe_eval(self, record: EvalRecord) -> list[CollapseWarning]:
        """Read one validation pass; return the warnings it raises (val_loss_jump, deployed_collapse)."""
        if "objective" not in record.metrics:
            raise ValueError(f"the evaluation at step {record.step} has no 'objective' metric")
        new = self._val_loss_jump(record) + self._deployed(record)
        self._warnings.extend(new)
        return new

    def _deployed(self, record: EvalRecord) -> list[CollapseWarning]:
        level, cleared = deployed_view(record.metrics, self.config, self.profile)
        if cleared:
            self._deploy_level = 0
        if level <= self._deploy_level:
            return []
        escalation = self._deploy_level > 0
        self._deploy_level = level
        message, evidence = describe_deployed(record.metrics, self.config, self.profile)
        evidence["raised_at_step"] = float(record.step)
        return [
            CollapseWarning(
                kind="deployed_collapse",
                severity="critical" if level == 2 else "warning",
                step=record.step,
                message=f"{'Now critical: ' if escalation else ''}{message} (evaluation at step {record.step}).",
                evidence=evidence,
                advice=advise("deployed_collapse", self.config),
            )
        ]

    def _val_loss_jump(self, record: EvalRecord) -> list[CollapseWarning]:
        value = float(record.metrics["objective"])
        best = self._best_val
        if math.isfinite(value):
            self._best_val = min(best, value)
        if not math.isfinite(best):
            return []  # the first pass sets the reference
        finite = math.isfinite(value)
        ratio = value / best if finite and best > 0 else math.inf
        jumped = not finite or (value > JUMP_RATIO * best and value > best + JUMP_ABS)
        critical = not finite or ratio > CRITICAL_JUMP_RATIO
        if self._jump_level:
            if finite and (value < CLEAR_RATIO * best or value < best + JUMP_ABS / 2):
                self._jump_level, self._jump_streak = 0, 0  # cleared: a later jump is raised again
                return []
            if self._jump_level == 2 or not critical:
                return []
            self._jump_level = 2
            return self._jump_warning(record, value, best, ratio, escalation=True)
        if not jumped:
            self._jump_streak = 0
            return []
        self._jump_streak += 1
        self._jump_start = record.step if self._jump_streak == 1 else self._jump_start
        big = not finite or value > BIG_JUMP_RATIO * best
        if self._jump_streak < 2 and not big:
            return []
        self._jump_level = 2 if critical else 1
        return self._jump_warning(record, value, best, ratio, escalation=False)

    def _jump_warning(
        self, record: EvalRecord, value: float, best: float, ratio: float, *, escalation: bool
    ) -> list[CollapseWarning]:
        prefix = "Now critical: " if escalation else ""
        warning = CollapseWarning(
            kind="val_loss_jump",
            severity="critical" if self._jump_level == 2 else "warning",
            step=self._jump_start,
            message=f"{prefix}The validation objective rose to {value:.4g} at step {record.step}, {ratio:.1f}× the "
            f"best so far ({best:.4g}), over {self._jump_streak} pass(es).",
            evidence={
                "objective": value, "best": best, "ratio": ratio, "passes": float(self._jump_streak),
                "raised_at_step": float(record.step),
            },
            advice=advise("val_loss_jump", self.config),
        )  # fmt: skip
        return [warning]
