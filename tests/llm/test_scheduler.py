"""Per-engine queues: a busy engine is waited for (queue time), never failed; a hung one is
not queued behind forever; two calls never overlap on one engine."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncGenerator, Callable, Iterator, Sequence
from contextlib import aclosing

import pytest

from tests.conftest import make_config
from tests.fakes import ScriptedLlm
from voice_agent.config import Config, LlmConfig
from voice_agent.engines import Engines
from voice_agent.errors import EngineError, EngineTimeout, Overloaded, Preempted
from voice_agent.llm.base import ChatMessage
from voice_agent.llm.chain import LlmChain
from voice_agent.llm.scheduler import EngineLane, Priority
from voice_agent.prompt import system_prompt

pytestmark = pytest.mark.timeout(60)

QUESTION = [ChatMessage("user", "Say something.")]


class CountingLlm(ScriptedLlm):
    """Records how many calls run at once (fault injection: a slow engine)."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.active = 0
        self.most_active = 0
        self.order: list[str] = []
        self._guard = threading.Lock()

    def stream(self, messages: Sequence[ChatMessage], cancel: threading.Event) -> Iterator[str]:
        with self._guard:
            self.active += 1
            self.most_active = max(self.most_active, self.active)
            self.order.append(messages[-1].content)
        try:
            yield from super().stream(messages, cancel)
        finally:
            with self._guard:
                self.active -= 1


class StuckLlm:
    """An engine that ignores its stop flag until released (a wedged native call)."""

    name = "stuck"
    opens_reasoning = False

    def __init__(self) -> None:
        self.release = threading.Event()
        self.active = 0
        self.most_active = 0
        self.ended = threading.Event()

    def stream(self, messages: Sequence[ChatMessage], cancel: threading.Event) -> Iterator[str]:
        self.active += 1
        self.most_active = max(self.most_active, self.active)
        try:
            self.release.wait(20)
            yield "late"
        finally:
            self.active -= 1
            self.ended.set()


def llm_config(**values: float) -> LlmConfig:
    config = LlmConfig(first_token_timeout_s=0.5, token_timeout_s=1.0, queue_timeout_s=10.0,
                       stop_grace_s=0.2)
    for key, value in values.items():
        setattr(config, key, value)
    return config


async def until(condition: Callable[[], bool], timeout_s: float = 10.0) -> None:
    # Generous: a starved CI machine has stalled a thread's start for over 2 s.
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


async def answer(pieces: AsyncGenerator[str, None]) -> str:
    """The reply's text; a reply cut at the generation limit is still a reply."""
    text: list[str] = []
    try:
        async with aclosing(pieces):
            async for piece in pieces:
                text.append(piece)
    except EngineError as exc:
        if exc.code != "llm_truncated":
            raise
    return "".join(text)


async def reply(lane: EngineLane | LlmChain, text: str = "q", *, engine: object = None,
                priority: int = Priority.TURN) -> tuple[str, dict[str, float]]:
    timings: dict[str, float] = {}
    messages = [ChatMessage("user", text)]
    if isinstance(lane, LlmChain):
        pieces = lane.stream(engine, messages, timings=timings, priority=priority)  # type: ignore[arg-type]
    else:
        pieces = lane.stream(messages, timings=timings, priority=priority)
    async with aclosing(pieces):
        return "".join([p async for p in pieces]), timings


async def test_waiting_for_a_busy_engine_is_queue_time_not_a_timeout() -> None:
    # Each reply takes ~0.6 s; four at once would wait up to 1.8 s, far past the 0.5 s
    # first-token limit, if the wait were counted as the engine's.
    engine = CountingLlm(["a", "b", "c"], delay_s=0.2)
    lane = EngineLane(engine, llm_config())  # type: ignore[arg-type]
    results = await asyncio.gather(*(reply(lane, f"q{i}") for i in range(4)))
    assert [text for text, _ in results] == ["abc"] * 4
    assert engine.most_active == 1
    assert engine.order == ["q0", "q1", "q2", "q3"]  # first come, first served
    queued = sorted(t["llm_queue_ms"] for _, t in results)
    assert queued[0] < 100 and queued[-1] > 1200
    # Each engine's own wait (~200 ms) is well under the 1.2 s+ the last one queued; had the
    # queue been counted, the last first token would be at least that.
    assert all(150 <= t["llm_first_token_ms"] < 1000 for _, t in results)
    lane.close()


