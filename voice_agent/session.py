"""The session/turn state machine: audio and control in, actions out. No I/O, no clock.

The connection (WebSocket, microphone) feeds it client PCM and control messages and carries
out the actions it returns: send an event, start a turn (ASR→LLM→TTS), cancel a turn,
close. That keeps every decision about turns testable without sockets or models.

States::

    LISTENING --speech--> USER_SPEAKING --end of turn--> RESPONDING --turn_finished--> LISTENING
                               ^                              |
                               +------ speech (barge-in) -----+   (cancels the reply)

``end`` from the client moves to ENDING: the open utterance is finished, its reply runs to
completion, then the session closes normally.
"""

from __future__ import annotations

import enum
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from voice_agent.audio.frontend import FRAME_SAMPLES, Frontend
from voice_agent.audio.pcm import (
    PIPELINE_RATE,
    Framer,
    Int16Array,
    StreamResampler,
    bytes_to_int16,
)
from voice_agent.audio.vad import (
    Endpointer,
    EndpointEvent,
    SpeechDiscarded,
    SpeechEnd,
    SpeechStart,
    VoiceDetector,
)
from voice_agent.config import VadConfig
from voice_agent.server.protocol import (
    ErrorEvent,
    ServerEvent,
    SpeechStarted,
    SpeechStopped,
    TurnDone,
)


class State(enum.Enum):
    LISTENING = "listening"
    USER_SPEAKING = "user_speaking"
    RESPONDING = "responding"
    ENDING = "ending"
    CLOSED = "closed"


@dataclass(frozen=True)
class Emit:
    event: ServerEvent


@dataclass(frozen=True)
class StartTurn:
    turn_id: int
    audio: Int16Array = field(repr=False)
    endpoint_wait_ms: int
    """Stream time from the last speech frame to the end-of-turn decision."""


@dataclass(frozen=True)
class CancelTurn:
    turn_id: int
    reason: str


@dataclass(frozen=True)
class Close:
    reason: str


Action = Emit | StartTurn | CancelTurn | Close


