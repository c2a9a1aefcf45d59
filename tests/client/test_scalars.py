"""Scalars of the user's own: `log_batch(..., aux=tensor, acc=0.9)` stored beside the statistics, through a
real server and straight into the database, read back per name; bad names refused at once."""

from __future__ import annotations

import math

import httpx
import pytest
import torch
from factories import LOCAL, serve_app
from fastapi import FastAPI
from fastapi.testclient import TestClient

import collapsewatch as cw
from app.core.config import Settings


def _log(run: cw.Run, steps: int) -> None:
    for step in range(steps):
        logits = torch.randn(8, 3)
        aux = torch.tensor(float(step) * 2.0)  # a 0-d tensor, by reference
        extra = {"aux_loss": aux, "acc": step / 100} if step % 2 == 0 else {"aux_loss": aux}
        if step == 7:
            extra["acc"] = math.nan
        run.log_batch(logits, torch.randint(0, 3, (8,)), step=step, **extra)


def test_scalars_reach_the_server_per_name_with_their_own_steps(app: FastAPI) -> None:
    server, thread, url = serve_app(app)
    try:
        run = cw.init(server=url, flush_batches=5)
        _log(run, 23)
        assert run.finish() is True
        got = httpx.get(f"{url}/api/runs/{run.id}/scalars").json()
    finally:
        server.should_exit = True
        thread.join(10)
    assert got["names"] == ["acc", "aux_loss"]
    assert got["series"]["aux_loss"]["steps"] == list(range(23))
    assert got["series"]["aux_loss"]["values"] == [2.0 * s for s in range(23)]
    acc = got["series"]["acc"]
    assert acc["steps"] == [*range(0, 23, 2)[:4], 7, *range(8, 23, 2)]
    assert acc["values"][4] is None and acc["nonfinite"] == 1 and acc["values"][1] == 0.02


def test_database_mode_stores_them_too_and_a_bad_name_is_refused_at_once(settings: Settings, app: FastAPI) -> None:
    run = cw.init(database_url=settings.database_url, flush_batches=4)
    _log(run, 9)
    with pytest.raises(ValueError, match="statistic collapsewatch records itself"):
        run.log_batch(torch.randn(8, 3), torch.randint(0, 3, (8,)), entropy_mean=1.0)
    with pytest.raises(ValueError, match="1-element tensor"):
        run.log_batch(torch.randn(8, 3), torch.randint(0, 3, (8,)), aux_loss=torch.ones(2))
    with pytest.raises(ValueError, match="scalar name '9lives'"):
        run.log_batch(torch.randn(8, 3), torch.randint(0, 3, (8,)), **{"9lives": 1.0})
    assert run.finish() is True
    with TestClient(app, base_url=LOCAL) as client:
        got = client.get(f"/api/runs/{run.id}/scalars").json()
        assert got["series"]["aux_loss"]["steps"] == list(range(9)), "a refused batch stores nothing"
        assert client.get(f"/api/runs/{run.id}").json()["steps"] == 9
