"""Fault-injection doubles. Never a substitute for the real engines: they stand in only
where a test needs an engine to fail in a precise way."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence

from voice_agent.audio.pcm import Int16Array
from voice_agent.errors import EngineError
from voice_agent.llm.base import ChatMessage
from voice_agent.server.protocol import ServerEvent
from voice_agent.tts.base import TtsEngine


class Recorder:
    def __init__(self) -> None:
        self.events: list[ServerEvent] = []
        self.arrived: list[float] = []
        """``time.perf_counter()`` when each of ``events`` came."""
        self.pcm = bytearray()

    async def event(self, event: ServerEvent) -> None:
        self.events.append(event)
        self.arrived.append(time.perf_counter())

    async def audio(self, pcm: bytes) -> None:
        self.pcm += pcm


class ScriptedLlm:
    """Streams fixed pieces; then hangs, raises, or ends (fault injection only)."""

    def __init__(self, pieces: list[str], *, then: str = "end", delay_s: float = 0.0,
                 opens_reasoning: bool = False, name: str = "scripted") -> None:
        self.name = name
        self.pieces, self.then, self.delay_s = pieces, then, delay_s
        self.calls = 0
        self.healthy = True
        """Set False to make every call fail at once (an engine that is down)."""
        self.opens_reasoning = opens_reasoning
        self.stopped = threading.Event()
        self.prompts: list[list[ChatMessage]] = []
        """The messages of every call, to check what the turn told the model."""
        self.called_at: list[float] = []
        """``time.perf_counter()`` when each call started."""

    def stream(self, messages: Sequence[ChatMessage], cancel: threading.Event) -> Iterator[str]:
        self.calls += 1
        self.called_at.append(time.perf_counter())
        self.prompts.append(list(messages))
        if not self.healthy:
            raise EngineError(f"{self.name} is down", code="llm_unreachable")
        for piece in self.pieces:
            time.sleep(self.delay_s)
            if cancel.is_set():
                self.stopped.set()
                return
            yield piece
        if self.then == "raise":
            raise EngineError("injected failure", code="llm_failed")
        if self.then == "bug":
            raise RuntimeError("an engine bug, not an EngineError")
        if self.then == "hang":
            cancel.wait(30)
            self.stopped.set()


class RateRecordingTts:
    """The real Piper voice, noting the speaking-rate factor of every sentence (a recorder,
    not a stand-in: it speaks with the engine it is given)."""

    def __init__(self, tts: TtsEngine) -> None:
        self.tts, self.sample_rate = tts, tts.sample_rate
        self.rates: list[float] = []

    def synthesize(
        self, text: str, cancel: threading.Event, *, rate_factor: float = 1.0
    ) -> Iterator[Int16Array]:
        self.rates.append(rate_factor)
        return self.tts.synthesize(text, cancel, rate_factor=rate_factor)
