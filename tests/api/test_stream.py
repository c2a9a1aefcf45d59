"""The event stream's ids, resume, paged catch-up and bounded queues: a client that reconnects, joins far
behind or stalls still gets every step, evaluation, warning and status once, in order, holding a page at most."""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any, NamedTuple, TypeVar

import pytest
from factories import add_run, make_chunk, make_eval, make_warning, write_stats
from fastapi.testclient import TestClient
from sqlalchemy import Engine

from app.api.routes.stream import run_events
from app.storage import feed as run_feed
from app.storage.feed import Cursor, FeedHub
from app.worker.sink import DatabaseSink
from trainer import TrainResult

T = TypeVar("T")


class Ev(NamedTuple):
    id: str | None
    kind: str
    data: dict[str, Any]


class _Connected:
    """The one thing run_events asks of the request."""

    async def is_disconnected(self) -> bool:
        return False


def _parse(block: str) -> Ev | None:
    fields = dict(line.split(": ", 1) for line in block.splitlines() if line and not line.startswith(":"))
    return Ev(fields.get("id"), fields["event"], json.loads(fields["data"])) if "event" in fields else None


def _events(body: str) -> list[Ev]:
    return [e for block in body.split("\n\n") if (e := _parse(block))]


class _Reader:
    """Reads a run_events generator one whole event at a time (an event's id line is a chunk of its own)."""

    def __init__(self, texts: AsyncIterator[str]) -> None:
        self.texts, self.buffer, self.rows = texts, "", 0

    async def next(self) -> Ev | None:
        while True:
            if "\n\n" in self.buffer:
                block, self.buffer = self.buffer.split("\n\n", 1)
                if event := _parse(block):
                    self.rows += len(event.data["steps"]) if event.kind == "stats" else 0
                    return event
                continue
            try:
                self.buffer += await anext(self.texts)
            except StopAsyncIteration:
                return None

    async def rest(self) -> list[Ev]:
        out = []
        while event := await self.next():
            out.append(event)
        return out


def _content(events: list[Ev]) -> tuple[list[int], list[int], list[int], list[tuple[str, int]]]:
    """What a client keeps: the steps, the evaluations' steps, the warnings' ids, the statuses, in order."""
    return (
        [s for e in events if e.kind == "stats" for s in e.data["steps"]],
        [e.data["step"] for e in events if e.kind == "eval"],
        [e.data["id"] for e in events if e.kind == "warning"],
        [(e.data["status"], e.data["steps"]) for e in events if e.kind == "status"],
    )


async def _until(predicate: Callable[[], object], timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.01)


class _Writer:
    def __init__(self, engine: Engine, run_id: int) -> None:
        self.sink = DatabaseSink(engine, run_id)

    async def __call__(self, *records: tuple[str, Any]) -> None:
        for kind, record in records:
            getattr(self.sink, f"on_{kind}")(record)
        await asyncio.to_thread(self.sink.flush)

    async def finish(self, steps: int) -> None:
        await asyncio.to_thread(self.sink.on_end, TrainResult("completed", {}, steps, 1, 0.0, None, []))


def _run(scenario: Coroutine[Any, Any, T]) -> T:
    """asyncio.run, failing rather than hanging when a stream never ends."""
    return asyncio.run(asyncio.wait_for(scenario, 30))


def _feed(hub: FeedHub) -> run_feed.RunFeed:
    (feed,) = hub.feeds.values()
    return feed


