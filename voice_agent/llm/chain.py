"""The LLM fallback chain: engines in order, each behind a circuit breaker.

A turn goes to the first engine whose breaker lets it through; when that engine fails (an
exception, a connection error, no first token in time, a stall, a reasoning budget blown),
the turn moves to the next one. A breaker opens when its engine's error rate over the last
``breaker_window`` turns passes ``breaker_error_rate`` (5% by default) or after
``breaker_consecutive_failures`` failures in a row; an open engine gets no turns. A probe
(a tiny real request) retries it every ``probe_interval_s`` and one success closes the
breaker, so the chain goes back to its primary when it recovers.

:class:`CircuitBreaker` is pure: it is told the time, so it is tested without sleeping.

Every call to an engine, turns and probes alike, goes through the engine's queue
(:mod:`voice_agent.llm.scheduler`): a busy engine is not a broken one, so waiting for it is
never an ``engine_timeout`` and a queue timeout (``overloaded``) is not counted by the
breaker. The prompt is fitted to the engine's context on the way (oldest exchanges first).
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from collections import deque
from collections.abc import AsyncGenerator, Callable, Sequence
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any

from voice_agent.config import LlmConfig
from voice_agent.errors import Overloaded, VoiceAgentError
from voice_agent.llm.base import ChatMessage, LlmEngine
from voice_agent.llm.conversation import TokenCounter, estimate_tokens, fit_to_context
from voice_agent.llm.scheduler import EngineLane, Priority, Scheduler, Speculation

log = logging.getLogger(__name__)

PROBE_MESSAGES = (ChatMessage("user", "Say OK."),)


class BreakerState(enum.Enum):
    CLOSED = "closed"
    OPEN = "open"


class CircuitBreaker:
    def __init__(
        self,
        *,
        window: int = 20,
        error_rate: float = 0.05,
        min_turns: int = 10,
        consecutive_failures: int = 3,
    ) -> None:
        self._results: deque[bool] = deque(maxlen=window)
        self._error_rate = error_rate
        self._min_turns = min_turns
        self._consecutive_limit = consecutive_failures
        self.consecutive_failures = 0
        self.state = BreakerState.CLOSED
        self.opened_at: float | None = None
        self.last_probe_at: float | None = None

    @classmethod
    def from_config(cls, config: LlmConfig) -> CircuitBreaker:
        return cls(
            window=config.breaker_window,
            error_rate=config.breaker_error_rate,
            min_turns=config.breaker_min_turns,
            consecutive_failures=config.breaker_consecutive_failures,
        )

    @property
    def error_rate(self) -> float:
        return self._results.count(False) / len(self._results) if self._results else 0.0

    @property
    def allows(self) -> bool:
        return self.state is BreakerState.CLOSED

    def record(self, success: bool, now: float) -> None:
        """One turn's outcome for this engine."""
        self._results.append(success)
        self.consecutive_failures = 0 if success else self.consecutive_failures + 1
        if success or self.state is BreakerState.OPEN:
            return
        judged = len(self._results) >= self._min_turns and self.error_rate > self._error_rate
        if judged or self.consecutive_failures >= self._consecutive_limit:
            self.state = BreakerState.OPEN
            self.opened_at = now

    def probe_due(self, now: float, interval_s: float) -> bool:
        if self.state is not BreakerState.OPEN:
            return False
        last = self.last_probe_at if self.last_probe_at is not None else self.opened_at
        return last is None or now - last >= interval_s

    def probed(self, success: bool, now: float) -> None:
        """A probe's outcome: success closes the breaker with a clean history."""
        self.last_probe_at = now
        if success:
            self.state = BreakerState.CLOSED
            self.opened_at = None
            self.consecutive_failures = 0
            self._results.clear()


@dataclass
class ChainLink:
    engine: LlmEngine
    breaker: CircuitBreaker
    lane: EngineLane


