"""Silero: alone it agrees with WebRTC VAD on real speech and on silence; confirming webrtcvad's
frames it keeps the speech and drops what webrtcvad takes for speech in recorded noise."""

from __future__ import annotations

import numpy as np
import pytest

from tests.conftest import harvard_clips
from voice_agent.audio.frontend import FRAME_SAMPLES
from voice_agent.audio.pcm import Framer, read_audio
from voice_agent.audio.room import load_noises, scale_to_dbfs
from voice_agent.audio.vad import (
    ConfirmedVad,
    SileroScore,
    SileroVad,
    VoiceDetector,
    WebRtcVad,
    make_vad,
)
from voice_agent.bench import shared_audio_dir
from voice_agent.config import VadConfig


def speech_flags(vad: VoiceDetector, samples: np.ndarray) -> np.ndarray:
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


def test_confirmed_vad_keeps_speech_and_drops_steady_noise() -> None:
    shared = shared_audio_dir()
    if shared is None:
        pytest.skip("needs ../shared/audio (recorded noise)")
    noises = load_noises(shared)
    speech, _ = read_audio(harvard_clips()[0].path)
    confirmed = speech_flags(ConfirmedVad(2, 0.3), speech)
    webrtc = speech_flags(WebRtcVad(2), speech)
    assert confirmed.sum() >= 0.9 * webrtc.sum()
    for name in ("noise3", "noise5"):  # steady machine and room noise, at a speaking level
        noise = np.round(scale_to_dbfs(noises[name], -40)).astype(np.int16)
        alone = speech_flags(WebRtcVad(2), noise)
        checked = speech_flags(ConfirmedVad(2, 0.3), noise)
        assert alone.mean() > 0.2, f"{name}: webrtcvad no longer takes it for speech"
        assert checked.mean() < 0.2 * alone.mean(), name


def test_a_models_state_does_not_follow_it_into_the_next_session() -> None:
    samples, _ = read_audio(harvard_clips()[0].path)
    first = SileroScore()
    fresh = [first.probability(f) for f in Framer(FRAME_SAMPLES).push(samples[:8000])]
    del first
    used = SileroScore()
    for frame in Framer(FRAME_SAMPLES).push(samples):
        used.probability(frame)
    del used  # its model goes back to the pool, to be reset before it is used again
    again = SileroScore()
    assert [again.probability(f) for f in Framer(FRAME_SAMPLES).push(samples[:8000])] == fresh


def test_one_scorer_serves_both_listeners_of_a_stream() -> None:
    """A session's VAD and its over-the-reply listener ask one scorer about each frame: the
    second ask must not feed the frame again (a stream model would hear it twice)."""
    samples, _ = read_audio(harvard_clips()[0].path)
    alone, shared = SileroScore(), SileroScore()
    for frame in Framer(FRAME_SAMPLES).push(samples):
        expected = alone.probability(frame)
        assert shared.probability(frame) == expected
        assert shared.probability(frame) == expected
