"""Prometheus metrics for ``GET /metrics``.

Each :class:`Metrics` owns its own ``CollectorRegistry`` rather than the process-global
one: tests (and a process embedding the server) run several servers side by side, and
each must report only its own turns. Latencies are histograms in seconds, the Prometheus
convention, with buckets spread over what a spoken exchange spans (50 ms .. 10 s).

``voice_agent_voice_to_voice_seconds`` is the server's share of voice-to-voice: from the
last speech frame to the first reply audio sent, i.e. the endpoint wait (the silence that
decides the turn is over) plus ``first_audio_ms`` (end of turn decided → first reply audio).
The network and the client's playback buffer come on top; ``voice-agent client --json``
measures the whole of it.

Breaker states are read from the LLM chain when scraped, so they are never stale.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from voice_agent.server.protocol import TurnDone

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

LATENCY_BUCKETS = (0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 7.5, 10.0)
"""Seconds. Fine below 1 s, where a voice product lives; anything past 10 s is a failure."""

# TurnDone.timings_ms key -> (metric name, help). Only stages a turn reached are observed.
STAGES: dict[str, tuple[str, str]] = {
    "endpoint_wait_ms": ("endpoint_wait_seconds",
                         "Silence after the last speech frame before the turn was ended."),
    "asr_ms": ("asr_seconds", "Speech recognition of one utterance."),
    "llm_queue_ms": ("llm_queue_seconds",
                     "Waiting for an LLM engine to be free (queue time, not engine time)."),
    "llm_first_token_ms": ("llm_first_token_seconds",
                           "LLM time to first token (TTFT) of the answering engine."),
    "first_audio_ms": ("first_audio_seconds",
                       "End of turn decided to the first reply audio sent (first spoken word)."),
}


class BreakerSource(Protocol):
    """What the breaker collector reads: ``LlmChain.status()``."""

    def status(self) -> list[dict[str, object]]: ...


class _BreakerCollector(Collector):
    def __init__(self, chain: BreakerSource) -> None:
        self._chain = chain

    def collect(self) -> Iterable[Metric]:
        is_open = GaugeMetricFamily(
            "voice_agent_llm_breaker_open",
            "1 while the engine's circuit breaker is open (it gets no turns), else 0.",
            labels=["engine"])
        error_rate = GaugeMetricFamily(
            "voice_agent_llm_breaker_error_rate",
            "The engine's error rate over the breaker window (0..1).",
            labels=["engine"])
        for link in self._chain.status():
            engine = str(link["engine"])
            is_open.add_metric([engine], 1.0 if link["state"] == "open" else 0.0)
            rate = link.get("error_rate", 0.0)
            error_rate.add_metric([engine], float(rate) if isinstance(rate, int | float) else 0.0)
        yield is_open
        yield error_rate


class Metrics:
    """Every metric of one server. The ``observe_*``/``count_*`` calls are cheap and never
    raise on odd input (a metric must not cost a turn)."""

    def __init__(self, chain: BreakerSource | None = None,
                 load_seconds: Mapping[str, float] | None = None) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self._stages = {
            key: Histogram(f"voice_agent_{name}", text, buckets=LATENCY_BUCKETS, registry=r)
            for key, (name, text) in STAGES.items()
        }
        self._voice_to_voice = Histogram(
            "voice_agent_voice_to_voice_seconds",
            "Server side of voice-to-voice: last speech frame to first reply audio sent "
            "(endpoint wait + first_audio).", buckets=LATENCY_BUCKETS, registry=r)
        self._turns = Counter("voice_agent_turns", "Turns ended, by status "
                              "(ok, empty, cancelled, error).", ["status"], registry=r)
        self._errors = Counter("voice_agent_errors", "Error events sent to clients, by code.",
                               ["code"], registry=r)
        self._fallbacks = Counter(
            "voice_agent_llm_fallbacks",
            "Times an LLM engine failed a turn and the next one was tried (or the apology "
            "spoken), by engine and error code.", ["engine", "code"], registry=r)
        self._dropped = Counter("voice_agent_input_samples_dropped",
                                "Input samples (16 kHz) dropped, by reason; counted when "
                                "a session ends.", ["reason"], registry=r)
        self._processed = Counter("voice_agent_input_samples_processed",
                                  "Input samples (16 kHz) processed; counted when a session "
                                  "ends.", registry=r)
        self._sessions = Gauge("voice_agent_sessions_open", "Started sessions now open.",
                               registry=r)
        self._load = Gauge("voice_agent_model_load_seconds",
                           "Seconds it took to load each stage's model at start.", ["stage"],
                           registry=r)
        for stage, seconds in (load_seconds or {}).items():
            self._load.labels(stage).set(seconds)
        if chain is not None:
            r.register(_BreakerCollector(chain))

    def observe_turn(self, done: TurnDone) -> None:
        self._turns.labels(done.status).inc()
        timings = done.timings_ms
        for key, histogram in self._stages.items():
            value = timings.get(key)
            if isinstance(value, int | float) and value >= 0:
                histogram.observe(value / 1000)
        wait, first = timings.get("endpoint_wait_ms"), timings.get("first_audio_ms")
        if isinstance(wait, int | float) and isinstance(first, int | float):
            self._voice_to_voice.observe((wait + first) / 1000)
        for engine, code in done.fallbacks.items():
            self._fallbacks.labels(engine, code).inc()

    def count_error(self, code: str) -> None:
        self._errors.labels(code).inc()

    def session_opened(self) -> None:
        self._sessions.inc()

    def session_closed(self, input_stats: Mapping[str, int]) -> None:
        self._sessions.dec()
        for key, count in input_stats.items():
            if key == "processed":
                self._processed.inc(max(0, count))
            elif key.startswith("dropped_") and count > 0:
                self._dropped.labels(key.removeprefix("dropped_")).inc(count)

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric."""
        return generate_latest(self.registry)
