"""The storage benchmarks' synthetic batches cover every statistic the trainer records."""

import numpy as np

from bench.chunks import _LEVELS, make_chunks
from trainer import BATCH_COLUMNS


def test_every_recorded_statistic_has_a_level_and_no_level_is_stale() -> None:
    assert set(_LEVELS) == set(BATCH_COLUMNS)


def test_the_chunks_hold_every_column_with_rare_nan_and_drift() -> None:
    chunks = make_chunks(4000, 500, seed=1)
    values = np.concatenate([c.values for c in chunks])
    assert [len(c) for c in chunks] == [500] * 8 and values.shape == (4000, len(BATCH_COLUMNS))
    assert 0 < np.isnan(values).mean() < 0.01  # ~1% of rows hold one NaN, in one of the columns
    spread = values[:, BATCH_COLUMNS.index("logit_spread_max")]
    assert np.nanmedian(spread[:20]) < 1.5 and np.nanmedian(spread[-500:]) > 6  # drifts like a training run
