"""Echo cancelling frontend: WebRTC AEC3 (through ``livekit``) ahead of noise suppression.

The appliance's own voice comes back into its microphone through the room. With what it is
playing as the reference (:meth:`EchoCancellingFrontend.feed_reference`, every 10 ms frame,
zeros when silent), AEC3 removes that echo from the capture so the VAD and ASR hear the
person, not the appliance: full duplex on open speakers. AEC3 finds the echo's delay
itself (measured here from 20 to 100 ms with no hint), so a reference that is only roughly
in step (a client that never reports its playback position) still cancels.

The chain per capture frame: APM (AEC3 + high-pass, noise suppression off) then the same
``webrtc-noise-gain`` NS/AGC as :class:`~voice_agent.audio.frontend.WebRtcFrontend` at
``frontend.noise_suppression`` / ``auto_gain_dbfs``. Why not APM's own NS: it has one fixed
level, and on the echo benchmark (``benchmarks/echo.py``) it took 0-6 dB more echo out but
was no better for the person's words over the echo (barge-in WER 64.6/76.2% at +5/+10 dB
echo against 60.0/85.4%) than the level-2 suppressor measured before (see the README).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from voice_agent.audio.frontend import FRAME_SAMPLES, Frontend, PassthroughFrontend
from voice_agent.audio.pcm import PIPELINE_RATE, Int16Array
from voice_agent.errors import ConfigError


def _load_rtc() -> Any:
    try:
        from livekit import rtc
    except ImportError as exc:
        raise ConfigError(
            "frontend.echo_cancellation needs the livekit package (WebRTC AEC3): install it "
            "(pip install 'livekit>=1.2.1,<2') or set frontend.echo_cancellation = false"
        ) from exc
    return rtc


class EchoCancellingFrontend:
    """AEC3 on the capture with the played audio as reference, then NS/AGC.

    One instance per session (the canceller adapts to the room). Frames are 10 ms, 16 kHz.
    """

    def __init__(self, *, noise_suppression: int = 2, auto_gain_dbfs: int = 0,
                 apm_noise_suppression: bool = False) -> None:
        rtc = _load_rtc()
        self._rtc = rtc
        self._apm = rtc.AudioProcessingModule(
            echo_cancellation=True, high_pass_filter=True,
            noise_suppression=apm_noise_suppression)
        self._post: Frontend = PassthroughFrontend()
        if noise_suppression or auto_gain_dbfs:
            from voice_agent.audio.frontend import WebRtcFrontend

            self._post = WebRtcFrontend(noise_suppression=noise_suppression,
                                        auto_gain_dbfs=auto_gain_dbfs)

    def feed_reference(self, frame: Int16Array) -> None:
        self._apm.process_reverse_stream(self._frame(frame))

    def process(self, frame: Int16Array) -> Int16Array:
        audio = self._frame(frame)
        self._apm.process_stream(audio)
        cleaned = np.frombuffer(audio.data, dtype=np.int16).copy()
        return self._post.process(cleaned)

    def _frame(self, frame: Int16Array) -> Any:
        if frame.size != FRAME_SAMPLES:
            raise ValueError(f"frontend frames are {FRAME_SAMPLES} samples, got {frame.size}")
        # A bytearray: the APM works in place on the frame's buffer.
        data = bytearray(np.asarray(frame, dtype="<i2").tobytes())
        return self._rtc.AudioFrame(data, PIPELINE_RATE, 1, FRAME_SAMPLES)