async def test_queue_timeout_is_overloaded_and_not_counted_by_the_breaker() -> None:
    engine = CountingLlm(["a"] * 10, delay_s=0.1)
    config = llm_config(queue_timeout_s=0.3, breaker_consecutive_failures=1)
    chain = LlmChain([engine], config)  # type: ignore[list-item]
    first = asyncio.create_task(reply(chain, engine=engine))
    await asyncio.sleep(0.05)
    started = time.monotonic()
    with pytest.raises(Overloaded) as info:
        await reply(chain, engine=engine)
    assert 0.25 < time.monotonic() - started < 0.9
    assert info.value.code == "overloaded" and info.value.transient
    chain.record(engine, success=False, error=info.value)  # type: ignore[arg-type]
    assert chain.status()[0]["state"] == "closed"
    assert (await first)[0] == "a" * 10
    chain.close()


async def test_a_probe_waits_behind_turns() -> None:
    engine = CountingLlm(["a", "b"], delay_s=0.1)
    lane = EngineLane(engine, llm_config())  # type: ignore[arg-type]
    holder = asyncio.create_task(reply(lane, "first"))
    await asyncio.sleep(0.05)
    probe = asyncio.create_task(reply(lane, "probe", priority=Priority.PROBE))
    await asyncio.sleep(0.01)
    turn = asyncio.create_task(reply(lane, "turn"))
    await asyncio.gather(holder, probe, turn)
    assert engine.order == ["first", "turn", "probe"]
    lane.close()


async def test_a_timed_out_call_keeps_the_engine_until_it_really_ends() -> None:
    engine = StuckLlm()
    lane = EngineLane(engine, llm_config())  # type: ignore[arg-type]
    started = time.monotonic()
    with pytest.raises(EngineTimeout):
        await reply(lane)
    assert time.monotonic() - started < 1.0
    assert lane.busy == 1  # the engine is still inside the call
    # Wedged (still running past the stop grace): the next caller fails at once, counted as
    # the engine's failure, instead of queueing behind it or running beside it.
    await asyncio.sleep(0.3)
    started = time.monotonic()
    with pytest.raises(EngineTimeout, match="told to stop"):
        await reply(lane)
    assert time.monotonic() - started < 0.2
    assert engine.most_active == 1
    engine.release.set()
    assert await asyncio.to_thread(engine.ended.wait, 2)
    await until(lambda: lane.busy == 0)
    # The call ended, so the engine is free again (it answers at once from now on).
    assert (await reply(lane))[0] == "late"
    assert engine.most_active == 1
    lane.close()


async def test_a_waiter_behind_a_stopping_call_gets_the_engine_when_it_ends() -> None:
    """A call stopped within the grace is waited for, then the next call runs."""
    engine = StuckLlm()
    lane = EngineLane(engine, llm_config(stop_grace_s=2.0))  # type: ignore[arg-type]
    with pytest.raises(EngineTimeout):
        await reply(lane)
    waiter = asyncio.create_task(reply(lane))
    await asyncio.sleep(0.3)
    assert not waiter.done() and engine.most_active == 1
    engine.release.set()
    assert (await waiter)[0] == "late"
    assert engine.most_active == 1
    lane.close()


async def test_a_call_stopped_while_reading_its_prompt_is_not_wedged_before_its_budget() -> None:
    """A cancelled turn's call may still be reading its prompt (which llama.cpp can't
    interrupt): the next turn waits for it up to its first-output budget, then gets it."""
    engine = StuckLlm()
    lane = EngineLane(engine, llm_config(first_token_timeout_s=1.5))  # type: ignore[arg-type]
    cancelled = asyncio.create_task(reply(lane))
    await until(lambda: engine.active == 1)
    cancelled.cancel()
    with pytest.raises(asyncio.CancelledError):
        await cancelled
    await asyncio.sleep(0.4)  # past the 0.2 s stop grace, within the 1.5 s budget
    waiter = asyncio.create_task(reply(lane))
    await asyncio.sleep(0.3)
    assert not waiter.done()
    engine.release.set()
    assert (await waiter)[0] == "late"
    assert engine.most_active == 1
    lane.close()