class LlmChain:
    """The engines of ``llm.engines`` in fallback order, shared by all sessions."""

    def __init__(
        self,
        engines: Sequence[LlmEngine],
        config: LlmConfig,
        *,
        clock: Callable[[], float] = time.monotonic,
        system_prompt: str = "",
    ) -> None:
        """``system_prompt``: the sessions' system prompt. Probes send it too, so a probe
        extends the prefix every turn starts with and llama.cpp keeps that prompt's KV cache
        (a bare probe would evict it and make the next turn re-read the whole system prompt,
        seconds on a CPU, against a 3 s first-token limit)."""
        if not engines:
            raise ValueError("an LLM chain needs at least one engine")
        self.scheduler = Scheduler(config)
        self.links = [ChainLink(e, CircuitBreaker.from_config(config), self.scheduler.lane(e))
                      for e in engines]
        self._config = config
        self._clock = clock
        self._probe_messages = (
            (ChatMessage("system", system_prompt), *PROBE_MESSAGES) if system_prompt
            else PROBE_MESSAGES)

    @property
    def primary(self) -> LlmEngine:
        return self.links[0].engine

    def candidates(self) -> list[LlmEngine]:
        """Engines to try for a turn, in order. When every breaker is open the whole chain is
        tried anyway: a slim chance of an answer beats a certain silence."""
        allowed = [link.engine for link in self.links if link.breaker.allows]
        return allowed or [link.engine for link in self.links]

    def record(self, engine: LlmEngine, success: bool, error: VoiceAgentError | None = None
               ) -> None:
        """One turn's outcome for ``engine``. A turn that found it busy (``overloaded``: its
        queue was full for ``llm.queue_timeout_s``) says nothing about its health."""
        if isinstance(error, Overloaded):
            return
        for link in self.links:
            if link.engine is engine:
                was_open = not link.breaker.allows
                link.breaker.record(success, self._clock())
                if not was_open and not link.breaker.allows:
                    log.warning("circuit opened for %s (error rate %.0f%%, %d in a row)",
                                engine.name, 100 * link.breaker.error_rate,
                                link.breaker.consecutive_failures)

    def status(self) -> list[dict[str, Any]]:
        return [
            {
                "engine": link.engine.name,
                "state": link.breaker.state.value,
                "error_rate": round(link.breaker.error_rate, 3),
                "consecutive_failures": link.breaker.consecutive_failures,
                "busy": link.lane.busy,
                "waiting": link.lane.waiting,
            }
            for link in self.links
        ]

    def waiting(self, engine: LlmEngine) -> int:
        """Committed turns queued for ``engine`` behind the ones it is serving."""
        return self._link(engine).lane.waiting_turns

    def _link(self, engine: LlmEngine) -> ChainLink:
        for link in self.links:
            if link.engine is engine:
                return link
        raise ValueError(f"{engine.name} is not in this chain")

    def prompt_budget(self, engine: LlmEngine) -> int:
        """Prompt tokens ``engine`` may get: the context (``llm.n_ctx``) less the room its
        reply needs (``max_tokens``, plus the reasoning budget for a reasoning model)."""
        reply = self._config.max_tokens
        if engine.opens_reasoning is not False:  # R1, or maybe R1 behind a server
            reply += self._config.reasoning_budget_tokens
        return self._config.n_ctx - reply

    def fit(self, engine: LlmEngine, messages: Sequence[ChatMessage]) -> list[ChatMessage]:
        """``messages`` trimmed to ``engine``'s context, by its own token count when it has
        one (``count_tokens``), else by a conservative estimate."""
        count: TokenCounter = getattr(engine, "count_tokens", None) or estimate_tokens
        return fit_to_context(messages, self.prompt_budget(engine), count)

    async def stream(
        self,
        engine: LlmEngine,
        messages: Sequence[ChatMessage],
        *,
        timings: dict[str, float] | None = None,
        priority: int = Priority.TURN,
        speculation: Speculation | None = None,
    ) -> AsyncGenerator[str, None]:
        """``engine``'s reply to ``messages`` (fitted to its context), through its queue;
        see :meth:`EngineLane.stream` for the timings and ``speculation``. Consume under
        ``aclosing``."""
        lane = self._link(engine).lane
        fitted = self.fit(engine, messages)
        if len(fitted) < len(messages):
            log.info("%s: %d oldest messages left out to fit the context",
                     engine.name, len(messages) - len(fitted))
        pieces = lane.stream(fitted, priority=priority, timings=timings,
                             speculation=speculation)
        async with aclosing(pieces):
            async for piece in pieces:
                yield piece

    def close(self) -> None:
        """Stop the engines' worker threads (at exit)."""
        self.scheduler.close()

    async def probe_due_engines(self) -> None:
        """Probe every open engine whose probe is due (one tiny streamed request each)."""
        for link in self.links:
            if not link.breaker.probe_due(self._clock(), self._config.probe_interval_s):
                continue
            success = await self._probe(link.engine)
            link.breaker.probed(success, self._clock())
            log.info("probe of %s %s", link.engine.name, "succeeded: back in the chain"
                     if success else "failed: circuit stays open")

    async def probe_forever(self) -> None:
        interval = min(1.0, self._config.probe_interval_s)
        while True:
            await asyncio.sleep(interval)
            try:
                await self.probe_due_engines()
            except Exception:  # a probe must never take the service down
                log.exception("LLM probe failed unexpectedly")

    async def _probe(self, engine: LlmEngine) -> bool:
        """One token proves the engine answers. The probe queues behind turns (a busy
        engine is not a broken one) and its first token gets the turns' time limit."""
        pieces = self.stream(engine, self._probe_messages, priority=Priority.PROBE)
        try:
            async for _ in pieces:
                return True
            return False  # an empty answer to "Say OK." is not a healthy engine
        except Exception as exc:
            log.debug("probe of %s: %r", engine.name, exc)
            return False
        finally:
            await pieces.aclose()
