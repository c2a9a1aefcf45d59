"""On the built-in data, on the CPU: collapse-prone raises collapse warnings, fixed and healthy do not."""

import pytest

from trainer import from_dict, train

pytestmark = pytest.mark.slow
SEEDS = range(5)


def _warned(preset: str, seed: int) -> list[str]:
    result = train(from_dict({"seed": seed, "device": "cpu", "data": {"seed": seed}}, base=preset))
    assert result.status == "completed", result.error
    return [w.kind for w in result.warnings]


def test_collapse_prone_warns_in_at_least_4_of_5_seeds():
    warned = [bool(_warned("collapse-prone", s)) for s in SEEDS]
    assert sum(warned) >= 4, warned


def test_fixed_is_quiet_in_at_least_4_of_5_seeds():
    quiet = [not _warned("fixed", s) for s in SEEDS]
    assert sum(quiet) >= 4, quiet


def test_healthy_negative_control_is_quiet_in_every_seed():
    assert {s: _warned("healthy", s) for s in SEEDS} == {s: [] for s in SEEDS}