async def test_the_fallback_runs_while_the_primary_is_stuck() -> None:
    """Each engine has its own thread: a wedged primary cannot hold the fallback's."""
    stuck, backup = StuckLlm(), ScriptedLlm(["fine"], name="backup")
    chain = LlmChain([stuck, backup], llm_config())  # type: ignore[list-item]
    with pytest.raises(EngineTimeout):
        await reply(chain, engine=stuck)
    assert (await reply(chain, engine=backup))[0] == "fine"
    stuck.release.set()
    chain.close()


async def test_a_cold_engine_gets_the_first_call_grace_once() -> None:
    engine = ScriptedLlm(["a"], delay_s=0.7)
    engine.cold_start = True  # type: ignore[attr-defined]
    lane = EngineLane(engine, llm_config(first_call_timeout_s=3.0))  # type: ignore[arg-type]
    assert (await reply(lane))[0] == "a"
    with pytest.raises(EngineTimeout):
        await reply(lane)
    lane.close()


async def test_cancelling_a_waiter_leaves_the_queue_working() -> None:
    engine = CountingLlm(["a", "b"], delay_s=0.1)
    lane = EngineLane(engine, llm_config())  # type: ignore[arg-type]
    holder = asyncio.create_task(reply(lane, "first"))
    await asyncio.sleep(0.05)
    gone = asyncio.create_task(reply(lane, "gone"))
    after = asyncio.create_task(reply(lane, "after"))
    await asyncio.sleep(0.02)
    gone.cancel()
    await asyncio.gather(holder, after)
    assert engine.order == ["first", "after"]
    assert lane.busy == 0 and lane.waiting == 0
    lane.close()


@pytest.mark.slow
@pytest.mark.timeout(180)
async def test_concurrent_turns_on_the_real_engine_never_time_out(engines: Engines) -> None:
    """Six sessions asking the real llama.cpp engine at once, with a first-token limit far
    below the time the last of them waits: every one waits its turn and answers; the breaker
    stays shut. The limit is set from one call measured alone on this machine (a CI runner
    can be several times slower than a workstation), so the test means the same on both."""
    engine = engines.llm.primary

    def question(i: int, config: Config) -> list[ChatMessage]:
        # The service's system prompt, so the engine's cached prefix stays useful to the
        # tests after this one.
        return [ChatMessage("system", system_prompt(config)),
                ChatMessage("user", f"Tell me a fact about the number {i}.")]

    solo_config = make_config()
    solo_chain = LlmChain([engine], solo_config.llm)
    solo: dict[str, float] = {}
    started = time.perf_counter()
    try:
        assert (await answer(solo_chain.stream(engine, question(99, solo_config),
                                               timings=solo))).strip()
    finally:
        solo_chain.close()
    solo_total_s = time.perf_counter() - started
    limit_s = max(1.0, 3 * solo["llm_first_token_ms"] / 1000)
    assert 5 * solo_total_s > 1.5 * limit_s, (
        "one reply is too short for six to queue past the first-token limit: this test "
        "would prove nothing", solo_total_s, limit_s)

    config = make_config(llm={"first_token_timeout_s": limit_s,
                              "breaker_consecutive_failures": 1})
    chain = LlmChain([engine], config.llm)

    async def ask(i: int) -> dict[str, float]:
        timings: dict[str, float] = {}
        assert (await answer(chain.stream(engine, question(i, config), timings=timings))).strip()
        return timings

    try:
        results = await asyncio.gather(*(ask(i) for i in range(6)), return_exceptions=True)
    finally:
        chain.close()
    failures = [r for r in results if isinstance(r, BaseException)]
    assert not failures, failures
    timings = [r for r in results if isinstance(r, dict)]
    assert all("llm_queue_ms" in t and "llm_first_token_ms" in t for t in timings)
    assert max(t["llm_queue_ms"] for t in timings) > limit_s * 1000  # they really did wait
    assert all(t["llm_first_token_ms"] < limit_s * 1000 for t in timings)
    assert chain.status()[0]["state"] == "closed"