class Session:
    """One conversation's input side and turn bookkeeping.

    ``barge_in``: speech while the appliance is replying cancels the reply (needs echo
    cancellation on an open speaker). Without it, input is dropped while replying
    (half-duplex), and counted as dropped.
    """

    def __init__(
        self,
        *,
        vad_config: VadConfig,
        frontend: Frontend,
        vad: VoiceDetector,
        input_rate: int,
        barge_in: bool = True,
        turn_gate: Callable[[], bool] | None = None,
    ) -> None:
        """``turn_gate`` is asked before each utterance's turn starts (turns per minute); a
        refused utterance gets ``rate_limited`` and its ``turn_done`` (status ``error``) at
        once, and is not answered."""
        self.state = State.LISTENING
        self._turn_gate = turn_gate
        self.barge_in = barge_in
        self._frontend = frontend
        self._vad = vad
        self._endpointer = Endpointer(vad_config)
        self._resampler = StreamResampler(input_rate, PIPELINE_RATE)
        self._framer = Framer(FRAME_SAMPLES)
        self._turn_id = 0
        self._active_turn: int | None = None
        self.processed_samples = 0
        self.dropped: Counter[str] = Counter()
        self.muted = False
        """Set by the owner while input must not be listened to (its own reply is playing on
        an open speaker): audio is dropped and counted, stream time goes on."""

    @property
    def active_turn(self) -> int | None:
        return self._active_turn

    def input_stats(self) -> dict[str, int]:
        stats = {"processed": self.processed_samples}
        stats.update({f"dropped_{reason}": n for reason, n in self.dropped.items()})
        return stats

    def audio(self, pcm: bytes) -> list[Action]:
        """Client PCM16 at the input rate; raises ``bad_audio`` for an odd byte count."""
        samples = bytes_to_int16(pcm)
        if self.state in (State.ENDING, State.CLOSED):
            # Counted in pipeline (16 kHz) samples, like everything in input_stats().
            self.dropped["after_end"] += samples.size * PIPELINE_RATE // self._resampler.rate_in
            return []
        actions: list[Action] = []
        for frame in self._framer.push(self._resampler.process(samples)):
            actions.extend(self._frame(frame))
        return actions

    def drop(self, pcm: bytes, reason: str) -> None:
        """Count client PCM the owner refused unprocessed (``too_fast``), in pipeline
        samples; it does not advance stream time."""
        samples = bytes_to_int16(pcm)
        self.dropped[reason] += samples.size * PIPELINE_RATE // self._resampler.rate_in

    def _frame(self, frame: Int16Array) -> list[Action]:
        if self.muted or (self.state is State.RESPONDING and not self.barge_in):
            self.dropped["muted" if self.muted else "responding"] += frame.size
            self._endpointer.skip()  # keep stream time (audio_ms) counting the dropped audio
            return []
        self.processed_samples += frame.size
        cleaned = self._frontend.process(frame)
        events = self._endpointer.push(cleaned, self._vad.is_speech(cleaned))
        return [a for event in events for a in self._on_endpoint(event)]

    def _on_endpoint(self, event: EndpointEvent) -> list[Action]:
        actions: list[Action] = []
        if isinstance(event, SpeechStart):
            if self._active_turn is not None:
                actions.append(CancelTurn(self._active_turn, "barge_in"))
                self._active_turn = None
            self._turn_id += 1
            if self.state is not State.ENDING:
                self.state = State.USER_SPEAKING
            actions.append(Emit(SpeechStarted(turn_id=self._turn_id, audio_ms=event.at_ms)))
        elif isinstance(event, SpeechEnd):
            actions.append(Emit(SpeechStopped(
                turn_id=self._turn_id,
                audio_ms=event.at_ms,
                speech_end_ms=event.speech_end_ms,
                reason=event.reason,
            )))
            if self._turn_gate is not None and not self._turn_gate():
                return actions + self._refuse_turn(self._turn_id)
            actions.append(StartTurn(
                turn_id=self._turn_id,
                audio=event.audio,
                endpoint_wait_ms=event.at_ms - event.speech_end_ms,
            ))
            self._active_turn = self._turn_id
            if self.state is not State.ENDING:
                self.state = State.RESPONDING
        elif isinstance(event, SpeechDiscarded) and self.state is State.USER_SPEAKING:
            self.state = State.LISTENING
        return actions

    def _refuse_turn(self, turn_id: int) -> list[Action]:
        if self.state is State.USER_SPEAKING:
            self.state = State.LISTENING
        return [
            Emit(ErrorEvent(code="rate_limited", transient=True, turn_id=turn_id,
                            message="too many turns this minute; this one was not answered")),
            Emit(TurnDone.unrun(turn_id, "error")),
        ]

    def cancel(self) -> list[Action]:
        """The client asked to stop the current reply."""
        if self._active_turn is None:
            return []
        turn, self._active_turn = self._active_turn, None
        if self.state is State.RESPONDING:
            self.state = State.LISTENING
        return [CancelTurn(turn, "client")]

    def turn_finished(self, turn_id: int) -> list[Action]:
        """The connection reports that a turn's terminal event was sent."""
        if turn_id == self._active_turn:
            self._active_turn = None
            if self.state is State.RESPONDING:
                self.state = State.LISTENING
        return self._maybe_close()

    def end(self) -> list[Action]:
        """No more input: flush the resampler and any open utterance, then close when the
        last reply is done."""
        if self.state in (State.ENDING, State.CLOSED):
            return []
        actions: list[Action] = []
        tail = self._resampler.flush()
        pending = self._framer.push(tail)
        for frame in pending:
            actions.extend(self._frame(frame))
        if self._framer.pending:
            self.dropped["partial_frame"] += self._framer.pending
        self.state = State.ENDING
        for event in self._endpointer.flush():
            actions.extend(self._on_endpoint(event))
        return actions + self._maybe_close()

    def _maybe_close(self) -> list[Action]:
        if self.state is State.ENDING and self._active_turn is None:
            self.state = State.CLOSED
            return [Close("end")]
        return []


def silence(ms: int, rate: int = PIPELINE_RATE) -> bytes:
    """``ms`` of PCM16 silence (for flushing and tests)."""
    return np.zeros(rate * ms // 1000, dtype="<i2").tobytes()
