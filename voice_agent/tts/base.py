"""The TTS engine interface."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Protocol

from voice_agent.audio.pcm import Int16Array


class TtsEngine(Protocol):
    sample_rate: int
    """Rate of the PCM the engine yields."""

    def synthesize(
        self, text: str, cancel: threading.Event, *, rate_factor: float = 1.0
    ) -> Iterator[Int16Array]:
        """Yield mono int16 chunks for ``text``. Blocking: iterate in an executor thread.

        ``rate_factor`` stretches the speech (>1 slower) on top of the configured rate."""
        ...
