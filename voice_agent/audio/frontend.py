"""Audio frontend: what happens to microphone samples before VAD and ASR.

The frontend works on 10 ms frames of 16 kHz int16. It is fed two streams: the captured
audio (:meth:`Frontend.process`) and, for echo cancellation, the audio the appliance is
playing (:meth:`Frontend.feed_reference`). The WebRTC NS/AGC frontend ignores the reference;
an AEC frontend (WebRTC AEC3) uses it so people can interrupt the appliance while it speaks.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

import numpy as np

from voice_agent.audio.pcm import PIPELINE_RATE, Framer, Int16Array

if TYPE_CHECKING:
    from voice_agent.config import FrontendConfig

FRAME_SAMPLES = PIPELINE_RATE // 100
"""10 ms at 16 kHz: the frame size every frontend and the VAD use."""


class Frontend(Protocol):
    def process(self, frame: Int16Array) -> Int16Array:
        """Clean one 10 ms capture frame; returns a frame of the same length."""
        ...

    def feed_reference(self, frame: Int16Array) -> None:
        """Tell the frontend what is being played now (10 ms, 16 kHz), for echo cancelling."""
        ...


class PassthroughFrontend:
    """No processing at all (for A/B measurements and clean line-level input)."""

    def process(self, frame: Int16Array) -> Int16Array:
        return frame

    def feed_reference(self, frame: Int16Array) -> None:
        return None


class WebRtcFrontend:
    """WebRTC high-pass + noise suppression + optional AGC (``webrtc-noise-gain``).

    One instance per session: the suppressor adapts its noise estimate over time.
    """

    def __init__(self, *, noise_suppression: int = 2, auto_gain_dbfs: int = 0) -> None:
        from webrtc_noise_gain import AudioProcessor

        self._processor = AudioProcessor(auto_gain_dbfs, noise_suppression)

    def process(self, frame: Int16Array) -> Int16Array:
        if frame.size != FRAME_SAMPLES:
            raise ValueError(f"frontend frames are {FRAME_SAMPLES} samples, got {frame.size}")
        result = self._processor.Process10ms(frame.astype("<i2").tobytes())
        return np.frombuffer(result.audio, dtype="<i2").astype(np.int16)

    def feed_reference(self, frame: Int16Array) -> None:
        # NS/AGC have no echo path; the reference matters only to an AEC frontend.
        return None


def process_recording(frontend: Frontend, audio: Int16Array) -> Int16Array:
    """A whole recording through ``frontend`` in 10 ms frames, as a live stream is fed; a
    partial last frame is left out (empty for less than one frame)."""
    frames = Framer(FRAME_SAMPLES).push(audio)
    if not frames:
        return np.zeros(0, np.int16)
    return np.concatenate([frontend.process(frame) for frame in frames])


def make_frontend(config: FrontendConfig) -> Frontend:
    """A new frontend for one session: AEC3 then NS/AGC when ``echo_cancellation`` is on,
    else NS/AGC alone, else nothing."""
    if config.echo_cancellation:
        from voice_agent.audio.aec import EchoCancellingFrontend

        return EchoCancellingFrontend(noise_suppression=config.noise_suppression,
                                      auto_gain_dbfs=config.auto_gain_dbfs)
    if config.noise_suppression == 0 and config.auto_gain_dbfs == 0:
        return PassthroughFrontend()
    return WebRtcFrontend(noise_suppression=config.noise_suppression,
                          auto_gain_dbfs=config.auto_gain_dbfs)