@pytest.fixture
def fast(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(run_feed, "POLL_SECONDS", 0.01)


# --- ids and resume ---------------------------------------------------------------------------------------
def _finished_run(engine: Engine) -> int:
    run_id = add_run(engine)

    async def write() -> None:
        put = _Writer(engine, run_id)
        await put(("batches", make_chunk(0, 50)), ("eval", make_eval(49)))
        await put(("batches", make_chunk(50, 50)), ("warning", make_warning(60)), ("eval", make_eval(99)))
        await put(("batches", make_chunk(100, 50)), ("warning", make_warning(120)), ("eval", make_eval(149)))
        await put(("eval", make_eval(150)), ("warning", make_warning(150)))
        await put.finish(150)

    _run(write())
    return run_id


@pytest.mark.parametrize("how", ["Last-Event-ID header", "last_event_id query"])
def test_resuming_from_any_event_id_sends_exactly_the_events_after_it(
    client: TestClient, engine: Engine, monkeypatch: pytest.MonkeyPatch, fast: None, how: str
) -> None:
    # small pages, so that statistics, evaluations and warnings each take several events and reads
    monkeypatch.setattr(run_feed, "MAX_ROWS_PER_EVENT", 40)
    monkeypatch.setattr(run_feed, "MAX_RECORDS_PER_READ", 2, raising=False)
    run_id = _finished_run(engine)
    url = f"/api/runs/{run_id}/events"
    full = _events(client.get(url).text)
    assert _content(full) == (list(range(150)), [49, 99, 149, 150], _content(full)[2], [("completed", 150)])
    assert len(_content(full)[2]) == 3 and full[-1].kind == "status", "the final status comes last"
    assert all(e.id for e in full), "every event carries an id"
    assert full[0].id == "39.0.0" and full[-1].id.endswith(".completed.150")

    for i, event in enumerate(full[:-1]):
        params: dict[str, Any] = {"since_step": -1}  # the id wins over since_step
        headers = {"Last-Event-ID": event.id} if how.endswith("header") else {}
        params.update({} if headers else {"last_event_id": event.id})
        resumed = _events(client.get(url, params=params, headers=headers).text)
        assert _content(resumed) == _content(full[i + 1 :]), f"resumed after event {i} ({event.id})"
    # after the final status nothing follows: 204 tells an EventSource to stop reconnecting
    after_end = client.get(url, headers={"Last-Event-ID": full[-1].id})
    assert after_end.status_code == 204 and after_end.text == ""


def test_an_id_that_is_not_an_event_id_is_a_422_naming_where_it_came_from(client: TestClient, engine: Engine) -> None:
    run_id = add_run(engine)
    _run(_write_and_finish(engine, run_id, 5))  # were an id not checked, the stream would end, not hang
    for asked, loc in (
        ({"headers": {"Last-Event-ID": "12"}}, ["header", "Last-Event-ID"]),
        ({"params": {"last_event_id": "1.2.3.paused.4"}}, ["query", "last_event_id"]),
        ({"params": {"last_event_id": "1.-2.3"}}, ["query", "last_event_id"]),
        ({"params": {"last_event_id": f"1.{2**31}.3"}}, ["query", "last_event_id"]),  # no id column holds it
    ):
        response = client.get(f"/api/runs/{run_id}/events", **asked)
        assert response.status_code == 422, asked
        (error,) = response.json()["detail"]
        assert error["loc"] == loc and "STEP.EVAL_ID.WARNING_ID" in error["msg"]
    assert client.get("/api/runs/9999/events", params={"last_event_id": "1.2.3"}).json() == {
        "detail": "Run 9999 not found"
    }


def test_a_client_cut_off_mid_run_resumes_where_it_stopped_while_the_run_goes_on(engine: Engine, fast: None) -> None:
    run_id = add_run(engine)

    async def scenario() -> tuple[list[Ev], list[Ev], list[Ev]]:
        hub, put = FeedHub(engine), _Writer(engine, run_id)
        witness = asyncio.create_task(_Reader(run_events(_Connected(), hub, run_id, -1)).rest())
        await put(("batches", make_chunk(0, 50)), ("eval", make_eval(49)), ("warning", make_warning(40)))
        cut = _Reader(run_events(_Connected(), hub, run_id, -1))
        first: list[Ev] = []
        while not first or first[-1].kind != "eval":  # it goes away just after the first evaluation
            event = await cut.next()
            assert event is not None
            first.append(event)
        await cut.texts.aclose()  # type: ignore[attr-defined]
        await put(("batches", make_chunk(50, 50)), ("eval", make_eval(99)), ("warning", make_warning(60)))
        assert first[-1].id is not None
        resumed = asyncio.create_task(_Reader(run_events(_Connected(), hub, run_id, Cursor.parse(first[-1].id))).rest())
        await asyncio.sleep(0.1)
        await put(("batches", make_chunk(100, 50)), ("eval", make_eval(149)))
        await put.finish(150)
        return first, await resumed, await witness

    first, resumed, witness = _run(scenario())
    steps, evals, warnings, statuses = _content(first + resumed)
    assert steps == list(range(150)) == _content(witness)[0]
    assert evals == [49, 99, 149] == _content(witness)[1]
    assert len(warnings) == len(set(warnings)) == 2 and warnings == _content(witness)[2]
    assert all(a != b for a, b in itertools.pairwise(statuses)), f"a status sent twice: {statuses}"
    assert statuses[-1] == ("completed", 150) and (first + resumed)[-1].kind == "status"


# --- catch-up in pages --------------------------------------------------------------------------------------
def test_a_stream_far_behind_catches_up_a_page_at_a_time(
    engine: Engine, monkeypatch: pytest.MonkeyPatch, fast: None
) -> None:
    """A stream joining a feed 20,000 rows ahead reads them in pages of MAX_ROWS_PER_EVENT and sends each
    before reading the next: never more than one page read and not yet sent (before: all 20,000)."""
    page, total = 1000, 20_000
    monkeypatch.setattr(run_feed, "MAX_ROWS_PER_EVENT", page)
    run_id = add_run(engine)
    reads: list[tuple[int, int]] = []  # per read of statistics: (rows it returned, rows read before and not yet sent)
    read_so_far = 0
    behind: _Reader | None = None
    get_stats = run_feed.crud.get_stats

    def counted(**kwargs: Any) -> Any:
        nonlocal read_so_far
        stats = get_stats(**kwargs)
        reads.append((len(stats.steps), read_so_far - (behind.rows if behind else 0)))
        read_so_far += len(stats.steps)
        return stats

    monkeypatch.setattr(run_feed.crud, "get_stats", counted)

    async def scenario() -> list[int]:
        nonlocal behind
        hub, put = FeedHub(engine), _Writer(engine, run_id)
        await put(("batches", make_chunk(0, total)))
        live = asyncio.create_task(_Reader(run_events(_Connected(), hub, run_id, total - 1)).rest())
        await _until(lambda: hub.feeds and _feed(hub).polled)  # the feed is at the end
        reads.clear()
        behind = _Reader(run_events(_Connected(), hub, run_id, -1))
        steps: list[int] = []
        while len(steps) < total:
            event = await behind.next()
            assert event is not None
            steps += event.data["steps"] if event.kind == "stats" else []
        await behind.texts.aclose()  # type: ignore[attr-defined]
        live.cancel()
        return steps

    assert _run(scenario()) == list(range(total))
    assert len(reads) >= total // page and max(rows for rows, _ in reads) <= page
    held = max(rows + unsent for rows, unsent in reads)
    assert held <= page, f"{held} rows read and not yet sent at once: the catch-up is not paged"


def test_a_page_read_selects_only_the_chunks_holding_it_and_never_cuts_rows(engine: Engine) -> None:
    """A page's query is LIMITed to the chunks that hold it (a client-side cursor, as psycopg's, would
    otherwise buffer the rest of the run for every page); chunks of mixed sizes never lose a row to it."""
    from sqlmodel import Session

    from app.storage import crud
    from app.storage import reads as stats

    run_id = add_run(engine)
    sizes = [100, 7, 1, 300, 100, 1024, 2, 50] * 2
    starts = [sum(sizes[:i]) for i in range(len(sizes))]
    write_stats(engine, run_id, [make_chunk(a, n) for a, n in zip(starts, sizes, strict=True)], flush_every=1)
    total = sum(sizes)
    with Session(engine) as session:
        run = crud.get_run(session=session, run_id=run_id)
        conn = session.connection()
        # after step 150: 108-407 (straddles it, not counted), 408-507, 508-1531: 100 + 1,024 rows >= 250
        assert stats._chunks_holding(conn, run_id, 150, None, 250) == 3
        for since in range(-1, total, 97):
            for limit in (1, 7, 101, 250, 1500):
                for until in (None, since + 400):
                    got = crud.get_stats(session=session, run=run, since_step=since, until_step=until, limit=limit)
                    hi = total - 1 if until is None else min(until, total - 1)
                    assert got.steps == list(range(since + 1, hi + 1))[:limit], (since, limit, until)


# --- bounded queues -------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("max_queued", "max_rows"), [(4, 10**9), (1000, 35)], ids=["bounded in batches", "bounded in rows"]
)
def test_a_stalled_client_is_held_to_a_bounded_queue_and_resynced_without_gaps(
    engine: Engine, monkeypatch: pytest.MonkeyPatch, fast: None, max_queued: int, max_rows: int
) -> None:
    monkeypatch.setattr(run_feed, "MAX_QUEUED", max_queued, raising=False)
    monkeypatch.setattr(run_feed, "MAX_QUEUED_ROWS", max_rows, raising=False)
    run_id = add_run(engine)

    async def scenario() -> tuple[list[Ev], list[int], list[int], int]:
        hub, put = FeedHub(engine), _Writer(engine, run_id)
        await put(("batches", make_chunk(0, 10)))
        stalled = _Reader(run_events(_Connected(), hub, run_id, -1))
        got = [await stalled.next()]  # then it reads nothing while the run writes 30 more polls' worth
        queue = next(iter(_feed(hub).subscribers))
        sizes, rows = [], []
        for i in range(1, 31):
            extra = (
                [("eval", make_eval(10 * i))] if i % 10 == 0 else [("warning", make_warning(10 * i))] if i == 15 else []
            )
            await put(("batches", make_chunk(10 * i, 10)), *extra)
            await _until(lambda i=i: _feed(hub).cursor.since_step == 10 * i + 9)
            sizes.append(queue.qsize())
            rows.append(getattr(queue, "rows", 0))
        resyncs = getattr(_feed(hub), "resyncs", 0)
        await put.finish(310)
        return [e for e in got if e] + await stalled.rest(), sizes, rows, resyncs

    events, sizes, rows, resyncs = _run(scenario())
    assert max(sizes) <= max_queued and max(rows) <= max_rows, f"the stalled stream's queue grew: {sizes}, {rows}"
    assert resyncs >= 1
    steps, evals, warnings, statuses = _content(events)
    assert steps == list(range(310)), "a gap or a repeat after the resync"
    assert evals == [100, 200, 300] and len(warnings) == 1
    assert statuses[-1] == ("completed", 310) and events[-1].kind == "status"


