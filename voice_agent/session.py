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

Speech over the reply (issue 9, ``[barge_in]``), once there is ``barge_in.pause_after_ms``
of it, pauses the reply (:class:`PauseReply`); frames the reply's own echo explains are not
speech (:mod:`voice_agent.audio.double_talk`). A shorter blip changes nothing. When the burst
pauses, ends, or has gone on for ``barge_in.confirm_ms``, its words are
checked (:class:`CheckBurst`): words of the person's interrupt it (:class:`CancelTurn`); a
cough, a "mm-hm" or the reply's own echo resume it (:class:`ResumeReply`; the burst's
``turn_done`` says ``backchannel``). The echo canceller's reference (what the appliance
plays) comes in through :meth:`Session.reference`, placed on the input's timeline.

With a wake phrase (``[wake]``) nothing is listened to until it is heard; after it, and after
each answer, speech is taken for ``wake.follow_up_s``.

``end`` from the client moves to ENDING: the open utterance is finished, its reply runs to
completion, then the session closes normally.
"""

from __future__ import annotations

import enum
from collections import Counter
from collections.abc import Callable

import numpy as np

from voice_agent.actions import (
    AbandonTurn,
    Action,
    CancelTurn,
    CheckBurst,
    Close,
    CommitTurn,
    Emit,
    JudgeTurn,
    PauseReply,
    ResumeReply,
    Speculate,
    StartTurn,
    Transcribe,
)
from voice_agent.audio.double_talk import OverReplyListener
from voice_agent.audio.frontend import FRAME_SAMPLES, Frontend
from voice_agent.audio.pcm import (
    PIPELINE_RATE,
    Framer,
    Int16Array,
    StreamResampler,
    bytes_to_int16,
)
from voice_agent.audio.reference import EchoTimeline
from voice_agent.audio.vad import (
    FRAME_MS,
    Endpointer,
    EndpointEvent,
    SpeechContinued,
    SpeechEnd,
    SpeechPause,
    SpeechStart,
    VoiceDetector,
)
from voice_agent.audio.wake import WakeDetector
from voice_agent.config import BargeInConfig, TurnConfig, VadConfig
from voice_agent.server.protocol import (
    ErrorEvent,
    SpeechResumed,
    SpeechStarted,
    SpeechStopped,
    TranscriptPartial,
    TurnDone,
)
from voice_agent.wake_gate import WakeGate

__all__ = [  # the actions live in voice_agent.actions; re-exported for the session's users
    "FIXED_SILENCE", "AbandonTurn", "Action", "CancelTurn", "CheckBurst", "Close", "CommitTurn",
    "Emit", "JudgeTurn", "PauseReply", "ResumeReply", "Session", "Speculate", "StartTurn",
    "State", "Transcribe", "silence",
]

FIXED_SILENCE = TurnConfig(endpoint="silence", speculate=False, resume_window_ms=0,
                           partial_interval_ms=0)
"""Turn-taking as it was before issue 8: a fixed ``vad.end_silence_ms``, nothing else."""



class State(enum.Enum):
    LISTENING = "listening"
    USER_SPEAKING = "user_speaking"
    RESPONDING = "responding"
    ENDING = "ending"
    CLOSED = "closed"


HELD_INPUT_MAX_S = 120
"""With turn detection off, input held beyond this before a commit is dropped (counted)."""
QUIET_WAIT_MS = 400
"""How long, once the paused reply is quiet, a burst whose words are a person's is waited on
to go on before the reply plays again."""
REFERENCE_AHEAD_S = 30
"""How far ahead of the input reply audio may be placed as the echo reference."""


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
        barge_in_config: BargeInConfig | None = None,
        wake: WakeDetector | None = None,
        wake_follow_up_ms: int = 8000,
        over_reply: OverReplyListener | None = None,
        turn_detection: bool = True,
    ) -> None:
        """``turn_gate`` is asked before each utterance's turn starts (turns per minute); a
        refused utterance gets ``rate_limited`` and its ``turn_done`` (status ``error``) at
        once, and is not answered. ``judge_pauses``: an end-of-turn model is there to ask
        (``JudgeTurn``) when ``turn.endpoint`` is ``smart``; without one the fixed
        ``vad.end_silence_ms`` decides. ``wake``: the wake phrase detector (None: always
        listening); ``wake_follow_up_ms``: how long speech is taken after the phrase and
        after each answer. ``turn_detection`` off: the input is cleaned and held until the
        owner commits it (:meth:`commit`); no turn starts on its own."""
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
        self._barge = barge_in_config or BargeInConfig()
        self._paused: int | None = None
        """The turn whose reply is paused by a burst of sound not yet judged."""
        self._burst_at_ms = 0
        self._paused_at_ms = 0
        self._held_end: SpeechEnd | None = None
        """A burst that ended before it was judged: a turn if :meth:`burst_heard` says so."""
        self._held_pause: SpeechPause | None = None
        self._long_burst_checked = False
        self._checking = False
        """A :class:`CheckBurst` is out: its answer decides the burst, even one that ended."""
        self._echo = EchoTimeline(REFERENCE_AHEAD_S * PIPELINE_RATE)
        self._echo_fed = False
        """What is played has been fed as an echo reference: a loudspeaker is in the room."""
        self._reference_end = 0
        """Echo-timeline sample at which the last reference piece placed ends."""
        self._echo_shift = 0
        """Echo timeline minus input timeline: real time the client sent nothing in
        (:meth:`input_paused`)."""
        self._after_reply = False
        """The open utterance began in the echo tail of a reply (``barge_in.echo_tail_ms``)."""
        self._stream_samples = 0
        """Input samples (16 kHz) framed so far; plus ``_echo_shift``, the echo reference's
        timeline."""
        self._listener = over_reply or OverReplyListener(
            min_unexplained=self._barge.min_unexplained)
        self._pause_sent = False
        """The paused turn's client was told (``reply_paused``): the burst was long enough."""
        self._unannounced: Emit | None = None
        """The ``speech_started`` of a burst over the reply, sent only once it pauses it (a
        blip of echo or a click gets no events at all)."""
        self._burst_speech_ms = 0
        self._burst_speech_in_quiet_ms = 0
        """Of the burst, speech heard once the paused reply has gone quiet in the room."""
        self._awaiting_quiet = False
        """The burst's words are a person's: it is a turn if it goes on in the quiet."""
        self._burst_voice = 0.0
        """The best voice score of the burst over the reply so far."""
        self._wake = WakeGate(wake, follow_up_ms=wake_follow_up_ms) if wake else None
        self._held_input: list[Int16Array] | None = None if turn_detection else []
        """With turn detection off: the cleaned input since the last commit or clear."""
        self._held_samples = 0
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

    def reference(self, samples: Int16Array, delay_ms: int = 0, *,
                  follows: bool = False) -> None:
        """What the appliance plays (16 kHz), starting ``delay_ms`` after the input received
        so far: the echo canceller's reference for the input frames it will be heard in.

        ``follows``: it plays right after the previous piece (the player's buffer has not run
        dry), so it is placed at that piece's end, not by ``delay_ms``: a player plays
        contiguously, and a position estimated for each piece from the event loop's time
        jitters by tens of milliseconds, an echo path changing every 20 ms that the
        canceller never converges on."""
        now = self._stream_samples + self._framer.pending + self._echo_shift
        if follows and self._reference_end >= now:
            start = self._reference_end
        else:
            start = now + delay_ms * PIPELINE_RATE // 1000
        self._echo.place(start, samples)
        self._reference_end = start + samples.size
        self._echo_fed = True

    def reference_dropped(self) -> None:
        """The player dropped what it had not played yet (the reply paused or stopped)."""
        self._echo.clear_from(self._stream_samples + self._framer.pending + self._echo_shift)
        self._reference_end = 0

    def input_paused(self, samples: int) -> None:
        """The client sent nothing for ``samples`` (16 kHz) of real time before the audio
        about to come (a half-duplex client stops while the reply plays; see
        :class:`~voice_agent.audio.reference.InputGaps`). What played meanwhile reached no
        microphone: the echo timeline moves past it, or the reply would be cancelled out of
        the person's next words."""
        self._echo_shift += max(0, samples)

    def _frame(self, frame: Int16Array) -> list[Action]:
        reference = self._echo.take(self._stream_samples + self._echo_shift, frame.size)
        self._stream_samples += frame.size
        if self.muted or self._deaf():
            self.dropped["muted" if self.muted else "responding"] += frame.size
            self._endpointer.skip()  # keep stream time (audio_ms) counting the dropped audio
            return []
        self.processed_samples += frame.size
        self._frontend.feed_reference(reference)
        cleaned = self._frontend.process(frame)
        if self._held_input is not None:
            self._endpointer.skip()
            if self._held_samples + cleaned.size > HELD_INPUT_MAX_S * PIPELINE_RATE:
                self.dropped["held_full"] += cleaned.size
            else:
                self._held_input.append(cleaned)
                self._held_samples += cleaned.size
            return []
        if self._wake is not None and self._asleep():
            changes, heard = self._wake.listen(cleaned, self._endpointer.now_ms)
            self._endpointer.skip()  # not listened to: no audio reaches ASR before the phrase
            if heard:
                self._endpointer.reset()
            return [Emit(change) for change in changes]
        speech = self._is_speech(cleaned, reference)
        events = self._endpointer.push(cleaned, speech)
        actions = [a for event in events for a in self._on_endpoint(event)]
        if speech and self.state is State.USER_SPEAKING:
            if self._unannounced is None:
                actions.extend(self._maybe_partial())
            if self._paused is not None:
                self._burst_speech_ms += FRAME_MS
                self._burst_voice = max(self._burst_voice, self._listener.voice_probability)
                if self._reply_quiet():
                    self._burst_speech_in_quiet_ms += FRAME_MS
                if (self._awaiting_quiet
                        and self._burst_speech_in_quiet_ms >= self._barge.heard_in_quiet_ms):
                    return [*actions, *self._burst_is_turn()]
            voiced = self._burst_voice >= self._barge.min_voice_probability
            if (self._paused is not None and not self._pause_sent and voiced
                    and self._burst_speech_ms >= self._barge.pause_after_ms):
                self._pause_sent, self._paused_at_ms = True, self._endpointer.now_ms
                actions += [*self._announce(), PauseReply(self._paused)]
            if (self._paused is not None and not self._long_burst_checked and voiced
                    and self._burst_speech_ms >= self._barge.confirm_ms
                    and self._burst_speech_in_quiet_ms >= self._barge.heard_in_quiet_ms):
                # Speech long enough to be someone taking the turn, and still heard once
                # nothing the appliance played can ring: a turn unless its words are the
                # reply's or "go on".
                self._long_burst_checked = self._checking = True
                actions.append(CheckBurst(self._turn_id, self._paused,
                                          self._endpointer.utterance_audio(), long=True))
        elif self._paused is not None and self._pause_sent:
            paused_ms = self._paused_ms()
            if (self._awaiting_quiet
                    and paused_ms >= self._barge.echo_tail_ms + QUIET_WAIT_MS):
                # Its words came out of the reply's echo: nothing followed in the quiet.
                actions.extend(self._play_on_and_listen())
            elif paused_ms >= self._barge.resume_after_ms:
                actions.extend(self._play_on())  # its judgement never came: play on
        return actions

    def _reply_quiet(self) -> bool:
        """The reply has been paused long enough (``barge_in.echo_tail_ms``) that nothing it
        played still sounds in the room: a client's buffered lead, the room's tail."""
        return self._pause_sent and self._paused_ms() >= self._barge.echo_tail_ms

    def _paused_ms(self) -> int:
        """How long ago the reply was paused (meaningful while ``_pause_sent``)."""
        return self._endpointer.now_ms - self._paused_at_ms

    def _is_speech(self, cleaned: Int16Array, reference: Int16Array) -> bool:
        """The VAD's answer, unless the reply's echo explains the sound."""
        return self._listener.frame(reference, cleaned, self._vad.is_speech(cleaned))

    def _asleep(self) -> bool:
        """Waiting for the wake phrase: nobody is speaking or being answered, and the gate
        is closed."""
        if self.state is not State.LISTENING or self._active_turn is not None:
            return False
        return self._wake is not None and self._wake.closed(self._endpointer.now_ms)

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
            self._pause_at_ms, self._held_pause = None, None
            return self._stop_speculating()
        if isinstance(event, SpeechEnd):
            return self._on_end(event)
        # SpeechDiscarded: too short to be speech after all (a click, a cough). Its
        # speech_started still gets its one turn_done, so a client never waits on it.
        self._pause_at_ms = None
        actions = self._stop_speculating()
        if self.state is State.USER_SPEAKING:
            self.state = State.LISTENING
        if self._unannounced is not None:
            self._forget_blip()
        else:
            actions.append(Emit(TurnDone.unrun(self._turn_id, "empty")))
        if self._paused is not None:  # a click or a knock over the reply: play on
            actions.extend(self._resume_reply())
        return actions

    def _on_start(self, event: SpeechStart) -> list[Action]:
        actions: list[Action] = []
        if self._held_end is not None and self._paused is not None:
            # A burst not yet judged, and the sound goes on.
            if self._endpointer.resume():
                self._held_end = None  # one burst; its judgement is on the way
                return []
            actions.extend(self._burst_is_turn())
        self._partial_at_ms = event.at_ms
        if self._active_turn is not None:
            if self._reply_unheard(event.at_ms) and self._endpointer.resume():
                turn_id, self._active_turn = self._active_turn, None
                if self.state is not State.ENDING:
                    self.state = State.USER_SPEAKING
                return [*actions, AbandonTurn(turn_id),
                        Emit(SpeechResumed(turn_id=turn_id, audio_ms=event.at_ms))]
            if not self.barge_in:  # half-duplex: a reply is coming; this speech is not heard
                self._endpointer.reset()
                return actions
            # Stop talking once this is more than a blip of echo; whether it is an
            # interruption is decided on what follows.
            self._paused, self._active_turn = self._active_turn, None
            self._burst_at_ms, self._held_end, self._held_pause = event.at_ms, None, None
            self._long_burst_checked = False
            self._pause_sent, self._burst_speech_ms, self._checking = False, 0, False
            self._burst_speech_in_quiet_ms, self._awaiting_quiet = 0, False
            self._burst_voice = self._listener.recent_voice
        self._turn_id += 1
        self._after_reply = self._paused is None and self._in_echo_tail(event.at_ms)
        if self.state is not State.ENDING:
            self.state = State.USER_SPEAKING
        started = Emit(SpeechStarted(turn_id=self._turn_id, audio_ms=event.at_ms))
        if self._paused is not None and not self._pause_sent:
            self._unannounced = started
        else:
            actions.append(started)
        return actions

    def _in_echo_tail(self, at_ms: int) -> bool:
        """Whether ``at_ms`` falls while a reply's end may still ring in the room (a burst
        over a playing reply is judged on its own terms: :class:`CheckBurst`)."""
        tail = self._barge.echo_tail_ms * PIPELINE_RATE // 1000
        return (tail > 0 and self._reference_end > 0  # set only by a fed reference
                and at_ms * PIPELINE_RATE // 1000 + self._echo_shift
                < self._reference_end + tail)

    def _announce(self) -> list[Action]:
        """The burst over the reply is more than a blip: its ``speech_started`` goes out."""
        started, self._unannounced = self._unannounced, None
        return [started] if started is not None else []

    def _forget_blip(self) -> None:
        """A burst too short to pause the reply ends unannounced: its turn id is unused."""
        if self._unannounced is not None:
            self._unannounced = None
            self._turn_id -= 1

    def _reply_unheard(self, speech_at_ms: int) -> bool:
        """Whether speech starting at ``speech_at_ms`` began before the person could have
        heard any of the active turn's reply, within the resume window."""
        window = self._turn.resume_window_ms
        if not window or self.state is not State.RESPONDING:
            return False
        if speech_at_ms - self._decided_at_ms > window:
            return False
        # With the reply coming back from a loudspeaker (an echo reference is fed), sound
        # after its first audio may be its own echo: only speech begun before it resumes.
        grace = 0 if self._echo_fed else self._turn.reply_heard_after_ms
        return self._audible_at_ms is None or speech_at_ms < self._audible_at_ms + grace

    def _on_pause(self, event: SpeechPause) -> list[Action]:
        actions: list[Action] = []
        self._pause_at_ms = event.at_ms
        if self._paused is not None:  # a burst over the reply stopped: what was it?
            if self._unannounced is not None:  # a blip: the reply never stopped for it
                return self._end_burst("")
            if not self._pause_sent:  # judged no turn, the reply plays: wait for more
                return []
            self._held_pause, self._checking = event, True
            return [CheckBurst(self._turn_id, self._paused, event.audio)]
        if self._turn.speculate:
            self._speculating = self._turn_id
            actions.append(Speculate(self._turn_id, event.audio,
                                     event.at_ms - event.speech_end_ms,
                                     after_reply=self._after_reply))
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

    def burst_heard(self, turn_id: int, is_turn: bool, text: str, *,
                    unsure: bool = False, stop: bool = False) -> list[Action]:
        """What :class:`CheckBurst` found. A turn: the paused reply is interrupted and the
        utterance goes on as any other. Not a turn: the reply plays on; a burst that has
        ended ends with a ``backchannel`` ``turn_done`` carrying its words, one still going
        on is listened to further (more of it pauses the reply again and is judged whole:
        "yeah... but wait" is a turn, and none of its words is lost). ``unsure``: words
        Whisper doubts that would be a turn if it were sure; a burst that has only paused
        then keeps the reply paused, and its end or more of it decides (a person talking
        over a loud reply is heard as doubted words at their first breath: resuming then
        played the reply on over them).

        Words of a person interrupt only once the burst has gone on after the paused reply
        fell quiet in the room (``barge_in.heard_in_quiet_ms``), or when they hold a stop phrase
        (``stop``): Whisper makes confident words out of the echo too, but the echo stops
        with the reply. A burst still open waits for that, paused, for ``QUIET_WAIT_MS``;
        one that ended without it was no turn."""
        if turn_id != self._turn_id or self._paused is None:
            return []
        self._checking = False
        if is_turn and (stop or self._burst_speech_in_quiet_ms >= self._barge.heard_in_quiet_ms):
            return self._burst_is_turn()
        if self._held_end is None and self.state is State.USER_SPEAKING:
            self._held_pause = None
            if (unsure or is_turn) and self._pause_sent:
                self._awaiting_quiet = is_turn
                return []
            return self._play_on_and_listen()
        return self._end_burst(text)

    def _end_burst(self, text: str) -> list[Action]:
        """The burst over the reply is over and was no turn: forget it, the reply plays."""
        assert self._paused is not None  # noqa: S101 - only while a burst is open
        self._endpointer.reset()
        self._pause_at_ms, self._held_end, self._held_pause = None, None, None
        self._checking = False
        if self._unannounced is not None:
            self._forget_blip()
            return self._resume_reply()
        done = TurnDone(turn_id=self._turn_id, status="backchannel", transcript=text,
                        reply_text="", engine="", audio_samples=0)
        return [Emit(done), *self._resume_reply()]

    def _play_on_and_listen(self) -> list[Action]:
        """Resume the reply; more of the burst over it is measured afresh (it must pause the
        reply, and go on for ``confirm_ms``, again)."""
        self._burst_speech_ms, self._long_burst_checked = 0, False
        self._burst_speech_in_quiet_ms = 0
        return self._play_on()

    def _play_on(self) -> list[Action]:
        """Resume the paused reply while the burst over it may go on."""
        assert self._paused is not None  # noqa: S101 - only while a burst is open
        self._awaiting_quiet = False
        if not self._pause_sent:
            return []
        self._pause_sent = False
        return [ResumeReply(self._paused)]

    def _burst_is_turn(self) -> list[Action]:
        assert self._paused is not None  # noqa: S101 - only while a reply is paused
        actions: list[Action] = [*self._announce(), CancelTurn(self._paused, "barge_in")]
        self._paused = None
        held_end, held_pause = self._held_end, self._held_pause
        self._held_end = self._held_pause = None
        if held_end is not None:
            actions.extend(self._on_end(held_end))
        elif held_pause is not None and self._pause_at_ms == held_pause.at_ms:
            actions.extend(self._on_pause(held_pause))  # still pausing: judge it, answer it
        return actions

    def _resume_reply(self) -> list[Action]:
        assert self._paused is not None  # noqa: S101 - only while a reply is paused
        actions = self._play_on()
        self._active_turn, self._paused = self._paused, None
        if self.state in (State.LISTENING, State.USER_SPEAKING):
            self.state = State.RESPONDING
        return actions

    def _on_end(self, event: SpeechEnd) -> list[Action]:
        if self._paused is not None:  # a burst over the reply ended: judge it first
            if not (self._pause_sent or self._checking):  # a blip, or judged no turn
                return self._end_burst("")
            self._held_end, self._checking = event, True
            return [CheckBurst(self._turn_id, self._paused, event.audio)]
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
                                     endpoint_wait_ms=wait_ms, after_reply=self._after_reply))
        self._active_turn = self._turn_id
        self._decided_at_ms, self._audible_at_ms = event.at_ms, None
        if self.state is not State.ENDING:
            self.state = State.RESPONDING
        return actions

    def commit(self) -> list[Action]:
        """The owner ends the input here (a client's hand commit): with turn detection off,
        the held input is a turn; with it on, the open utterance ends now. Nothing heard:
        no turn (``[]``)."""
        if self._held_input is None:
            return [a for event in self._endpointer.flush() for a in self._on_endpoint(event)]
        if not self._held_samples:
            return [Emit(ErrorEvent(code="empty_commit", message="no audio to commit"))]
        audio = np.concatenate(self._held_input)
        self.clear()
        actions = self._hand_turn(audio, "")
        if not actions:
            return []
        now_ms = self._endpointer.now_ms
        committed = SpeechStopped(turn_id=self._turn_id, audio_ms=now_ms,
                                  speech_end_ms=now_ms, reason="commit")
        return [Emit(committed), *actions]

    def set_turn_detection(self, on: bool) -> None:
        """Turn detection on or off from now (a client's session update); input held for a
        commit is forgotten when it comes on."""
        if on:
            self._held_input, self._held_samples = None, 0
        elif self._held_input is None:
            self._endpointer.reset()  # an open utterance is dropped: the client commits now
            self._held_input = []
            if self.state is State.USER_SPEAKING:
                self.state = State.LISTENING

    def clear(self) -> None:
        """Forget the input held since the last commit (turn detection off)."""
        if self._held_input is not None:
            self._held_input.clear()
            self._held_samples = 0

    def text_turn(self, text: str) -> list[Action]:
        """A turn of typed words: answered like speech, with no audio."""
        return self._hand_turn(np.zeros(0, np.int16), text)

    def _hand_turn(self, audio: Int16Array, text: str) -> list[Action]:
        """A turn the owner starts: it takes the floor from a reply still running."""
        if self.state in (State.ENDING, State.CLOSED):
            return []
        # It takes the floor: an utterance still open, or a burst over the reply still being
        # judged, is dropped rather than answered after it.
        self._held_end = self._held_pause = None
        if self.state is State.USER_SPEAKING:
            self._endpointer.reset()
        actions = self.cancel()
        self._turn_id += 1
        if self._turn_gate is not None and not self._turn_gate():
            return actions + self._refuse_turn(self._turn_id)
        actions.append(StartTurn(turn_id=self._turn_id, audio=audio, endpoint_wait_ms=0,
                                 text=text))
        self._active_turn = self._turn_id
        self._decided_at_ms, self._audible_at_ms = self._endpointer.now_ms, None
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
        if self._paused is not None:
            paused, self._paused = self._paused, None
            actions: list[Action] = [*self._announce(), CancelTurn(paused, "client")]
            held_end, self._held_end, self._held_pause = self._held_end, None, None
            if held_end is not None:  # the burst is just an utterance now
                actions.extend(self._on_end(held_end))
            return actions
        if self._active_turn is None:
            return []
        turn, self._active_turn = self._active_turn, None
        if self.state is State.RESPONDING:
            self.state = State.LISTENING
        return [CancelTurn(turn, "client")]

    def turn_finished(self, turn_id: int) -> list[Action]:
        """The owner is about to send the turn's terminal event: it can no longer resume."""
        actions: list[Action] = []
        if turn_id == self._active_turn:
            self._active_turn = None
            if self.state is State.RESPONDING:
                self.state = State.LISTENING
        if turn_id == self._paused:  # it ended while paused: the burst is just an utterance
            self._paused = None
            actions.extend(self._announce())
            held_end, self._held_end, self._held_pause = self._held_end, None, None
            if held_end is not None:
                actions.extend(self._on_end(held_end))
        if self._wake is not None:
            self._wake.answered(self._endpointer.now_ms)
        return actions + self._maybe_close()

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
        if self.state is State.ENDING and self._active_turn is None and self._paused is None:
            self.state = State.CLOSED
            return [Close("end")]
        return []


def silence(ms: int, rate: int = PIPELINE_RATE) -> bytes:
    """``ms`` of PCM16 silence (for flushing and tests)."""
    return np.zeros(rate * ms // 1000, dtype="<i2").tobytes()
