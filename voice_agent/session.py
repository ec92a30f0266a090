"""The session/turn state machine: audio and control in, actions out. No I/O, no clock.

The connection (WebSocket, microphone) feeds it client PCM and control messages and carries
out the actions it returns: send an event, start a turn (ASR→LLM→TTS), cancel a turn,
close. That keeps every decision about turns testable without sockets or models.

States::

    LISTENING --speech--> USER_SPEAKING --end of turn--> RESPONDING --turn_finished--> LISTENING
                            ^      ^                          |
                            |      +--- speech, reply unheard-+   (resumed: the same turn)
                            +--------- speech, reply heard ---+   (barge-in: cancels it)

Turn-taking (``[turn]``, issue 8): at a pause (``turn.speculate_after_ms`` of silence) the
end-of-turn model judges the utterance, which sets how much silence ends it; meanwhile a
:class:`Speculate` action starts the answer with its output held. Speech before the end
abandons that work (:class:`AbandonTurn`, nothing reaches the client); the end commits it
(:class:`CommitTurn`). Speech within ``turn.resume_window_ms`` of the end, before any of the
reply can have been heard, continues the same turn: its reply is abandoned unheard, the
client gets ``speech_resumed``, and the whole utterance is answered once.

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
    SpeechContinued,
    SpeechEnd,
    SpeechPause,
    SpeechStart,
    VoiceDetector,
)
from voice_agent.config import TurnConfig, VadConfig
from voice_agent.server.protocol import (
    ErrorEvent,
    ServerEvent,
    SpeechResumed,
    SpeechStarted,
    SpeechStopped,
    TranscriptPartial,
    TurnDone,
)

FIXED_SILENCE = TurnConfig(endpoint="silence", speculate=False, resume_window_ms=0,
                           partial_interval_ms=0)
"""Turn-taking as it was before issue 8: a fixed ``vad.end_silence_ms``, nothing else."""



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
class Speculate:
    """Start answering ``audio`` before the turn is decided; hold every output until a
    :class:`CommitTurn`, drop it all on an :class:`AbandonTurn`."""

    turn_id: int
    audio: Int16Array = field(repr=False)
    endpoint_wait_ms: int
    """Stream time from the last speech frame to the start of the speculation."""


@dataclass(frozen=True)
class JudgeTurn:
    """Ask the end-of-turn model about the utterance at this pause; the answer comes back
    through :meth:`Session.judged` (until it does, the long silence applies)."""

    turn_id: int
    audio: Int16Array = field(repr=False)
    pause_at_ms: int
    """Which pause this is (stream time of the pause): a late answer to an earlier pause
    of the same utterance is ignored."""


@dataclass(frozen=True)
class CommitTurn:
    """The turn being speculated on is decided: release its output and let it finish."""

    turn_id: int
    endpoint_wait_ms: int


@dataclass(frozen=True)
class AbandonTurn:
    """Throw the turn's running work away unheard, with no ``turn_done``: the person went on
    speaking, and the same turn continues."""

    turn_id: int


@dataclass(frozen=True)
class Transcribe:
    """Transcribe the utterance so far for a ``transcript_partial`` (may be skipped)."""

    turn_id: int
    audio: Int16Array = field(repr=False)
    audio_ms: int


@dataclass(frozen=True)
class CancelTurn:
    turn_id: int
    reason: str


@dataclass(frozen=True)
class Close:
    reason: str


Action = (Emit | StartTurn | Speculate | JudgeTurn | CommitTurn | AbandonTurn | Transcribe
          | CancelTurn | Close)


class Session:
    """One conversation's input side and turn bookkeeping.

    ``barge_in``: speech while the appliance is replying cancels the reply (needs echo
    cancellation on an open speaker). Without it, input is dropped once the reply can be
    heard (half-duplex), and counted as dropped.
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
        turn_config: TurnConfig = FIXED_SILENCE,
        judge_pauses: bool = False,
    ) -> None:
        """``turn_gate`` is asked before each utterance's turn starts (turns per minute); a
        refused utterance gets ``rate_limited`` and its ``turn_done`` (status ``error``) at
        once, and is not answered. ``judge_pauses``: an end-of-turn model is there to ask
        (``JudgeTurn``) when ``turn.endpoint`` is ``smart``; without one the fixed
        ``vad.end_silence_ms`` decides."""
        self.state = State.LISTENING
        self._turn_gate = turn_gate
        self.barge_in = barge_in
        self._frontend = frontend
        self._vad = vad
        self._turn = turn_config
        self._judge_pauses = judge_pauses and turn_config.endpoint == "smart"
        end_silence_ms = (turn_config.incomplete_silence_ms if self._judge_pauses
                          else vad_config.end_silence_ms)
        pause_ms = (turn_config.speculate_after_ms
                    if (self._judge_pauses or turn_config.speculate)
                    and turn_config.speculate_after_ms < end_silence_ms else None)
        self._endpointer = Endpointer(
            vad_config, end_silence_ms=end_silence_ms, pause_ms=pause_ms,
            keep_after_end_ms=turn_config.resume_window_ms + vad_config.pre_roll_ms)
        self._resampler = StreamResampler(input_rate, PIPELINE_RATE)
        self._framer = Framer(FRAME_SAMPLES)
        self._turn_id = 0
        self._active_turn: int | None = None
        self._speculating: int | None = None
        """The turn whose answer is being prepared during the current pause."""
        self._pause_at_ms: int | None = None
        """Stream time of the open utterance's current pause (None while speech goes on)."""
        self._decided_at_ms = 0
        """Stream time of the active turn's end-of-turn decision."""
        self._audible_at_ms: int | None = None
        """Stream time at which the active turn's reply audio started going out."""
        self._partial_at_ms = 0
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

    def _deaf(self) -> bool:
        """Half-duplex: the reply is (or may be) playing, so the input is not listened to."""
        return (self.state is State.RESPONDING and not self.barge_in
                and (self._audible_at_ms is not None or not self._turn.resume_window_ms))

    def _frame(self, frame: Int16Array) -> list[Action]:
        if self.muted or self._deaf():
            self.dropped["muted" if self.muted else "responding"] += frame.size
            self._endpointer.skip()  # keep stream time (audio_ms) counting the dropped audio
            return []
        self.processed_samples += frame.size
        cleaned = self._frontend.process(frame)
        speech = self._vad.is_speech(cleaned)
        events = self._endpointer.push(cleaned, speech)
        actions = [a for event in events for a in self._on_endpoint(event)]
        if speech and self.state is State.USER_SPEAKING:
            actions.extend(self._maybe_partial())
        return actions

    def _maybe_partial(self) -> list[Action]:
        interval, now_ms = self._turn.partial_interval_ms, self._endpointer.now_ms
        if not interval or now_ms - self._partial_at_ms < interval:
            return []
        self._partial_at_ms = now_ms
        return [Transcribe(self._turn_id, self._endpointer.utterance_audio(), now_ms)]

    def _on_endpoint(self, event: EndpointEvent) -> list[Action]:
        if isinstance(event, SpeechStart):
            return self._on_start(event)
        if isinstance(event, SpeechPause):
            return self._on_pause(event)
        if isinstance(event, SpeechContinued):
            self._pause_at_ms = None
            return self._stop_speculating()
        if isinstance(event, SpeechEnd):
            return self._on_end(event)
        # SpeechDiscarded: too short to be speech after all (a click, a cough). Its
        # speech_started still gets its one turn_done, so a client never waits on it.
        self._pause_at_ms = None
        actions = self._stop_speculating()
        if self.state is State.USER_SPEAKING:
            self.state = State.LISTENING
        return [*actions, Emit(TurnDone.unrun(self._turn_id, "empty"))]

    def _on_start(self, event: SpeechStart) -> list[Action]:
        actions: list[Action] = []
        self._partial_at_ms = event.at_ms
        if self._active_turn is not None:
            if self._reply_unheard(event.at_ms) and self._endpointer.resume():
                turn_id, self._active_turn = self._active_turn, None
                if self.state is not State.ENDING:
                    self.state = State.USER_SPEAKING
                return [AbandonTurn(turn_id),
                        Emit(SpeechResumed(turn_id=turn_id, audio_ms=event.at_ms))]
            if not self.barge_in:  # half-duplex: a reply is coming; this speech is not heard
                self._endpointer.reset()
                return []
            actions.append(CancelTurn(self._active_turn, "barge_in"))
            self._active_turn = None
        self._turn_id += 1
        if self.state is not State.ENDING:
            self.state = State.USER_SPEAKING
        actions.append(Emit(SpeechStarted(turn_id=self._turn_id, audio_ms=event.at_ms)))
        return actions

    def _reply_unheard(self, speech_at_ms: int) -> bool:
        """Whether speech starting at ``speech_at_ms`` began before the person could have
        heard any of the active turn's reply, within the resume window."""
        window = self._turn.resume_window_ms
        if not window or self.state is not State.RESPONDING:
            return False
        if speech_at_ms - self._decided_at_ms > window:
            return False
        return (self._audible_at_ms is None
                or speech_at_ms < self._audible_at_ms + self._turn.reply_heard_after_ms)

    def _on_pause(self, event: SpeechPause) -> list[Action]:
        actions: list[Action] = []
        self._pause_at_ms = event.at_ms
        if self._turn.speculate:
            self._speculating = self._turn_id
            actions.append(Speculate(self._turn_id, event.audio,
                                     event.at_ms - event.speech_end_ms))
        if self._judge_pauses:
            actions.append(JudgeTurn(self._turn_id, event.audio, event.at_ms))
        return actions

    def judged(self, turn_id: int, pause_at_ms: int, probability: float) -> list[Action]:
        """The end-of-turn model's answer for a pause: a finished utterance ends after
        ``turn.complete_silence_ms`` (at once if that much silence has passed), an unfinished
        one after ``turn.incomplete_silence_ms``. Answers to pauses that are over are ignored."""
        if turn_id != self._turn_id or pause_at_ms != self._pause_at_ms:
            return []
        finished = probability >= self._turn.complete_threshold
        events = self._endpointer.end_after(self._turn.complete_silence_ms if finished
                                            else self._turn.incomplete_silence_ms)
        return [a for event in events for a in self._on_endpoint(event)]

    def _stop_speculating(self) -> list[Action]:
        if self._speculating is None:
            return []
        turn_id, self._speculating = self._speculating, None
        return [AbandonTurn(turn_id)]

    def _on_end(self, event: SpeechEnd) -> list[Action]:
        self._pause_at_ms = None
        actions: list[Action] = [Emit(SpeechStopped(
            turn_id=self._turn_id,
            audio_ms=event.at_ms,
            speech_end_ms=event.speech_end_ms,
            reason=event.reason,
        ))]
        wait_ms = event.at_ms - event.speech_end_ms
        if self._turn_gate is not None and not self._turn_gate():
            return actions + self._stop_speculating() + self._refuse_turn(self._turn_id)
        if self._speculating == self._turn_id:
            # Nothing was said since the pause: what is being prepared answers this audio.
            self._speculating = None
            actions.append(CommitTurn(self._turn_id, wait_ms))
        else:
            actions += self._stop_speculating()
            actions.append(StartTurn(turn_id=self._turn_id, audio=event.audio,
                                     endpoint_wait_ms=wait_ms))
        self._active_turn = self._turn_id
        self._decided_at_ms, self._audible_at_ms = event.at_ms, None
        if self.state is not State.ENDING:
            self.state = State.RESPONDING
        return actions

    def _refuse_turn(self, turn_id: int) -> list[Action]:
        if self.state is State.USER_SPEAKING:
            self.state = State.LISTENING
        return [
            Emit(ErrorEvent(code="rate_limited", transient=True, turn_id=turn_id,
                            message="too many turns this minute; this one was not answered")),
            Emit(TurnDone.unrun(turn_id, "error")),
        ]

    def partial(self, turn_id: int, text: str, audio_ms: int) -> list[Action]:
        """A partial transcript is ready: sent only while that utterance is still open."""
        if turn_id != self._turn_id or self.state is not State.USER_SPEAKING or not text:
            return []
        return [Emit(TranscriptPartial(turn_id=turn_id, text=text, audio_ms=audio_ms))]

    def reply_audible(self, turn_id: int) -> None:
        """The owner started sending the turn's reply audio: from about now it can be heard."""
        if turn_id == self._active_turn and self._audible_at_ms is None:
            self._audible_at_ms = self._endpointer.now_ms

    def cancel(self) -> list[Action]:
        """The client asked to stop the current reply."""
        if self._active_turn is None:
            return []
        turn, self._active_turn = self._active_turn, None
        if self.state is State.RESPONDING:
            self.state = State.LISTENING
        return [CancelTurn(turn, "client")]

    def turn_finished(self, turn_id: int) -> list[Action]:
        """The owner is about to send the turn's terminal event: it can no longer resume."""
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
