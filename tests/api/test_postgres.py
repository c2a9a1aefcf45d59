"""The same API on PostgreSQL (skipped when the test server is not reachable)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from factories import LOCAL, add_run, health_without_workers, make_chunk, make_warning, write_stats
from fastapi.testclient import TestClient

from app.core.config import Settings
from app.main import create_app
from trainer import BATCH_COLUMNS

pytestmark = pytest.mark.postgres


def test_statistics_round_trip_and_downsampling_on_postgresql(pg_url: str, tmp_path: Path) -> None:
    app = create_app(Settings(database_url=pg_url, data_dir=tmp_path, workers=0))
    engine = app.state.engine
    with TestClient(app, base_url=LOCAL) as client:
        assert client.get("/api/health").json() == health_without_workers("postgresql")
        run_id = add_run(engine)
        chunks = [make_chunk(s, 100) for s in range(0, 5000, 100)]
        chunks[0].values[3, BATCH_COLUMNS.index("loss")] = math.nan
        chunks[0].values[4, BATCH_COLUMNS.index("logit_max")] = math.inf
        chunks[30].values[7, BATCH_COLUMNS.index("logit_max")] = 500.0
        write_stats(engine, run_id, chunks, warnings=(make_warning(3, loss=math.nan),), flush_every=4)
        stats = client.get(f"/api/runs/{run_id}/stats", params={"since_step": -1, "max_points": 0}).json()
        assert stats["steps"] == list(range(5000))
        assert stats["nonfinite"] == {"loss": [[3, "NaN"]], "logit_max": [[4, "Infinity"]]}
        small = client.get(f"/api/runs/{run_id}/stats", params={"max_points": 50, "columns": "logit_max"}).json()
        assert len(small["steps"]) <= 50 and 500.0 in small["columns"]["logit_max"]
        assert client.get(f"/api/runs/{run_id}/stats", params={"since_step": 4997}).json()["steps"] == [4998, 4999]
        assert client.get(f"/api/runs/{run_id}/warnings").json()[0]["evidence"] == {"loss": "NaN"}
        assert (
            client.post("/api/runs", json={"config": {"temperature": 0}}).json()["detail"][0]["loc"][-1]
            == "temperature"
        )
        assert client.delete(f"/api/runs/{run_id}").status_code == 204
        assert client.get(f"/api/runs/{run_id}").status_code == 404
