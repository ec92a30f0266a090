"""Metrics as pure logic: what a turn, an error and a session's end add; breaker states read
at scrape time; one registry per server."""

from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.fakes import ScriptedLlm
from voice_agent.config import LlmConfig
from voice_agent.llm.chain import LlmChain
from voice_agent.metrics import LATENCY_BUCKETS, Metrics
from voice_agent.server.protocol import TurnDone

pytestmark = pytest.mark.timeout(30)


def samples(metrics: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of the text exposition, keyed by name and sorted labels."""
    text = metrics.render().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def turn(status: str = "ok", **timings: float) -> TurnDone:
    return TurnDone(turn_id=1, status=status, transcript="hi", reply_text="hello",
                    engine="llama_cpp:x", audio_samples=100, timings_ms=dict(timings))


def test_a_turn_fills_the_stage_histograms_in_seconds() -> None:
    metrics = Metrics()
    metrics.observe_turn(turn(endpoint_wait_ms=450.0, asr_ms=150.0, llm_queue_ms=0.0,
                              llm_first_token_ms=80.0, first_audio_ms=700.0, total_ms=1400.0))
    got = samples(metrics)
    assert got[("voice_agent_turns_total", (("status", "ok"),))] == 1
    for name, seconds in [("endpoint_wait", 0.45), ("asr", 0.15), ("llm_queue", 0.0),
                          ("llm_first_token", 0.08), ("first_audio", 0.7),
                          ("voice_to_voice", 1.15)]:
        assert got[(f"voice_agent_{name}_seconds_count", ())] == 1, name
        assert got[(f"voice_agent_{name}_seconds_sum", ())] == pytest.approx(seconds), name
    # 0.45 s lands in the 0.5 s bucket, not below.
    assert got[("voice_agent_endpoint_wait_seconds_bucket", (("le", "0.3"),))] == 0
    assert got[("voice_agent_endpoint_wait_seconds_bucket", (("le", "0.5"),))] == 1
    assert LATENCY_BUCKETS[0] == 0.05 and LATENCY_BUCKETS[-1] == 10.0


def test_stages_a_turn_never_reached_are_not_observed() -> None:
    metrics = Metrics()
    metrics.observe_turn(turn("empty", endpoint_wait_ms=450.0, asr_ms=120.0))
    got = samples(metrics)
    assert got[("voice_agent_asr_seconds_count", ())] == 1
    assert got[("voice_agent_llm_first_token_seconds_count", ())] == 0
    assert got[("voice_agent_voice_to_voice_seconds_count", ())] == 0
    assert got[("voice_agent_turns_total", (("status", "empty"),))] == 1


def test_errors_fallbacks_sessions_and_dropped_samples() -> None:
    metrics = Metrics(load_seconds={"asr": 1.5, "llm": 2.0, "tts": 0.5})
    metrics.count_error("bad_json")
    metrics.count_error("bad_json")
    metrics.count_error("llm_unreachable")
    done = TurnDone(turn_id=2, status="ok", transcript="a", reply_text="b", engine="b",
                    audio_samples=1, fallbacks={"openai:x": "llm_unreachable"})
    metrics.observe_turn(done)
    metrics.session_opened()
    metrics.session_opened()
    metrics.session_closed({"processed": 16000, "dropped_after_end": 320,
                            "dropped_too_fast": 0})
    got = samples(metrics)
    assert got[("voice_agent_errors_total", (("code", "bad_json"),))] == 2
    assert got[("voice_agent_errors_total", (("code", "llm_unreachable"),))] == 1
    assert got[("voice_agent_llm_fallbacks_total",
                (("code", "llm_unreachable"), ("engine", "openai:x")))] == 1
    assert got[("voice_agent_sessions_open", ())] == 1
    assert got[("voice_agent_input_samples_processed_total", ())] == 16000
    assert got[("voice_agent_input_samples_dropped_total", (("reason", "after_end"),))] == 320
    assert ("voice_agent_input_samples_dropped_total", (("reason", "too_fast"),)) not in got
    assert got[("voice_agent_model_load_seconds", (("stage", "llm"),))] == 2.0


def test_breaker_state_is_read_when_scraped() -> None:
    # Fault injection: an engine that is down, so its breaker opens.
    down, up = ScriptedLlm([], name="down"), ScriptedLlm(["ok"], name="up")
    chain = LlmChain([down, up], LlmConfig(breaker_consecutive_failures=3))
    metrics = Metrics(chain)
    assert samples(metrics)[("voice_agent_llm_breaker_open", (("engine", "down"),))] == 0
    for _ in range(3):
        chain.record(down, success=False)
    got = samples(metrics)
    assert got[("voice_agent_llm_breaker_open", (("engine", "down"),))] == 1
    assert got[("voice_agent_llm_breaker_open", (("engine", "up"),))] == 0
    assert got[("voice_agent_llm_breaker_error_rate", (("engine", "down"),))] == 1.0


def test_each_server_has_its_own_registry() -> None:
    first, second = Metrics(), Metrics()
    first.observe_turn(turn(asr_ms=100.0))
    assert samples(first)[("voice_agent_asr_seconds_count", ())] == 1
    assert samples(second)[("voice_agent_asr_seconds_count", ())] == 0


def test_every_metric_is_prefixed_and_documented() -> None:
    metrics = Metrics(load_seconds={"asr": 1.0})
    metrics.count_error("x")
    metrics.session_closed({"dropped_x": 1})
    families = list(text_string_to_metric_families(metrics.render().decode()))
    assert len(families) >= 14
    for family in families:
        assert family.name.startswith("voice_agent_"), family.name
        assert len(family.documentation) > 10, family.name
