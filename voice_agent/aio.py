"""Run blocking engine generators in executor threads and consume them from asyncio.

Engines (CTranslate2, llama.cpp, onnxruntime) release the GIL, so they run in threads;
the event loop only moves their output. The hand-off is bounded in both directions: the
thread blocks (cancellably) when the consumer is behind, and the consumer times out when
the engine stalls.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterator
from concurrent.futures import Executor
from typing import TypeVar

from voice_agent.errors import EngineTimeout

T = TypeVar("T")

_ITEM, _END, _ERROR = "item", "end", "error"


async def wait_within(awaitable: Awaitable[T], timeout_s: float | None) -> T:
    """``asyncio.wait_for`` that never swallows a cancel.

    Python 3.11's ``wait_for`` returns the result of an awaitable that finished just as the
    caller was cancelled, and the cancel is lost: a turn told to stop goes on. This is the
    ``asyncio.timeout`` form 3.12's ``wait_for`` itself became. Raises ``TimeoutError``.
    """
    async with asyncio.timeout(timeout_s):
        return await awaitable


async def iterate_in_thread(
    make_iterator: Callable[[threading.Event], Iterator[T]],
    executor: Executor | None,
    *,
    first_timeout_s: float,
    next_timeout_s: float,
    what: str,
    max_pending: int = 64,
    on_done: Callable[[], None] | None = None,
) -> AsyncGenerator[T, None]:
    """Yield what ``make_iterator(stop)`` yields in a worker thread.

    Raises :class:`EngineTimeout` when the first item takes longer than ``first_timeout_s``
    or a later one longer than ``next_timeout_s``; re-raises the worker's exceptions. On
    exit (normal, error, cancellation, or ``aclose()`` by a consumer that stops early) the
    ``stop`` event handed to the engine is set, so it stops at its next item; a worker stuck
    inside an engine call is not waited for. Consume it under ``contextlib.aclosing``.

    ``on_done`` is called from the worker thread once the engine's iterator has really
    finished (closed, so its ``finally`` blocks and locks are done with), however the
    consumer ended: an engine queue frees its slot only then, so a timed-out call that is
    still running never overlaps the next one. It is called exactly once if the generator
    was started (the hand-off happens on the first ``anext``).
    """
    cancel = threading.Event()
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[str, object]] = asyncio.Queue()
    slots = threading.BoundedSemaphore(max_pending)

    def hand_over(kind: str, value: object) -> bool:
        # Only items wait for room: the end (or error) is handed over at once, after the
        # slot was freed, so the worker thread is never left blocked behind a consumer
        # that paused reading while the next call waits for that thread.
        while kind == _ITEM and not slots.acquire(timeout=0.05):
            if cancel.is_set():
                return False
        try:
            loop.call_soon_threadsafe(queue.put_nowait, (kind, value))
        except RuntimeError:  # the loop is gone: nobody is listening any more
            return False
        return True

    def work() -> None:
        last: tuple[str, object] | None = (_END, None)
        try:
            iterator = make_iterator(cancel)
            try:
                for item in iterator:
                    if cancel.is_set() or not hand_over(_ITEM, item):
                        last = None
                        return
            finally:
                # Close the engine's generator here, in its thread, rather than whenever
                # it is collected: "done" must mean its cleanup has run.
                close = getattr(iterator, "close", None)
                if close is not None:
                    close()
        except BaseException as exc:  # delivered to the consumer, which re-raises it
            last = (_ERROR, exc)
        finally:
            # Done before the consumer hears the end: a caller that has read the whole
            # reply finds the engine's slot already free.
            if on_done is not None:
                on_done()
            if last is not None:
                hand_over(*last)

    try:
        loop.run_in_executor(executor, work)
    except BaseException:  # a shut-down executor: the work never starts
        if on_done is not None:
            on_done()
        raise
    timeout, stage = first_timeout_s, "first output"
    try:
        while True:
            try:
                kind, value = await wait_within(queue.get(), timeout)
            except TimeoutError:
                raise EngineTimeout(f"{what}: no {stage} within {timeout:.1f} s") from None
            if kind == _ITEM:
                slots.release()
            if kind == _END:
                return
            if kind == _ERROR:
                assert isinstance(value, BaseException)  # noqa: S101 - internal invariant
                raise value
            yield value  # type: ignore[misc]
            timeout, stage = next_timeout_s, "next output"
    finally:
        cancel.set()


async def call_in_thread(
    function: Callable[[], T], executor: Executor | None, *, timeout_s: float, what: str
) -> T:
    """Run a blocking call in ``executor`` with a time limit."""
    loop = asyncio.get_running_loop()
    try:
        return await wait_within(loop.run_in_executor(executor, function), timeout_s)
    except TimeoutError:
        raise EngineTimeout(f"{what}: no result within {timeout_s:.1f} s") from None