# --- speculation (issue 8) ----------------------------------------------------------------


class SpeculationFlag:
    """The lane's side of :class:`voice_agent.speculation.Speculation`, settable by hand."""

    def __init__(self) -> None:
        self.committed = False
        self.preempted = False

    @property
    def speculative(self) -> bool:
        return not self.committed

    def try_preempt(self) -> bool:
        if self.committed:
            return False
        self.preempted = True
        return True


async def consume(lane: EngineLane, text: str, *, speculation: SpeculationFlag | None = None
                  ) -> str:
    pieces = lane.stream([ChatMessage("user", text)], speculation=speculation,
                         priority=Priority.SPECULATIVE if speculation else Priority.TURN)
    return await answer(pieces)


async def test_a_committed_turn_preempts_a_speculative_call_at_once() -> None:
    engine = CountingLlm(["a"] * 200, delay_s=0.02)  # a 4 s reply
    lane = EngineLane(engine, llm_config())  # type: ignore[arg-type]
    flag = SpeculationFlag()
    speculative = asyncio.create_task(consume(lane, "speculative", speculation=flag))
    await until(lambda: engine.active == 1)
    turn = asyncio.create_task(consume(lane, "turn"))
    # The engine is handed over within a token or two, not at the end of the 4 s reply.
    await until(lambda: engine.order == ["speculative", "turn"], timeout_s=2.0)
    with pytest.raises(Preempted):
        await speculative
    assert flag.preempted
    assert (await turn).startswith("a")
    assert lane.busy == 0
    lane.close()


async def test_a_committed_speculation_is_not_preempted() -> None:
    engine = CountingLlm(["a"] * 20, delay_s=0.01)
    lane = EngineLane(engine, llm_config())  # type: ignore[arg-type]
    flag = SpeculationFlag()
    flag.committed = True  # the turn was decided while its answer was being written
    first = asyncio.create_task(consume(lane, "first", speculation=flag))
    await until(lambda: engine.active == 1)
    second = asyncio.create_task(consume(lane, "second"))
    assert await first == "a" * 20 and await second == "a" * 20
    assert not flag.preempted and engine.order == ["first", "second"]
    lane.close()


async def test_speculation_waits_behind_turns_and_is_not_counted_as_a_waiting_turn() -> None:
    engine = CountingLlm(["a"], delay_s=0.5)
    # The first output comes after the engine's 0.5 s: a timeout of 0.5 s would race it.
    lane = EngineLane(engine, llm_config(first_token_timeout_s=3.0))  # type: ignore[arg-type]
    holder = asyncio.create_task(consume(lane, "holder"))
    await until(lambda: engine.active == 1)
    flag = SpeculationFlag()
    speculative = asyncio.create_task(consume(lane, "speculative", speculation=flag))
    await until(lambda: lane.waiting == 1)
    assert lane.waiting_turns == 0  # brief_when_busy does not shorten a reply for it
    turn = asyncio.create_task(consume(lane, "turn"))
    await until(lambda: lane.waiting == 2)
    assert lane.waiting_turns == 1
    await asyncio.gather(holder, speculative, turn)
    assert engine.order == ["holder", "turn", "speculative"]
    lane.close()


async def test_a_speculation_committed_while_waiting_queues_as_a_turn() -> None:
    engine = CountingLlm(["a"], delay_s=1.5)  # long enough on a loaded machine
    lane = EngineLane(engine, llm_config(first_token_timeout_s=5.0))  # type: ignore[arg-type]
    holder = asyncio.create_task(consume(lane, "holder"))
    await until(lambda: engine.active == 1)
    flag = SpeculationFlag()
    speculative = asyncio.create_task(consume(lane, "early", speculation=flag))
    await until(lambda: lane.waiting == 1)
    later = asyncio.create_task(consume(lane, "later"))
    await until(lambda: lane.waiting == 2)
    flag.committed = True  # now a turn like any other, and it came first
    await asyncio.gather(holder, speculative, later)
    assert engine.order == ["holder", "early", "later"]
    lane.close()
