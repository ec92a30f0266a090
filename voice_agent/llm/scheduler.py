"""One queue per LLM engine: waiting for a busy engine is queue time, not engine failure.

Engines are not safe for concurrent use (a llama.cpp context, a torch model), and a turn
that waits for another session's reply is not facing a broken engine. So every engine has
an :class:`EngineLane`: a queue entered on the event loop *before* the hand-off to a thread,
and its own worker thread(s). The first-token timer starts only once the engine is ours;
the wait before it is bounded separately (``llm.queue_timeout_s``, giving ``overloaded``,
which the breaker does not count) and reported as ``llm_queue_ms``.

A lane's slot is freed when its worker thread has really finished the engine call, never
when the consumer gives up: a timed-out call keeps running until the engine notices its stop
flag, and the next call must not overlap it. A healthy engine stops within a token (or,
stopped while still reading its prompt, by the end of its first-output budget); one still
running ``llm.stop_grace_s`` after that is *wedged*, and its waiters
fail at once with ``engine_timeout`` (which the breaker does count) instead of queueing
behind a call that may never end. The lane's own thread is the one stuck, so other engines
(the fallback) keep theirs.

Waiters are served by priority, then first come first served. Speculative work (an answer
prepared during a pause, before the person's turn is decided) waits behind every committed
turn, and a committed turn that finds the engine busy with speculation pre-empts it: the
speculative call is told to stop at once (its consumer gets :class:`Preempted`) and the slot
passes on as soon as the engine has noticed. A speculation that becomes committed while it
waits or runs is a turn like any other from then on.
"""

from __future__ import annotations

import asyncio
import enum
import itertools
import logging
import threading
import time
from collections.abc import AsyncGenerator, Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import aclosing, suppress
from dataclasses import dataclass, field
from typing import Protocol

from voice_agent.aio import iterate_in_thread
from voice_agent.config import LlmConfig
from voice_agent.errors import EngineTimeout, Overloaded, Preempted
from voice_agent.llm.base import ChatMessage, LlmEngine

log = logging.getLogger(__name__)


class Priority(enum.IntEnum):
    """Lower is served first."""

    TURN = 0
    """A turn someone is waiting to hear."""
    SPECULATIVE = 5
    """An answer prepared before the turn is decided: pre-empted by any turn."""
    PROBE = 10
    """A breaker probe: only when no turn wants the engine."""


class Speculation(Protocol):
    """What the lane needs of a speculative call (``voice_agent.speculation``)."""

    @property
    def speculative(self) -> bool:
        """Still speculative (False once the turn is committed)."""
        ...

    def try_preempt(self) -> bool:
        """Give the engine up if still speculative (atomically marks it pre-empted)."""
        ...


@dataclass
class _Waiter:
    priority: int
    seq: int
    loop: asyncio.AbstractEventLoop = field(compare=False)
    future: asyncio.Future[None] = field(compare=False)
    speculation: Speculation | None = field(default=None, compare=False)
    granted: bool = field(default=False, compare=False)
    """Set under the lane's lock: the slot is this waiter's (the future only wakes it)."""

    def rank(self) -> tuple[int, int]:
        """Served lowest first; read when the slot is handed on, so a speculation committed
        while it waited queues as the turn it has become."""
        if self.speculation is not None:
            speculative = self.speculation.speculative
            return (Priority.SPECULATIVE if speculative else Priority.TURN, self.seq)
        return (self.priority, self.seq)


@dataclass
class _Call:
    """A call holding a slot: what pre-emption needs to stop it."""

    speculation: Speculation | None
    stop: threading.Event | None = None
    """The engine's stop flag, once its worker thread has started the call."""
    preempted: bool = False


