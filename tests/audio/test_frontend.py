"""Audio frontends: passthrough and WebRTC noise suppression on 10 ms frames."""

from __future__ import annotations

import numpy as np
import pytest

from voice_agent.audio.aec import EchoCancellingFrontend
from voice_agent.audio.frontend import (
    FRAME_SAMPLES,
    PassthroughFrontend,
    WebRtcFrontend,
    make_frontend,
    process_recording,
)
from voice_agent.audio.pcm import rms_dbfs
from voice_agent.config import FrontendConfig


def _frontend(ns: int, agc: int, aec: bool = False) -> object:
    return make_frontend(FrontendConfig(noise_suppression=ns, auto_gain_dbfs=agc,
                                        echo_cancellation=aec))


def test_make_frontend_picks_passthrough_only_when_everything_is_off() -> None:
    assert isinstance(_frontend(0, 0), PassthroughFrontend)
    assert isinstance(_frontend(2, 0), WebRtcFrontend)
    assert isinstance(_frontend(0, 3), WebRtcFrontend)


def test_make_frontend_cancels_echo_by_default() -> None:
    assert FrontendConfig().echo_cancellation
    assert isinstance(make_frontend(FrontendConfig()), EchoCancellingFrontend)
    assert isinstance(_frontend(0, 0, aec=True), EchoCancellingFrontend)


def test_passthrough_returns_the_frame() -> None:
    frame = np.arange(FRAME_SAMPLES, dtype=np.int16)
    frontend = PassthroughFrontend()
    assert frontend.process(frame) is frame
    assert frontend.feed_reference(frame) is None


@pytest.mark.parametrize("samples", [0, FRAME_SAMPLES - 1, FRAME_SAMPLES, 5 * FRAME_SAMPLES + 37])
def test_a_recording_goes_through_in_whole_frames(samples: int) -> None:
    audio = np.random.default_rng(samples).integers(-3000, 3000, samples).astype(np.int16)
    whole = samples // FRAME_SAMPLES * FRAME_SAMPLES
    assert np.array_equal(process_recording(PassthroughFrontend(), audio), audio[:whole])
    by_frame = WebRtcFrontend(noise_suppression=2, auto_gain_dbfs=0)
    expected = [by_frame.process(audio[i:i + FRAME_SAMPLES])
                for i in range(0, whole, FRAME_SAMPLES)]
    cleaned = process_recording(WebRtcFrontend(noise_suppression=2, auto_gain_dbfs=0), audio)
    assert cleaned.dtype == np.int16 and cleaned.size == whole
    assert np.array_equal(cleaned, np.concatenate([np.zeros(0, np.int16), *expected]))


def test_webrtc_frontend_rejects_other_frame_sizes() -> None:
    with pytest.raises(ValueError, match=str(FRAME_SAMPLES)):
        WebRtcFrontend().process(np.zeros(FRAME_SAMPLES * 2, dtype=np.int16))


def test_webrtc_noise_suppression_lowers_steady_noise() -> None:
    rng = np.random.default_rng(0)
    noise = rng.normal(0, 1000, FRAME_SAMPLES * 300).astype(np.int16)
    frontend = WebRtcFrontend(noise_suppression=3)
    out = np.concatenate([
        frontend.process(noise[i : i + FRAME_SAMPLES])
        for i in range(0, noise.size, FRAME_SAMPLES)
    ])
    assert out.dtype == np.int16 and out.size == noise.size
    # Once the suppressor has adapted (last second), the noise is clearly quieter.
    tail = slice(-FRAME_SAMPLES * 100, None)
    assert rms_dbfs(out[tail]) < rms_dbfs(noise[tail]) - 6
