"""Batch statistics over the API: increments, spike-keeping downsampling, NaN and infinity intact."""

from __future__ import annotations

import math

import numpy as np
import pytest
from factories import add_run, make_chunk, make_eval, make_warning, write_stats
from fastapi.testclient import TestClient
from sqlalchemy import Engine, text

from trainer import BATCH_COLUMNS, BatchChunk

COLS = ("logit_max", "entropy_mean", "loss")


def _concat(chunks: list[BatchChunk]) -> tuple[np.ndarray, np.ndarray]:
    return np.concatenate([c.steps for c in chunks]), np.concatenate([c.values for c in chunks])


def _check_buckets(stats: dict, steps: np.ndarray, values: np.ndarray, since: int = -1) -> None:
    """Every output pair (first, last step) must hold exactly the min and max of the raw rows between
    them, in the order they occur, and the pairs must cover every row after `since` once."""
    points = stats["steps"]
    assert len(points) % 2 == 0, "every bucket here holds several rows, so each gives two points"
    covered = 0
    for i in range(0, len(points), 2):
        first, last = points[i], points[i + 1]
        assert first < last and (i == 0 or first > points[i - 1])
        rows = (steps >= first) & (steps <= last)
        covered += int(rows.sum())
        for name in COLS:
            raw = values[rows, BATCH_COLUMNS.index(name)]
            got = stats["columns"][name][i : i + 2]
            min_first = int(np.argmin(raw)) <= int(np.argmax(raw))
            assert got == ([raw.min(), raw.max()] if min_first else [raw.max(), raw.min()]), (name, first, last)
    assert points[0] == steps[steps > since][0] and points[-1] == steps[-1]
    assert covered == int((steps > since).sum())


