"""Event streams of one run share one database poll, and each still gets every step once, in order,
whether it joined from the start, behind the shared poll, or ahead of it."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable

import pytest
from factories import add_run, make_chunk, make_eval, make_warning
from sqlalchemy import Engine

from app.api.routes.stream import run_events
from app.storage import feed as run_feed
from app.storage.feed import FeedHub
from app.worker.sink import DatabaseSink
from trainer import TrainResult


class _Connected:
    """The one thing run_events asks of the request."""

    async def is_disconnected(self) -> bool:
        return False


async def _follow(hub: FeedHub, run_id: int, since_step: int) -> list[tuple[str, dict]]:
    events = []
    async for text in run_events(_Connected(), hub, run_id, since_step):  # type: ignore[arg-type]
        if text.startswith("event: "):
            head, data = text.strip().split("\n", 1)
            events.append((head.removeprefix("event: "), json.loads(data.removeprefix("data: "))))
    return events


def _steps(events: list[tuple[str, dict]]) -> list[int]:
    return [s for kind, data in events if kind == "stats" for s in data["steps"]]


async def _until(predicate: Callable[[], object], timeout: float = 20.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.02)


async def _scenario(engine: Engine, run_id: int) -> tuple[dict[str, list], int, FeedHub]:
    hub, sink = FeedHub(engine), DatabaseSink(engine, run_id)

    async def write(*records: tuple[str, object]) -> None:
        for kind, record in records:
            getattr(sink, f"on_{kind}")(record)
        await asyncio.to_thread(sink.flush)

    first = asyncio.create_task(_follow(hub, run_id, -1))
    await write(("batches", make_chunk(0, 50)), ("eval", make_eval(49)))
    await _until(lambda: hub.feeds and next(iter(hub.feeds.values())).cursor.since_step == 49)
    feeds_while_three = []
    behind = asyncio.create_task(_follow(hub, run_id, -1))  # joins with the history before the feed's cursor
    await write(("batches", make_chunk(50, 50)), ("warning", make_warning(60)))
    ahead = asyncio.create_task(_follow(hub, run_id, 70))  # e.g. its page read /stats after the last poll
    await asyncio.sleep(0.3)
    feeds_while_three.append(len(hub.feeds))
    await write(("batches", make_chunk(100, 50)))
    sink.on_end(TrainResult("completed", {}, 150, 1, 0.0, None, []))
    streams = {"first": await first, "behind": await behind, "ahead": await ahead}
    return streams, feeds_while_three[0], hub


@pytest.mark.parametrize("logged", [run_feed.MAX_LOGGED, 0], ids=["replayed from the feed", "read again"])
def test_streams_of_one_run_share_a_poll_and_each_get_every_step_once(
    engine: Engine, monkeypatch: pytest.MonkeyPatch, logged: int
) -> None:
    monkeypatch.setattr(run_feed, "MAX_LOGGED", logged)  # 0: joiners read evaluations and warnings themselves
    run_id = add_run(engine)
    streams, feeds_while_three, hub = asyncio.run(_scenario(engine, run_id))

    assert feeds_while_three == 1, "three streams of one run must share one feed"
    assert _steps(streams["first"]) == list(range(150))
    assert _steps(streams["behind"]) == list(range(150))
    assert _steps(streams["ahead"]) == list(range(71, 150))
    for name, events in streams.items():
        kinds = [kind for kind, _ in events]
        assert kinds.count("eval") == 1 and kinds.count("warning") == 1, (name, kinds)
        assert events[-1] == ("status", {"status": "completed", "steps": 150, "error": None}), name
    assert not hub.feeds, "a feed nobody follows any more must stop"


def test_stream_of_a_deleted_run_ends_with_a_deleted_status(engine: Engine) -> None:
    events = asyncio.run(_follow(FeedHub(engine), 12345, -1))
    assert events == [("status", {"status": "deleted", "steps": 0, "error": "Run 12345 not found"})]
