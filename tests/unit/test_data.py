"""The soft-label generator, the targets' profile, and the user-table loader with its row/column errors."""

from __future__ import annotations

import dataclasses
import math
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from trainer.config import DataSpec
from trainer.data import (
    SoftLabelData,
    TableError,
    annotator_votes,
    bayes_posterior,
    class_prior,
    load_data,
    load_table,
    make_synthetic,
    read_table_summary,
)

# --- the generator ------------------------------------------------------------------------------


def test_same_seed_gives_identical_arrays_and_another_seed_does_not():
    a, b = make_synthetic(DataSpec(seed=5)), make_synthetic(DataSpec(seed=5))
    for name in ("x_train", "t_train", "x_val", "t_val"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    assert not np.array_equal(a.t_train, make_synthetic(DataSpec(seed=6)).t_train)


def test_default_data_shapes_dtypes_and_vote_targets():
    spec = DataSpec()
    data = make_synthetic(spec)
    assert data.x_train.shape == (1600, 16) and data.x_val.shape == (400, 16)
    assert data.t_train.shape == (1600, 8) and data.t_val.shape == (400, 8)
    assert {a.dtype for a in (data.x_train, data.t_train, data.x_val, data.t_val)} == {np.dtype(np.float32)}
    targets = np.concatenate([data.t_train, data.t_val])
    np.testing.assert_allclose(targets.sum(axis=1), 1.0, atol=1e-6)
    votes = targets * spec.n_annotators  # each target is a share of 3 votes
    np.testing.assert_allclose(votes, np.round(votes), atol=1e-5)
    assert data.feature_names == [f"x{j}" for j in range(16)]
    # standardised with the training split's own statistics
    np.testing.assert_allclose(data.x_train.mean(axis=0), 0.0, atol=1e-4)
    np.testing.assert_allclose(data.x_train.std(axis=0), 1.0, atol=1e-4)


def test_defaults_give_soft_but_peaky_targets():
    entropy = make_synthetic(DataSpec()).profile.target_entropy_mean
    assert 0.2 <= entropy <= 0.6


def test_generating_the_default_data_is_fast():
    best = math.inf
    for _ in range(3):
        start = time.perf_counter()
        make_synthetic(DataSpec())
        best = min(best, time.perf_counter() - start)
    assert best < 0.1


def test_profile_equals_a_direct_computation_on_the_training_targets():
    data = make_synthetic(DataSpec(n_samples=300, num_classes=5, n_features=4, val_fraction=0.25, seed=2))
    t = data.t_train.astype(np.float64)
    n = len(t)
    entropies = [-sum(v * math.log(v) for v in row if v > 0) for row in t]
    shares = [0.0] * 5
    for row in t:
        shares[int(np.argmax(row))] += 1 / n
    p = data.profile
    assert (p.num_classes, p.n_train, p.n_val, p.n_features) == (5, 225, 75, 4)
    assert p.target_entropy_mean == pytest.approx(sum(entropies) / n)
    assert p.target_onehot_frac == pytest.approx(sum(max(row) > 0.99 for row in t) / n)
    assert p.target_class_share == pytest.approx(shares)
    assert p.target_mass_share == pytest.approx([sum(row[c] for row in t) / n for c in range(5)])


def test_class_prior_is_geometric_from_one_to_one_over_imbalance():
    prior = class_prior(3, 4.0)  # unnormalised 1, 1/2, 1/4
    np.testing.assert_allclose(prior, np.array([1.0, 0.5, 0.25]) / 1.75)
    np.testing.assert_allclose(class_prior(4, 1.0), 0.25)


def test_imbalance_shrinks_the_rare_classes_share():
    base = DataSpec(n_samples=4000, biased_annotator_rate=0.0, seed=1)
    balanced = make_synthetic(base).profile.target_class_share
    skewed = make_synthetic(dataclasses.replace(base, imbalance=20.0)).profile.target_class_share
    assert skewed[-1] < balanced[-1] / 3
    assert skewed[0] > balanced[0] * 1.5
    assert skewed[0] > skewed[3] > skewed[-1]


def test_biased_annotator_raises_class_zero_share():
    base = DataSpec(n_samples=2000, seed=3)
    fair = make_synthetic(dataclasses.replace(base, biased_annotator_rate=0.0)).profile
    biased = make_synthetic(dataclasses.replace(base, biased_annotator_rate=0.5)).profile
    assert fair.target_mass_share[0] == pytest.approx(1 / 8, abs=0.04)  # balanced prior, fair votes
    assert biased.target_mass_share[0] > fair.target_mass_share[0] + 0.3
    everyone_biased = make_synthetic(dataclasses.replace(base, biased_annotator_rate=1.0))
    assert np.all(everyone_biased.t_train[:, 0] == 1.0)


def test_wider_class_separation_makes_targets_peakier():
    base = DataSpec(biased_annotator_rate=0.0, seed=4)
    close = make_synthetic(dataclasses.replace(base, class_separation=1.0)).profile.target_entropy_mean
    far = make_synthetic(dataclasses.replace(base, class_separation=4.0)).profile.target_entropy_mean
    noisy = make_synthetic(dataclasses.replace(base, class_separation=4.0, cluster_std=4.0)).profile
    assert far < close - 0.2
    assert noisy.target_entropy_mean > far + 0.2  # only separation / cluster_std matters


def test_bayes_posterior_matches_the_gaussian_densities():
    means = np.array([[0.0, 0.0], [2.0, 0.0], [0.0, -1.0]])
    prior = np.array([0.5, 0.3, 0.2])
    x = np.array([[0.5, 0.2], [3.0, -1.0], [-2.0, 4.0]])
    std = 1.5
    post = bayes_posterior(x, means, std, prior)
    for i, xi in enumerate(x):
        joint = [prior[c] * math.exp(-sum((xi - means[c]) ** 2) / (2 * std**2)) for c in range(3)]
        np.testing.assert_allclose(post[i], np.array(joint) / sum(joint), rtol=1e-9)


def test_annotator_votes_follow_the_posterior_plus_the_class_zero_bias():
    posterior = np.tile([0.1, 0.6, 0.3], (200, 1))
    rng = np.random.default_rng(0)
    shares = annotator_votes(posterior, n_annotators=500, biased_rate=0.2, rng=rng).mean(axis=0)
    # a vote is class 0 with probability 0.2, otherwise drawn from the posterior
    np.testing.assert_allclose(shares, [0.2 + 0.8 * 0.1, 0.8 * 0.6, 0.8 * 0.3], atol=0.01)


def test_load_data_builds_the_synthetic_set_the_spec_describes():
    spec = DataSpec(n_samples=100, num_classes=3, n_features=5, seed=9)
    data = load_data(spec)
    assert isinstance(data, SoftLabelData)
    np.testing.assert_array_equal(data.t_train, make_synthetic(spec).t_train)


# --- user tables: good files --------------------------------------------------------------------


def _write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def _raw_rows(data: SoftLabelData) -> tuple[np.ndarray, np.ndarray]:
    """Undo the standardisation with the stored statistics; train and validation rows together."""
    x = np.concatenate([data.x_train, data.x_val]) * data.feature_std + data.feature_mean
    return x, np.concatenate([data.t_train, data.t_val])


def test_csv_with_integer_labels_becomes_one_hot_targets(tmp_path):
    labels = [0, 2, 1, 2, 0, 1, 1, 2, 0, 2]
    text = "row_id,size,label\n" + "".join(f"{i},{i * 0.5},{y}\n" for i, y in enumerate(labels))
    data = load_table(_write(tmp_path, "t.csv", text), val_fraction=0.3, seed=1)
    assert (len(data.x_train), len(data.x_val)) == (7, 3)
    assert data.feature_names == ["row_id", "size"] and data.class_names == ["0", "1", "2"]
    x, t = _raw_rows(data)
    for row, target in zip(x, t, strict=True):
        i = round(row[0])
        assert row[1] == pytest.approx(i * 0.5, abs=1e-5)
        np.testing.assert_array_equal(target, np.eye(3)[labels[i]])


def test_csv_with_class_names_maps_them_in_sorted_order(tmp_path):
    text = "row_id,animal\n0,dog\n1,cat\n2,bird\n3,dog\n"
    data = load_table(_write(tmp_path, "t.csv", text), label_column="animal")
    assert data.class_names == ["bird", "cat", "dog"]
    x, t = _raw_rows(data)
    expected = {0: 2, 1: 1, 2: 0, 3: 2}
    assert {round(row[0]): int(np.argmax(target)) for row, target in zip(x, t, strict=True)} == expected


def test_csv_with_probability_columns_keeps_the_soft_targets(tmp_path):
    text = "row_id,p0,p1,p2\n0,0.2,0.5,0.3\n1,1,0,0\n2,0.1,0.1,0.8\n3,0.3334,0.3333,0.3333\n"
    data = load_table(_write(tmp_path, "t.csv", text))
    expected = {0: [0.2, 0.5, 0.3], 1: [1, 0, 0], 2: [0.1, 0.1, 0.8], 3: [1 / 3, 1 / 3, 1 / 3]}
    x, t = _raw_rows(data)
    for row, target in zip(x, t, strict=True):
        np.testing.assert_allclose(target, expected[round(row[0])], atol=2e-4)
    np.testing.assert_allclose(t.sum(axis=1), 1.0, atol=1e-6)  # 1.0001 renormalised


def test_prefixed_probability_columns_name_the_classes(tmp_path):
    text = "a,b,prob_cat,prob_dog\n1,2,0.9,0.1\n3,4,0.4,0.6\n5,6,0.5,0.5\n"
    summary = read_table_summary(_write(tmp_path, "t.csv", text))
    assert summary == {
        "format": "csv",
        "rows": 3,
        "n_features": 2,
        "num_classes": 2,
        "target_kind": "probabilities",
        "feature_columns": ["a", "b"],
        "target_columns": ["prob_cat", "prob_dog"],
        "class_names": ["cat", "dog"],
        # the mean of each row's entropy in nats, and the mean target of each class
        "target_entropy": pytest.approx(np.mean([_h(0.9), _h(0.4), _h(0.5)])),
        "class_shares": pytest.approx([0.6, 0.4]),
    }


def _h(p: float) -> float:
    """The entropy of the two-class target [p, 1 - p], in nats."""
    return float(-(p * np.log(p) + (1 - p) * np.log(1 - p)))


def test_npz_with_labels_and_with_probabilities(tmp_path):
    x = np.column_stack([np.arange(6.0), np.ones(6)])
    np.savez(tmp_path / "y.npz", x=x, y=np.array([0, 1, 2, 1, 0, 2]))
    data = load_table(tmp_path / "y.npz", seed=3)
    xs, ts = _raw_rows(data)
    assert {round(r[0]): int(np.argmax(t)) for r, t in zip(xs, ts, strict=True)} == {0: 0, 1: 1, 2: 2, 3: 1, 4: 0, 5: 2}
    assert data.feature_names == ["x0", "x1"]
    p = np.column_stack([np.arange(6) / 10, 1 - np.arange(6) / 10])  # row i: [i/10, 1 - i/10]
    np.savez(tmp_path / "p.npz", x=x, p=p)
    summary = read_table_summary(tmp_path / "p.npz")
    assert (summary["target_kind"], summary["target_columns"]) == ("probabilities", ["p"])
    xs, ts = _raw_rows(load_table(tmp_path / "p.npz"))
    for row, target in zip(xs, ts, strict=True):
        np.testing.assert_allclose(target, p[round(row[0])], atol=1e-6)


def test_parquet_with_string_labels(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table({"f1": [0.0, 1.0, 2.0, 3.0], "f2": [1, 2, 3, 4], "label": ["b", "a", "b", "c"]})
    pq.write_table(table, tmp_path / "t.parquet")
    summary = read_table_summary(tmp_path / "t.parquet")
    assert (summary["format"], summary["rows"], summary["class_names"]) == ("parquet", 4, ["a", "b", "c"])
    x, t = _raw_rows(load_table(tmp_path / "t.parquet", num_classes=3))
    assert {round(r[0]): int(np.argmax(v)) for r, v in zip(x, t, strict=True)} == {0: 1, 1: 0, 2: 1, 3: 2}


def test_load_data_reads_the_table_the_spec_names(tmp_path):
    text = "a,label\n" + "".join(f"{i},{i % 3}\n" for i in range(8))
    spec = DataSpec(kind="table", path=str(_write(tmp_path, "t.csv", text)), num_classes=3, val_fraction=0.25)
    data = load_data(spec)
    assert (len(data.x_train), len(data.x_val), data.num_classes) == (6, 2, 3)


# --- user tables: every kind of problem, named by row and column ------------------------------


def _issues(path: Path, **kwargs) -> list[tuple[int | None, str | None]]:
    with pytest.raises(TableError) as caught:
        load_table(path, **kwargs)
    return [(issue.row, issue.column) for issue in caught.value.issues]


def _csv_issues(tmp_path: Path, text: str, **kwargs) -> list[tuple[int | None, str | None]]:
    return _issues(_write(tmp_path, "t.csv", text), **kwargs)


def test_empty_file_and_header_without_data(tmp_path):
    with pytest.raises(TableError, match="empty"):
        load_table(_write(tmp_path, "e.csv", ""))
    with pytest.raises(TableError, match="no data rows"):
        load_table(_write(tmp_path, "h.csv", "a,b,label\n"))


def test_missing_header_is_reported_on_row_zero(tmp_path):
    with pytest.raises(TableError, match="header") as caught:
        load_table(_write(tmp_path, "t.csv", "1,2,0\n3,4,1\n"))
    assert [(i.row, i.column) for i in caught.value.issues] == [(0, None)]


def test_non_numeric_and_empty_cells_name_row_and_column(tmp_path):
    text = "a,b,label\n1,2,0\n3,abc,1\n4,,0\n"
    assert _csv_issues(tmp_path, text) == [(2, "b"), (3, "b")]
    with pytest.raises(TableError, match="row 2, column b: 'abc' is not a number"):
        load_table(tmp_path / "t.csv")


def test_nan_and_infinite_features_are_rejected(tmp_path):
    assert _csv_issues(tmp_path, "a,b,label\n1,nan,0\n2,3,1\ninf,4,0\n") == [(1, "b"), (3, "a")]


def test_negative_probability_names_row_and_column(tmp_path):
    assert _csv_issues(tmp_path, "a,p0,p1\n1,0.5,0.5\n2,-0.2,1.2\n") == [(2, "p0")]


def test_probabilities_not_summing_to_one_name_the_row(tmp_path):
    text = "a,p0,p1\n1,0.5,0.5\n2,0.5,0.49\n3,0.5,0.5001\n"  # row 2 is off by 0.01, row 3 within 1e-3
    with pytest.raises(TableError, match=r"row 2: probabilities sum to 0\.99") as caught:
        load_table(_write(tmp_path, "t.csv", text))
    assert [(i.row, i.column) for i in caught.value.issues] == [(2, None)]


def test_wrong_class_count(tmp_path):
    assert _csv_issues(tmp_path, "a,p0,p1,p2\n1,0.2,0.3,0.5\n2,1,0,0\n", num_classes=8) == [(0, None)]
    assert _csv_issues(tmp_path, "a,label\n1,cat\n2,dog\n", num_classes=3) == [(0, "label")]
    with pytest.raises(TableError, match="at least 2 classes"):
        load_table(_write(tmp_path, "one.csv", "a,label\n1,cat\n2,cat\n"))


def test_labels_out_of_range_negative_or_fractional(tmp_path):
    text = "a,label\n1,0\n2,3\n3,-1\n4,1.5\n5,2\n"
    assert _csv_issues(tmp_path, text, num_classes=3) == [(2, "label"), (3, "label"), (4, "label")]
    with pytest.raises(TableError, match=r"label 3 is out of range 0\.\.2"):
        load_table(tmp_path / "t.csv", num_classes=3)
    # without num_classes a typo such as 99999 must not silently make 100000 classes
    assert _csv_issues(tmp_path, "a,label\n1,0\n2,99999\n3,1\n") == [(2, "label")]


def test_named_label_column_must_exist(tmp_path):
    assert _csv_issues(tmp_path, "a,b\n1,0\n2,1\n", label_column="target") == [(0, "target")]


def test_table_without_feature_columns(tmp_path):
    with pytest.raises(TableError, match="no feature columns"):
        load_table(_write(tmp_path, "t.csv", "p0,p1\n0.5,0.5\n0.1,0.9\n"))


def test_table_without_target_columns_or_with_both_kinds(tmp_path):
    with pytest.raises(TableError, match="no target columns"):
        load_table(_write(tmp_path, "t.csv", "a,b\n1,2\n3,4\n"))
    assert _csv_issues(tmp_path, "a,label,p0,p1\n1,0,0.5,0.5\n2,1,0.1,0.9\n") == [(0, "label")]


def test_ragged_rows_name_the_row(tmp_path):
    with pytest.raises(TableError, match="row 3: has 2 cells but the header has 3") as caught:
        load_table(_write(tmp_path, "t.csv", "a,b,label\n1,2,0\n3,4,1\n5,6\n7,8,0,9\n"))
    assert [(i.row, i.column) for i in caught.value.issues] == [(3, None), (4, None)]


def test_many_problems_are_collected_and_capped(tmp_path):
    text = "a,label\n" + "".join(f"x{i},0\n" for i in range(30)) + "1,1\n"
    with pytest.raises(TableError) as caught:
        load_table(_write(tmp_path, "t.csv", text))
    error = caught.value
    assert isinstance(error, ValueError)
    assert [i.row for i in error.issues] == list(range(1, 21)) and error.more == 10
    assert "30 problems" in str(error) and "and 10 more" in str(error)


def test_corrupt_parquet_and_npz_give_a_table_error(tmp_path):
    (tmp_path / "bad.parquet").write_bytes(b"PAR1" + b"\x00garbage" * 20 + b"PAR1")
    (tmp_path / "bad.npz").write_bytes(b"PK\x03\x04" + b"\x01broken" * 20)
    good = tmp_path / "good.npz"
    np.savez_compressed(good, x=np.ones((50, 3)), y=np.zeros(50, dtype=int))
    (tmp_path / "cut.npz").write_bytes(good.read_bytes()[:-40])  # truncated download
    for name in ("bad.parquet", "bad.npz", "cut.npz"):
        with pytest.raises(TableError, match="not a readable") as caught:
            load_table(tmp_path / name)
        assert caught.value.issues[0].row is None


def test_npz_problems_name_the_array(tmp_path):
    np.savez(tmp_path / "nox.npz", features=np.ones((3, 2)), y=np.array([0, 1, 0]))
    assert _issues(tmp_path / "nox.npz") == [(None, "x")]
    x = np.ones((4, 2))
    x[2, 1] = np.nan
    np.savez(tmp_path / "nan.npz", x=x, y=np.array([0, 1, 0, 1]))
    assert _issues(tmp_path / "nan.npz") == [(3, "x1")]
    np.savez(tmp_path / "p.npz", x=np.ones((2, 2)), p=np.array([[0.5, 0.6], [0.5, 0.5]]))
    assert _issues(tmp_path / "p.npz") == [(1, None)]


def test_missing_pyarrow_gives_a_clear_table_error(tmp_path, monkeypatch):
    (tmp_path / "t.parquet").write_bytes(b"PAR1")
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)  # makes `import pyarrow.parquet` fail
    with pytest.raises(TableError, match="needs the pyarrow package"):
        load_table(tmp_path / "t.parquet")


def test_summary_validates_like_the_loader(tmp_path):
    with pytest.raises(TableError, match="row 1, column a"):
        read_table_summary(_write(tmp_path, "t.csv", "a,label\n?,0\n1,1\n"))