# --- GET /stats without max_points ----------------------------------------------------------------------------
def test_raw_stats_come_in_pages_with_a_next_link(client: TestClient, engine: Engine) -> None:
    run_id = add_run(engine)
    _run(_write_and_finish(engine, run_id, 25))
    url = f"/api/runs/{run_id}/stats"
    everything = client.get(url)  # the default page (10,000 rows) holds a small run whole, as before
    assert everything.json()["steps"] == list(range(25)) and "link" not in everything.headers

    for limit, sizes in ((10, [10, 10, 5]), (5, [5, 5, 5, 5, 5])):
        pages, next_url = [], f"{url}?limit={limit}&columns=loss"
        while next_url:
            response = client.get(next_url)
            assert response.status_code == 200
            pages.append(response.json())
            link = response.headers.get("link")
            next_url = link.split(">")[0].removeprefix("<") if link else None
            if link:
                assert link.endswith('; rel="next"') and f"since_step={pages[-1]['last_step']}" in link
        assert [len(p["steps"]) for p in pages] == sizes, "a full last page that ends the run has no next link"
        assert [s for p in pages for s in p["steps"]] == list(range(25))
        assert all(list(p["columns"]) == ["loss"] for p in pages), "the next link keeps the other parameters"

    response = client.get(url, params={"limit": 0})
    assert response.status_code == 422 and response.json()["detail"][0]["loc"] == ["query", "limit"]
    downsampled = client.get(url, params={"max_points": 10, "limit": 3}).json()  # limit pages raw rows only
    assert downsampled["downsampled"] and len(downsampled["steps"]) <= 10


async def _write_and_finish(engine: Engine, run_id: int, steps: int) -> None:
    put = _Writer(engine, run_id)
    await put(("batches", make_chunk(0, steps)))
    await put.finish(steps)