def _wake(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class EngineLane:
    """One engine's queue and worker threads.

    ``engine.concurrency`` (default 1) calls may run at once: an HTTP engine whose server
    batches requests says more. ``engine.cold_start`` (default False) gives the first call
    ``llm.first_call_timeout_s`` to its first token. State is guarded by a thread lock and
    waiters are woken through their own loop, because slots are freed from worker threads.
    """

    def __init__(
        self,
        engine: LlmEngine,
        config: LlmConfig,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.engine = engine
        self._config = config
        self._clock = clock
        self.concurrency = max(1, int(getattr(engine, "concurrency", 1)))
        self._executor = ThreadPoolExecutor(self.concurrency,
                                            thread_name_prefix=f"llm-{engine.name}"[:40])
        self._lock = threading.Lock()
        self._free = self.concurrency
        self._waiters: list[_Waiter] = []
        self._seq = itertools.count()
        self._calls = itertools.count()
        self._running: dict[int, _Call] = {}
        """Calls holding a slot, by call number (pre-emption looks here)."""
        self._abandoned: dict[int, float] = {}
        """Calls whose consumer has gone while the engine still runs them → when the lane
        counts as wedged if the call is still running."""
        self._cold = bool(getattr(engine, "cold_start", False))

    # Queue -----------------------------------------------------------------------------

    @property
    def waiting(self) -> int:
        with self._lock:
            return len(self._waiters)

    @property
    def waiting_turns(self) -> int:
        """Waiters that are committed turns (not speculation, not probes)."""
        with self._lock:
            return sum(1 for w in self._waiters if w.rank()[0] == Priority.TURN)

    @property
    def busy(self) -> int:
        """Slots held, by a consumer or by a call still running after its consumer left."""
        with self._lock:
            return self.concurrency - self._free

    def _wedged_at(self) -> float | None:
        """When the lane counts as wedged (no free slot, a stopped call still running)."""
        if self._free > 0 or not self._abandoned:
            return None
        return min(self._abandoned.values())

    async def acquire(self, priority: int = Priority.TURN,
                      speculation: Speculation | None = None) -> None:
        """Wait for a slot. Raises :class:`Overloaded` after ``llm.queue_timeout_s`` and
        :class:`EngineTimeout` when the engine is wedged; the caller must :meth:`release`.
        A committed turn that has to wait pre-empts a speculative call holding a slot."""
        loop = asyncio.get_running_loop()
        deadline = self._clock() + self._config.queue_timeout_s
        with self._lock:
            if self._free > 0 and not self._waiters:
                self._free -= 1
                return
            waiter = _Waiter(priority, next(self._seq), loop, loop.create_future(),
                             speculation)
            self._waiters.append(waiter)
        try:
            while True:
                with self._lock:
                    if waiter.granted:
                        return
                    if waiter.rank()[0] == Priority.TURN:
                        self._preempt_locked()
                    now, wedged_at = self._clock(), self._wedged_at()
                    if wedged_at is not None and now >= wedged_at:
                        raise EngineTimeout(
                            f"{self.engine.name}: still running a call it was told to stop, "
                            f"{now - wedged_at + self._config.stop_grace_s:.1f} s after it "
                            "could have ended")
                    if now >= deadline:
                        raise Overloaded(
                            f"{self.engine.name}: busy for {self._config.queue_timeout_s:g} s "
                            f"({len(self._waiters)} waiting)")
                    if waiter.future.done():
                        waiter.future = loop.create_future()
                    future = waiter.future
                    wait_s = min(deadline, wedged_at or deadline) - now
                # Woken early by a grant or by a stopped call; the checks above decide.
                await asyncio.wait([future], timeout=wait_s)
        except BaseException:
            with self._lock:
                if waiter.granted:  # granted just as it gave up: hand the slot on
                    self._release_locked()
                else:
                    self._waiters.remove(waiter)
            raise

    def release(self) -> None:
        """Free a slot (thread-safe): the next waiter, by priority, gets it."""
        with self._lock:
            self._release_locked()

    def _preempt_locked(self) -> None:
        """Stop one speculative call, unless one is already stopping for a turn."""
        if any(call.preempted for call in self._running.values()):
            return
        for call in self._running.values():
            if call.speculation is not None and call.speculation.try_preempt():
                call.preempted = True
                if call.stop is not None:
                    call.stop.set()
                return

    def _release_locked(self) -> None:
        while self._waiters:
            waiter = min(self._waiters, key=_Waiter.rank)
            self._waiters.remove(waiter)
            try:
                waiter.loop.call_soon_threadsafe(_wake, waiter.future)
            except RuntimeError:  # its loop is gone, and the waiter with it
                continue
            waiter.granted = True
            return
        self._free += 1

    def _abandon_locked(self, call: int, wedged_at: float) -> None:
        self._abandoned[call] = wedged_at
        # Waiters recompute when the lane would count as wedged.
        for waiter in self._waiters:
            with suppress(RuntimeError):  # a loop that is gone has no waiter to wake
                waiter.loop.call_soon_threadsafe(_wake, waiter.future)

    # Calls -----------------------------------------------------------------------------

    async def stream(
        self,
        messages: Sequence[ChatMessage],
        *,
        priority: int = Priority.TURN,
        timings: dict[str, float] | None = None,
        speculation: Speculation | None = None,
    ) -> AsyncGenerator[str, None]:
        """The engine's reply pieces, after waiting for the engine.

        ``timings`` (a turn's ``timings_ms``) gets ``llm_queue_ms`` (added up over the
        engines a turn tries) and ``llm_first_token_ms`` (from when this engine started).
        With ``speculation``, the call waits behind committed turns while it is speculative
        and raises :class:`Preempted` when one takes the engine from it.
        Consume it under ``contextlib.aclosing``.
        """
        queued = time.perf_counter()
        try:
            await self.acquire(priority, speculation)
        finally:  # a wait that ended in ``overloaded`` is queue time too
            started = time.perf_counter()
            if timings is not None:
                waited = (started - queued) * 1000
                timings["llm_queue_ms"] = round(timings.get("llm_queue_ms", 0.0) + waited, 1)
        call = next(self._calls)
        call_started = self._clock()
        finished = threading.Event()
        state = _Call(speculation)
        with self._lock:
            self._running[call] = state

        def done() -> None:  # in the worker thread, once the engine call really ended
            with self._lock:
                finished.set()
                self._running.pop(call, None)
                self._abandoned.pop(call, None)
                self._release_locked()

        def run(stop: threading.Event) -> Iterator[str]:  # in the worker thread
            with self._lock:
                state.stop = stop
                if state.preempted:
                    return iter(())
            return self.engine.stream(messages, stop)

        first_timeout_s = self._config.first_token_timeout_s
        if self._cold:
            self._cold = False
            first_timeout_s = max(first_timeout_s, self._config.first_call_timeout_s)
        pieces = iterate_in_thread(
            run, self._executor,
            first_timeout_s=first_timeout_s, next_timeout_s=self._config.token_timeout_s,
            what=self.engine.name, on_done=done,
        )
        first = True
        try:
            async with aclosing(pieces):
                async for piece in pieces:
                    if state.preempted:
                        break
                    if first and timings is not None:
                        timings["llm_first_token_ms"] = round(
                            (time.perf_counter() - started) * 1000, 1)
                    first = False
                    yield piece
            if state.preempted:
                raise Preempted(f"{self.engine.name}: speculation gave way to a turn")
        finally:
            wedged_at = self._clock() + self._config.stop_grace_s
            if first:
                # Still reading its prompt, which llama.cpp cannot be told to stop: it may
                # take its whole first-output budget before it can notice the stop flag.
                wedged_at = max(wedged_at,
                                call_started + first_timeout_s + self._config.stop_grace_s)
            with self._lock:
                if not finished.is_set():
                    self._abandon_locked(call, wedged_at)

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


class Scheduler:
    """The lanes of a set of engines, one per engine object."""

    def __init__(self, config: LlmConfig, *, clock: Callable[[], float] = time.monotonic
                 ) -> None:
        self._config = config
        self._clock = clock
        self._lanes: dict[int, EngineLane] = {}

    def lane(self, engine: LlmEngine) -> EngineLane:
        lane = self._lanes.get(id(engine))
        if lane is None or lane.engine is not engine:
            lane = self._lanes[id(engine)] = EngineLane(engine, self._config, clock=self._clock)
        return lane

    def close(self) -> None:
        for lane in self._lanes.values():
            lane.close()
