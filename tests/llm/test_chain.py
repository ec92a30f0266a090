"""The circuit breaker (pure, told the time) and the chain's choice of engines."""

from __future__ import annotations

import asyncio

from hypothesis import given
from hypothesis import strategies as st

from tests.fakes import ScriptedLlm
from voice_agent.config import LlmConfig
from voice_agent.llm.chain import BreakerState, CircuitBreaker, LlmChain


def test_consecutive_failures_open_the_breaker() -> None:
    breaker = CircuitBreaker(consecutive_failures=3)
    for now in (1.0, 2.0):
        breaker.record(False, now)
        assert breaker.allows
    breaker.record(False, 3.0)
    assert breaker.state is BreakerState.OPEN and breaker.opened_at == 3.0


def test_error_rate_over_the_window_opens_the_breaker() -> None:
    breaker = CircuitBreaker(window=20, error_rate=0.05, min_turns=10, consecutive_failures=99)
    for i in range(18):
        breaker.record(True, float(i))
    breaker.record(False, 18.0)  # 1 in 19: 5.3% > 5%
    assert not breaker.allows


def test_error_rate_at_the_threshold_keeps_it_closed() -> None:
    breaker = CircuitBreaker(window=20, error_rate=0.05, min_turns=10, consecutive_failures=99)
    breaker.record(False, 0.0)
    for i in range(19):
        breaker.record(True, float(i))
    assert breaker.error_rate == 0.05 and breaker.allows  # must *pass* 5%


def test_too_few_turns_are_not_judged_by_rate() -> None:
    breaker = CircuitBreaker(window=20, error_rate=0.05, min_turns=10, consecutive_failures=3)
    breaker.record(True, 0.0)
    breaker.record(False, 1.0)  # 50%, but only 2 turns
    assert breaker.allows


def test_probe_schedule_and_recovery() -> None:
    breaker = CircuitBreaker(consecutive_failures=1)
    breaker.record(False, 100.0)
    assert not breaker.probe_due(110.0, interval_s=15.0)
    assert breaker.probe_due(115.0, interval_s=15.0)
    breaker.probed(False, 115.0)
    assert not breaker.allows and not breaker.probe_due(120.0, interval_s=15.0)
    assert breaker.probe_due(130.0, interval_s=15.0)
    breaker.probed(True, 130.0)
    assert breaker.allows and breaker.error_rate == 0.0 and breaker.consecutive_failures == 0


@given(st.lists(st.booleans(), max_size=200))
def test_breaker_never_opens_on_success_alone_and_rate_is_bounded(outcomes: list[bool]) -> None:
    breaker = CircuitBreaker()
    for now, outcome in enumerate(outcomes):
        breaker.record(outcome, float(now))
        assert 0.0 <= breaker.error_rate <= 1.0
    if all(outcomes):
        assert breaker.allows


def config(**values: object) -> LlmConfig:
    cfg = LlmConfig(breaker_consecutive_failures=2, probe_interval_s=10.0)
    for key, value in values.items():
        setattr(cfg, key, value)
    return cfg


def test_chain_skips_open_engines_and_returns_to_the_primary_after_a_probe() -> None:
    now = [0.0]
    primary, backup = ScriptedLlm(["OK"], name="primary"), ScriptedLlm(["OK"], name="backup")
    chain = LlmChain([primary, backup], config(), clock=lambda: now[0])
    assert chain.candidates() == [primary, backup]
    chain.record(primary, success=False)
    chain.record(primary, success=False)
    assert chain.candidates() == [backup]
    assert chain.status()[0]["state"] == "open"

    primary.healthy = False
    now[0] = 11.0
    asyncio.run(chain.probe_due_engines())
    assert primary.calls == 1 and chain.candidates() == [backup]  # probe failed: stays open

    primary.healthy = True
    now[0] = 15.0
    asyncio.run(chain.probe_due_engines())
    assert primary.calls == 1  # not due yet: 4 s since the last probe
    now[0] = 21.5
    asyncio.run(chain.probe_due_engines())
    assert primary.calls == 2 and chain.candidates() == [primary, backup]


def test_probe_starts_with_the_system_prompt_so_the_turns_prefix_stays_cached() -> None:
    primary = ScriptedLlm(["OK"], name="primary")
    now = [0.0]
    chain = LlmChain([primary], config(), clock=lambda: now[0], system_prompt="Be brief.")
    chain.record(primary, success=False)
    chain.record(primary, success=False)
    now[0] = 11.0
    asyncio.run(chain.probe_due_engines())
    assert primary.calls == 1
    first = primary.prompts[0][0]
    assert (first.role, first.content) == ("system", "Be brief.")


def test_chain_with_every_breaker_open_still_tries_them_all() -> None:
    primary, backup = ScriptedLlm([], name="a"), ScriptedLlm([], name="b")
    chain = LlmChain([primary, backup], config(breaker_consecutive_failures=1))
    chain.record(primary, success=False)
    chain.record(backup, success=False)
    assert chain.candidates() == [primary, backup]


def test_probe_of_an_engine_that_answers_nothing_fails() -> None:
    now = [0.0]
    silent = ScriptedLlm([], name="silent")
    chain = LlmChain([silent], config(breaker_consecutive_failures=1), clock=lambda: now[0])
    chain.record(silent, success=False)
    now[0] = 60.0
    asyncio.run(chain.probe_due_engines())
    assert silent.calls == 1
    assert chain.status()[0]["state"] == "open"
