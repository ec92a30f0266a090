"""The embedded Piper voice: streaming, cancel, and the per-reply speaking rate."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from voice_agent.engines import Engines

pytestmark = pytest.mark.slow

TEXT = "I understand. Let me sort that out for you right away."


def seconds(engines: Engines, rate_factor: float) -> float:
    chunks = engines.tts.synthesize(TEXT, threading.Event(), rate_factor=rate_factor)
    return sum(c.size for c in chunks) / engines.tts.sample_rate


def test_speaks_int16_audio_of_plausible_length(engines: Engines) -> None:
    chunks = list(engines.tts.synthesize(TEXT, threading.Event()))
    assert chunks and all(c.dtype == np.int16 for c in chunks)
    audio = np.concatenate(chunks)
    assert 2.0 < audio.size / engines.tts.sample_rate < 6.0
    assert np.abs(audio).max() > 3000


def test_rate_factor_slows_the_speech(engines: Engines) -> None:
    """Piper's durations carry their own noise (a few percent run to run), so compare
    factors far enough apart: 1.5 must be clearly longer, 0.8 clearly shorter."""
    normal = seconds(engines, 1.0)
    assert seconds(engines, 1.5) > 1.2 * normal
    assert seconds(engines, 0.8) < 0.95 * normal


def test_cancel_stops_before_the_next_sentence(engines: Engines) -> None:
    cancel = threading.Event()
    chunks = engines.tts.synthesize(TEXT, cancel)
    next(chunks)
    cancel.set()
    assert list(chunks) == []
