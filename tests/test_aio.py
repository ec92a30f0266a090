"""Blocking engine generators consumed from asyncio: order, errors, time limits, stopping."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from voice_agent.aio import call_in_thread, iterate_in_thread
from voice_agent.errors import EngineTimeout

MakeIterator = Callable[[threading.Event], Iterator[int]]


@pytest.fixture
def executor() -> Iterator[ThreadPoolExecutor]:
    pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="test-aio")
    yield pool
    pool.shutdown(wait=False, cancel_futures=True)


async def collect(
    make: MakeIterator,
    executor: ThreadPoolExecutor,
    *,
    first: float = 2.0,
    next_: float = 2.0,
    max_pending: int = 64,
) -> list[int]:
    items: list[int] = []
    generator = iterate_in_thread(make, executor, first_timeout_s=first,
                                  next_timeout_s=next_, what="engine", max_pending=max_pending)
    async with contextlib.aclosing(generator) as stream:
        async for item in stream:
            items.append(item)
    return items


@pytest.mark.parametrize("max_pending", [1, 4, 64])
async def test_items_arrive_in_order(executor: ThreadPoolExecutor, max_pending: int) -> None:
    def make(stop: threading.Event) -> Iterator[int]:
        yield from range(300)

    assert await collect(make, executor, max_pending=max_pending) == list(range(300))


async def test_empty_iterator(executor: ThreadPoolExecutor) -> None:
    assert await collect(lambda stop: iter([]), executor) == []


async def test_runs_without_an_executor() -> None:
    assert await collect(lambda stop: iter([1, 2]), None) == [1, 2]  # type: ignore[arg-type]


async def test_worker_exception_is_re_raised_after_earlier_items(
    executor: ThreadPoolExecutor,
) -> None:
    received: list[int] = []

    def make(stop: threading.Event) -> Iterator[int]:
        yield 1
        yield 2
        raise ValueError("engine exploded")

    generator = iterate_in_thread(make, executor, first_timeout_s=2, next_timeout_s=2,
                                  what="engine")
    with pytest.raises(ValueError, match="engine exploded"):
        async with contextlib.aclosing(generator) as stream:
            async for item in stream:
                received.append(item)
    assert received == [1, 2]


async def test_exception_before_the_first_item(executor: ThreadPoolExecutor) -> None:
    def make(stop: threading.Event) -> Iterator[int]:
        raise RuntimeError("cannot start")

    with pytest.raises(RuntimeError, match="cannot start"):
        await collect(make, executor)


async def test_slow_first_item_times_out(executor: ThreadPoolExecutor) -> None:
    stops: list[threading.Event] = []

    def make(stop: threading.Event) -> Iterator[int]:
        stops.append(stop)
        stop.wait(5.0)  # an engine that takes too long to answer
        yield 1

    started = time.monotonic()
    with pytest.raises(EngineTimeout) as info:
        await collect(make, executor, first=0.2, next_=5.0)
    assert time.monotonic() - started < 2.0
    assert info.value.code == "engine_timeout"
    assert info.value.transient
    assert "engine" in info.value.message and "first output" in info.value.message
    assert stops[0].is_set()  # the worker is told to stop


async def test_stall_between_items_times_out(executor: ThreadPoolExecutor) -> None:
    received: list[int] = []

    def make(stop: threading.Event) -> Iterator[int]:
        yield 1
        stop.wait(5.0)  # stalls after the first token
        yield 2

    generator = iterate_in_thread(make, executor, first_timeout_s=0.3, next_timeout_s=0.3,
                                  what="llm")
    with pytest.raises(EngineTimeout) as info:
        async with contextlib.aclosing(generator) as stream:
            async for item in stream:
                received.append(item)
    assert received == [1]
    assert "llm: no next output" in info.value.message


async def test_slow_but_steady_stream_does_not_time_out(executor: ThreadPoolExecutor) -> None:
    def make(stop: threading.Event) -> Iterator[int]:
        for i in range(5):
            time.sleep(0.05)
            yield i

    assert await collect(make, executor, first=0.5, next_=0.5) == list(range(5))


async def test_breaking_out_early_stops_the_worker(executor: ThreadPoolExecutor) -> None:
    stops: list[threading.Event] = []
    finished = threading.Event()
    produced: list[int] = []

    def make(stop: threading.Event) -> Iterator[int]:
        stops.append(stop)
        try:
            i = 0
            while not stop.is_set():
                produced.append(i)
                yield i
                i += 1
                time.sleep(0.001)
        finally:
            finished.set()

    received: list[int] = []
    generator = iterate_in_thread(make, executor, first_timeout_s=2, next_timeout_s=2,
                                  what="engine", max_pending=4)
    async with contextlib.aclosing(generator) as stream:
        async for item in stream:
            received.append(item)
            if len(received) == 3:
                break
    assert received == [0, 1, 2]
    assert stops[0].is_set()
    assert await asyncio.to_thread(finished.wait, 2.0), "the worker did not stop"
    # Bounded hand-off: the worker never ran far ahead of the consumer.
    assert len(produced) <= 3 + 4 + 2


async def test_cancelling_the_consumer_stops_the_worker(executor: ThreadPoolExecutor) -> None:
    stops: list[threading.Event] = []
    first_item = asyncio.Event()

    def make(stop: threading.Event) -> Iterator[int]:
        stops.append(stop)
        while not stop.is_set():
            yield 0
            time.sleep(0.01)

    async def consume() -> None:
        generator = iterate_in_thread(make, executor, first_timeout_s=2, next_timeout_s=2,
                                      what="engine")
        async with contextlib.aclosing(generator) as stream:
            async for _ in stream:
                first_item.set()

    task = asyncio.create_task(consume())
    await asyncio.wait_for(first_item.wait(), 2.0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert stops[0].is_set()


async def test_slow_consumer_holds_the_worker_back(executor: ThreadPoolExecutor) -> None:
    produced: list[int] = []

    def make(stop: threading.Event) -> Iterator[int]:
        for i in range(100):
            produced.append(i)
            yield i

    generator = iterate_in_thread(make, executor, first_timeout_s=2, next_timeout_s=2,
                                  what="engine", max_pending=2)
    async with contextlib.aclosing(generator) as stream:
        assert await anext(stream) == 0
        await asyncio.sleep(0.3)  # a consumer that is behind
        assert len(produced) <= 2 + 2
        rest = [item async for item in stream]
    assert rest == list(range(1, 100))


async def test_call_in_thread_returns_the_result(executor: ThreadPoolExecutor) -> None:
    caller = threading.get_ident()
    result = await call_in_thread(lambda: (threading.get_ident(), 42), executor,
                                  timeout_s=2, what="asr")
    assert result[1] == 42
    assert result[0] != caller  # it ran in a worker thread, off the event loop


async def test_call_in_thread_times_out(executor: ThreadPoolExecutor) -> None:
    release = threading.Event()
    started = time.monotonic()
    with pytest.raises(EngineTimeout) as info:
        await call_in_thread(lambda: release.wait(5.0), executor, timeout_s=0.2, what="tts")
    release.set()
    assert time.monotonic() - started < 2.0
    assert info.value.code == "engine_timeout"
    assert "tts" in info.value.message


async def test_call_in_thread_re_raises(executor: ThreadPoolExecutor) -> None:
    def fail() -> None:
        raise KeyError("missing")

    with pytest.raises(KeyError, match="missing"):
        await call_in_thread(fail, executor, timeout_s=2, what="asr")


async def test_on_done_comes_once_the_engine_really_finished(
    executor: ThreadPoolExecutor,
) -> None:
    """A consumer that times out leaves; the engine call ends later, and only then is the
    engine free (``on_done``): an engine queue relies on this to never overlap two calls."""
    release = threading.Event()
    events: list[str] = []
    done = threading.Event()

    def make(stop: threading.Event) -> Iterator[int]:
        try:
            release.wait(5.0)  # a native call that does not look at ``stop``
            yield 1
        finally:
            events.append("engine cleaned up")

    def on_done() -> None:
        events.append("done")
        done.set()

    generator = iterate_in_thread(make, executor, first_timeout_s=0.2, next_timeout_s=1,
                                  what="engine", on_done=on_done)
    with pytest.raises(EngineTimeout):
        async with contextlib.aclosing(generator) as stream:
            async for _ in stream:
                pass
    await asyncio.sleep(0.1)
    assert events == []  # the consumer is gone, the engine is not done
    release.set()
    assert await asyncio.to_thread(done.wait, 2.0)
    await asyncio.sleep(0.05)
    assert events == ["engine cleaned up", "done"]


@pytest.mark.parametrize("stop_after", [None, 1])
async def test_on_done_after_a_normal_end_or_an_early_break(
    executor: ThreadPoolExecutor, stop_after: int | None
) -> None:
    events: list[str] = []
    done = threading.Event()

    def make(stop: threading.Event) -> Iterator[int]:
        try:
            yield from range(3)
        finally:
            events.append("closed")

    def on_done() -> None:
        events.append("done")
        done.set()

    generator = iterate_in_thread(make, executor, first_timeout_s=2, next_timeout_s=2,
                                  what="engine", on_done=on_done, max_pending=1)
    async with contextlib.aclosing(generator) as stream:
        async for item in stream:
            if item == stop_after:
                break
    assert await asyncio.to_thread(done.wait, 2.0)
    assert events == ["closed", "done"]


async def test_a_finished_worker_never_waits_on_a_paused_consumer() -> None:
    """A reply paused over a barge-in stops reading its engine's stream. Once the engine
    call has ended, its slot is free and so is its thread: the next call runs at once, not
    when the paused consumer reads on (one thread per engine)."""
    executor = ThreadPoolExecutor(1)
    ended = threading.Event()
    pieces = iterate_in_thread(lambda stop: iter(range(3)), executor, first_timeout_s=5,
                               next_timeout_s=5, what="paused", max_pending=2,
                               on_done=ended.set)
    async with contextlib.aclosing(pieces):
        assert await anext(pieces) == 0  # then the consumer pauses, two items queued
        assert await asyncio.to_thread(ended.wait, 2)
        loop = asyncio.get_running_loop()
        following = loop.run_in_executor(executor, lambda: "next call")
        assert await asyncio.wait_for(following, 2) == "next call"
        assert [piece async for piece in pieces] == [1, 2]
    executor.shutdown()