def test_downsampling_keeps_a_planted_spike_and_dip(client: TestClient, engine: Engine) -> None:
    run_id = add_run(engine)
    chunks = [make_chunk(3 * start, 50, step_every=3) for start in range(0, 20_000, 50)]
    spike_step, dip_step = 3 * 12_345, 3 * 777
    spike_chunk, dip_chunk = chunks[12_345 // 50], chunks[777 // 50]
    spike_chunk.values[12_345 % 50, BATCH_COLUMNS.index("logit_max")] = 250.0
    dip_chunk.values[777 % 50, BATCH_COLUMNS.index("entropy_mean")] = -30.0
    write_stats(engine, run_id, chunks, flush_every=7)
    # 300 points read blocks of 16 batches, 40 points blocks of 256, 8 points blocks of 4096
    for max_points in (300, 40, 8):
        params = {"max_points": max_points, "columns": ",".join(COLS)}
        stats = client.get(f"/api/runs/{run_id}/stats", params=params).json()
        assert stats["downsampled"] and len(stats["steps"]) <= max_points
        assert all(len(v) == len(stats["steps"]) for v in stats["columns"].values())
        spike_at = stats["columns"]["logit_max"].index(250.0)
        dip_at = stats["columns"]["entropy_mean"].index(-30.0)
        assert stats["steps"][spike_at - spike_at % 2] <= spike_step <= stats["steps"][spike_at - spike_at % 2 + 1]
        assert stats["steps"][dip_at - dip_at % 2] <= dip_step <= stats["steps"][dip_at - dip_at % 2 + 1]
        _check_buckets(stats, *_concat(chunks))
        assert len(stats["class_hist"]) == len(stats["steps"]) and len(stats["class_hist"][0]) == 8


def test_a_downsampled_histogram_is_the_mean_of_its_bucket(client: TestClient, engine: Engine) -> None:
    """Each point's class shares are the mean over its bucket's batches, from blocks and raw rows alike."""
    run_id = add_run(engine)
    chunks = [make_chunk(start, 100) for start in range(0, 10_000, 100)]
    hists = np.concatenate([c.class_hist for c in chunks])
    hists[:] = 0.0
    hists[:6050, 0] = 1.0  # class 0 for the first 6,050 batches (inside a block at every level), then 3
    hists[6050:, 3] = 1.0
    for i, chunk in enumerate(chunks):
        chunk.class_hist[:] = hists[100 * i : 100 * (i + 1)]
    write_stats(engine, run_id, chunks[:-1], flush_every=5)
    write_stats(engine, run_id, chunks[-1:])  # a second sink: its rows have no blocks, read raw
    for max_points in (300, 40, 8):
        stats = client.get(f"/api/runs/{run_id}/stats", params={"max_points": max_points}).json()
        steps = stats["steps"]
        for i in range(0, len(steps), 2):  # a bucket's two points: its first and last step
            lo, hi = steps[i], steps[min(i + 1, len(steps) - 1)]
            expected = hists[lo : hi + 1].mean(axis=0)
            assert stats["class_hist"][i] == pytest.approx(expected.tolist(), abs=1e-6), (max_points, lo, hi)
        assert stats["class_hist"][0][0] == 1.0 and stats["class_hist"][-1][3] == 1.0


def test_downsampling_after_since_step_and_without_summaries(client: TestClient, engine: Engine) -> None:
    run_id = add_run(engine)
    # two sinks: the second joins a run with rows already stored, so its rows have no min/max blocks
    first, second = [make_chunk(0, 1000)], [make_chunk(s, 100) for s in range(1000, 6000, 100)]
    write_stats(engine, run_id, first, flush_every=1)
    write_stats(engine, run_id, second, flush_every=3)
    steps, values = _concat(first + second)
    for since in (-1, 500, 1234):
        stats = client.get(
            f"/api/runs/{run_id}/stats", params={"since_step": since, "max_points": 100, "columns": ",".join(COLS)}
        ).json()
        assert stats["downsampled"] and len(stats["steps"]) <= 100
        _check_buckets(stats, steps, values, since)


def test_since_step_returns_only_newer_rows_in_order(client: TestClient, engine: Engine) -> None:
    run_id = add_run(engine)
    write_stats(engine, run_id, [make_chunk(0, 10)])
    first = client.get(f"/api/runs/{run_id}/stats").json()
    assert first["steps"] == list(range(10)) and first["last_step"] == 9 and not first["downsampled"]
    write_stats(engine, run_id, [make_chunk(10, 5, loss=7.5)])
    more = client.get(f"/api/runs/{run_id}/stats", params={"since_step": first["last_step"]}).json()
    assert more["steps"] == [10, 11, 12, 13, 14] and more["columns"]["loss"] == [7.5] * 5
    none = client.get(f"/api/runs/{run_id}/stats", params={"since_step": 14}).json()
    assert none["steps"] == [] and none["last_step"] == 14


def test_nan_and_infinity_survive_the_round_trip(client: TestClient, engine: Engine) -> None:
    run_id = add_run(engine)
    chunk = make_chunk(0, 40)
    chunk.values[3, BATCH_COLUMNS.index("loss")] = math.nan
    chunk.values[4, BATCH_COLUMNS.index("logit_max")] = math.inf
    chunk.values[5, BATCH_COLUMNS.index("logit_min")] = -math.inf
    write_stats(
        engine,
        run_id,
        [chunk],
        evals=(make_eval(39, kl=math.inf, objective=math.nan),),
        warnings=(make_warning(3, kind="nonfinite_loss", loss=math.nan),),
    )
    with engine.connect() as conn:  # stored as what they are, not as a lossy NULL
        (columns, blob, n), *_ = conn.execute(text('SELECT columns, "values", rows FROM statchunk')).all()
    stored = dict(zip(columns.split(","), np.frombuffer(blob, dtype=np.float64).reshape(-1, n), strict=True))
    assert math.isnan(stored["loss"][3]) and not np.isnan(np.delete(stored["loss"], 3)).any()
    assert stored["logit_max"][4] == math.inf and stored["logit_min"][5] == -math.inf
    stats = client.get(f"/api/runs/{run_id}/stats").json()
    assert stats["columns"]["loss"][3] is None and stats["columns"]["logit_max"][4] is None
    assert stats["nonfinite"] == {"loss": [[3, "NaN"]], "logit_max": [[4, "Infinity"]], "logit_min": [[5, "-Infinity"]]}
    small = client.get(f"/api/runs/{run_id}/stats", params={"max_points": 10, "columns": "loss,logit_max"}).json()
    assert [kind for _, kind in small["nonfinite"]["loss"]] == ["NaN"]
    assert [kind for _, kind in small["nonfinite"]["logit_max"]] == ["Infinity"]
    (record,) = client.get(f"/api/runs/{run_id}/evals").json()
    assert record["metrics"]["kl"] is None and record["nonfinite"] == {"kl": "Infinity", "objective": "NaN"}
    (warning,) = client.get(f"/api/runs/{run_id}/warnings").json()
    assert warning["evidence"] == {"loss": "NaN"}


def test_bad_stats_queries_are_422s_naming_the_parameter(client: TestClient, engine: Engine) -> None:
    run_id = add_run(engine)
    response = client.get(f"/api/runs/{run_id}/stats", params={"columns": "loss,entrpy"})
    assert response.status_code == 422
    (error,) = response.json()["detail"]
    assert error["loc"] == ["query", "columns"] and "entrpy" in error["msg"]
    response = client.get(f"/api/runs/{run_id}/stats", params={"max_points": 1})
    assert response.status_code == 422 and response.json()["detail"][0]["loc"] == ["query", "max_points"]


def test_raw_reads_cut_chunks_at_since_until_and_limit(engine: Engine) -> None:
    """Raw batches come from chunks of up to 1,024: a read starting, ending or stopping inside one
    returns exactly the batches asked for, in order (the event stream catches up this way)."""
    from sqlmodel import Session

    from app.storage import crud

    run_id = add_run(engine)
    chunks = [make_chunk(start, 500) for start in range(0, 3000, 500)]
    write_stats(engine, run_id, chunks)  # one write: merged, then stored as 1,024 + 1,024 + 952
    with engine.connect() as conn:
        sizes = [n for (n,) in conn.execute(text("SELECT rows FROM statchunk ORDER BY first_step"))]
    assert sizes == [1024, 1024, 952]
    _, values = _concat(chunks)
    loss = values[:, BATCH_COLUMNS.index("loss")]
    with Session(engine) as session:
        run = crud.get_run(session=session, run_id=run_id)
        for since, until, limit in ((100, None, 1500), (-1, 2000, None), (1023, 1024, None), (2999, None, 10)):
            stats = crud.get_stats(session=session, run=run, since_step=since, until_step=until, limit=limit)
            hi = 2999 if until is None else until
            expected = list(range(since + 1, hi + 1))[:limit]
            assert stats.steps == expected, (since, until, limit)
            assert stats.columns["loss"] == pytest.approx(loss[expected].tolist())
            assert len(stats.class_hist) == len(expected)
        assert crud.get_stats(session=session, run=run, since_step=1500, max_points=5000).steps == list(
            range(1501, 3000)
        )


def test_chunks_without_class_shares_read_as_nan_beside_those_with_them() -> None:
    """A database converted from the oldest schema can hold chunks whose histograms were never
    recorded: read beside complete ones they are NaN of the same width, not an error."""
    from app.storage.chunks import Batches

    steps = np.arange(5)
    batches = Batches(steps, steps, np.zeros((5, 1)), np.zeros((5, 1), bool), [np.zeros((2, 0)), np.ones((3, 8))])
    hist = batches.hist_array()
    assert hist.shape == (5, 8) and np.isnan(hist[:2]).all() and (hist[2:] == 1).all()


@pytest.mark.parametrize("summaries", [True, False], ids=["from rollup blocks", "from raw rows"])
def test_a_nan_in_a_bucket_keeps_its_spike_and_dip_and_is_still_reported(
    client: TestClient, engine: Engine, summaries: bool
) -> None:
    """A bucket that held a NaN among numbers shows both of its extremes, and names the NaN at its
    last point; a bucket of NaN only is null and named, as before."""
    run_id = add_run(engine)
    chunk = make_chunk(0, 64, loss=1.0)
    loss = chunk.values[:, BATCH_COLUMNS.index("loss")]
    loss[17], loss[18] = math.nan, 50.0  # bucket 16..31: [1, NaN, 50, 1, ...], the min comes first
    loss[33], loss[34], loss[36] = 50.0, math.nan, -7.0  # bucket 32..47: the spike, a NaN, then a dip
    loss[48:] = math.nan  # bucket 48..63: nothing but NaN
    if summaries:
        write_stats(engine, run_id, [chunk], flush_every=1)
    else:  # a sink that joins a run with rows already stored writes no blocks: its rows are read raw
        head, tail = make_chunk(0, 8, loss=1.0), make_chunk(8, 56)
        tail.values[:] = chunk.values[8:]
        write_stats(engine, run_id, [head])
        write_stats(engine, run_id, [tail])
    stats = client.get(f"/api/runs/{run_id}/stats", params={"max_points": 8, "columns": "loss"}).json()
    assert stats["downsampled"] and stats["bucket_size"] == 16
    points = dict(zip(stats["steps"], stats["columns"]["loss"], strict=True))
    assert [points[16], points[31]] == [1.0, 50.0]
    assert [points[32], points[47]] == [50.0, -7.0]
    assert points[48] is None and points[63] is None
    named = {stats["steps"][i]: kind for i, kind in stats["nonfinite"]["loss"]}
    assert named == {31: "NaN", 47: "NaN", 48: "NaN", 63: "NaN"}
