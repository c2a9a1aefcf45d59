"""Collapse-aware pruning: stop a trial whose run raised a critical collapse warning, or whose objective is
clearly behind the other trials' at the same evaluation (an Optuna `PercentilePruner` keeping the best 75%).

The driver (driver.py) records a critical warning on the trial as the system attribute `CRITICAL_ATTR`
before asking, so the pruner reads it from the trial like any other Optuna state.
"""

from __future__ import annotations

import optuna
from optuna.pruners import BasePruner, PercentilePruner
from optuna.trial import FrozenTrial

CRITICAL_ATTR = "collapsewatch:critical"  # "one_hot at step 70": the first critical warning of the trial's run
# "clearly behind": in the worst quarter of the trials that reached the same evaluation, once 3 trials have
# finished and the trial itself has reported 2 evaluations (an untrained network's first look proves little)
BEHIND_PERCENTILE, STARTUP_TRIALS, WARMUP_EVALS = 75.0, 3, 1


class CollapsePruner(BasePruner):
    """Prunes on a critical collapse warning, or when `behind` (a PercentilePruner by default) would."""

    def __init__(self, behind: BasePruner | None = None) -> None:
        self.behind = behind or PercentilePruner(
            BEHIND_PERCENTILE, n_startup_trials=STARTUP_TRIALS, n_warmup_steps=WARMUP_EVALS
        )

    def reason(self, study: optuna.Study, trial: FrozenTrial) -> str | None:
        """Why the trial should stop, or None."""
        critical = trial.system_attrs.get(CRITICAL_ATTR)
        if critical:
            return f"critical collapse warning: {critical}"
        step = trial.last_step
        if step is not None and self.behind.prune(study, trial):
            value = trial.intermediate_values[step]
            return f"objective {value:.4g} at evaluation {step + 1} is behind the other trials"
        return None

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        return self.reason(study, trial) is not None
