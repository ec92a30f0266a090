"""The I/O-free session state machine, driven with synthetic PCM and an energy VAD."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from voice_agent.audio.double_talk import OverReplyListener
from voice_agent.audio.frontend import PassthroughFrontend
from voice_agent.audio.pcm import Int16Array
from voice_agent.config import BargeInConfig, VadConfig
from voice_agent.errors import AudioFormatError
from voice_agent.server.protocol import SpeechStarted, SpeechStopped, TurnDone
from voice_agent.session import (
    Action,
    CancelTurn,
    CheckBurst,
    Close,
    Emit,
    PauseReply,
    ResumeReply,
    Session,
    StartTurn,
    State,
    silence,
)


class EnergyVad:
    """Speech is any frame louder than an RMS of 500 (synthetic tones are far above)."""

    def is_speech(self, frame: Int16Array) -> bool:
        return float(np.sqrt(np.mean(frame.astype(np.float64) ** 2))) > 500


def tone(ms: int, rate: int = 16000, freq: float = 300.0, amplitude: int = 8000) -> bytes:
    t = np.arange(rate * ms // 1000) / rate
    return (amplitude * np.sin(2 * np.pi * freq * t)).astype("<i2").tobytes()


def make_session(rate: int = 16000, *, barge_in: bool = True,
                 barge_in_config: BargeInConfig | None = None,
                 over_reply: OverReplyListener | None = None, **vad: object) -> Session:
    vad_config = VadConfig(**vad)  # type: ignore[arg-type]
    vad_config.validate()
    return Session(vad_config=vad_config, frontend=PassthroughFrontend(), vad=EnergyVad(),
                   input_rate=rate, barge_in=barge_in, barge_in_config=barge_in_config,
                   over_reply=over_reply)


class ScriptedVoice:
    """A voice score that says the same for every frame (what Silero would say of a voice,
    or of what the canceller left of the reply)."""

    def __init__(self, probability: float) -> None:
        self.value = probability

    def probability(self, frame: np.ndarray) -> float:
        return self.value


def feed(session: Session, pcm: bytes, chunk_ms: int = 20, rate: int = 16000) -> list[Action]:
    step = 2 * rate * chunk_ms // 1000
    actions: list[Action] = []
    for offset in range(0, len(pcm), step):
        actions.extend(session.audio(pcm[offset : offset + step]))
    return actions


def events(actions: list[Action]) -> list[object]:
    return [a.event if isinstance(a, Emit) else a for a in actions]


def speak_one_turn(session: Session, rate: int = 16000) -> list[Action]:
    return feed(session, silence(500, rate) + tone(1000, rate) + silence(600, rate), rate=rate)


# --- one turn -------------------------------------------------------------------------


@pytest.mark.parametrize("rate", [16000, 48000, 8000, 44100])
def test_speech_then_silence_starts_a_turn(rate: int) -> None:
    session = make_session(rate)
    assert session.state is State.LISTENING
    actions = feed(session, silence(500, rate) + tone(1000, rate), rate=rate)
    assert len(actions) == 1
    started = actions[0]
    assert isinstance(started, Emit) and isinstance(started.event, SpeechStarted)
    assert started.event.turn_id == 1
    assert started.event.audio_ms == pytest.approx(500, abs=20)
    assert session.state is State.USER_SPEAKING

    actions = feed(session, silence(600, rate), rate=rate)
    assert [type(a) for a in actions] == [Emit, StartTurn]
    stopped, turn = actions
    assert isinstance(stopped, Emit) and isinstance(stopped.event, SpeechStopped)
    assert isinstance(turn, StartTurn)
    assert stopped.event.turn_id == turn.turn_id == 1
    assert stopped.event.reason == "silence"
    assert stopped.event.speech_end_ms == pytest.approx(1500, abs=20)
    assert stopped.event.audio_ms == stopped.event.speech_end_ms + 450
    assert turn.endpoint_wait_ms == 450
    # Pre-roll (300 ms counted back from the detection, 60 ms into the speech), the rest of
    # the speech, and the 450 ms of silence that ended the turn; always at 16 kHz.
    assert turn.audio.dtype == np.int16
    assert turn.audio.size == pytest.approx(16 * (240 + 1000 + 450), abs=16 * 20)
    assert session.state is State.RESPONDING
    assert session.active_turn == 1


def test_turn_audio_is_the_resampled_input() -> None:
    session = make_session(48000)
    actions = speak_one_turn(session, 48000)
    turn = next(a for a in actions if isinstance(a, StartTurn))
    spectrum = np.abs(np.fft.rfft(turn.audio.astype(np.float64)))
    peak = np.fft.rfftfreq(turn.audio.size, 1 / 16000)[int(np.argmax(spectrum))]
    assert peak == pytest.approx(300, abs=5)


def test_chunk_size_does_not_change_the_outcome() -> None:
    pcm = silence(300) + tone(700) + silence(500) + tone(400) + silence(500)
    outcomes = []
    for chunk_ms in (1, 10, 30, 1000):
        actions = feed(make_session(), pcm, chunk_ms=chunk_ms)
        outcomes.append([
            (type(a).__name__, getattr(a, "event", None), getattr(a, "turn_id", None))
            for a in actions
        ])
    assert all(outcome == outcomes[0] for outcome in outcomes)


def test_short_click_does_not_start_a_turn() -> None:
    session = make_session()
    actions = feed(session, silence(200) + tone(30) + silence(1000))
    assert actions == []
    assert session.state is State.LISTENING


def test_too_short_speech_returns_to_listening_and_ends_its_turn_empty() -> None:
    session = make_session()
    actions = feed(session, silence(200) + tone(100) + silence(600))
    assert [type(e) for e in events(actions)] == [SpeechStarted, TurnDone]
    done = events(actions)[1]
    assert isinstance(done, TurnDone) and (done.turn_id, done.status) == (1, "empty")
    assert session.state is State.LISTENING
    assert session.active_turn is None


# --- barge-in and cancel ---------------------------------------------------------------


@pytest.mark.parametrize("voice", [0.0, 0.05])
def test_a_burst_with_no_voice_in_it_never_pauses_nor_interrupts_the_reply(voice: float) -> None:
    listener = OverReplyListener(min_unexplained=0.5, voice=ScriptedVoice(voice))
    session = make_session(barge_in=True, over_reply=listener)
    speak_one_turn(session)
    actions = feed(session, tone(1000) + silence(600))  # past pause_after_ms and confirm_ms
    assert not [a for a in actions if isinstance(a, PauseReply | CheckBurst | CancelTurn)]
    assert session.active_turn == 1


def test_a_burst_with_a_voice_in_it_pauses_the_reply() -> None:
    listener = OverReplyListener(min_unexplained=0.5, voice=ScriptedVoice(0.2))
    session = make_session(barge_in=True, over_reply=listener)
    speak_one_turn(session)
    actions = feed(session, tone(200))
    assert PauseReply(1) in actions


def test_speech_while_responding_pauses_then_cancels_the_turn() -> None:
    session = make_session(barge_in=True)
    speak_one_turn(session)
    assert session.active_turn == 1
    actions = feed(session, tone(300))
    assert len(actions) == 2
    assert actions[1] == PauseReply(1)  # silent after a blip's worth; then what is it?
    started = actions[0]
    assert isinstance(started, Emit) and isinstance(started.event, SpeechStarted)
    assert started.event.turn_id == 2
    assert started.event.audio_ms == pytest.approx(2100, abs=20)
    assert session.active_turn is None
    assert session.state is State.USER_SPEAKING
    # barge_in.confirm_ms (600) of speech, 200 ms of it once the paused reply is quiet in
    # the room (barge_in.echo_tail_ms, 600, after the pause): its words are checked.
    assert feed(session, tone(500)) == []
    check = feed(session, tone(200))
    assert len(check) == 1 and isinstance(check[0], CheckBurst) and check[0].long
    assert check[0].turn_id == 2 and check[0].paused_turn == 1
    assert check[0].audio.size >= 16 * 900
    assert session.burst_heard(2, True, "wait a moment") == [CancelTurn(1, "barge_in")]
    actions = feed(session, silence(600))
    turn = next(a for a in actions if isinstance(a, StartTurn))
    assert turn.turn_id == 2
    # The finished report of the cancelled turn does not touch the new one.
    assert session.turn_finished(1) == []
    assert session.active_turn == 2


def test_a_long_burst_that_stops_with_the_reply_is_not_trusted_on_its_length() -> None:
    """What the canceller leaves of the reply stops when the reply pauses; a person goes on.
    A burst past confirm_ms that ends before the paused reply is quiet is judged at its end
    by its words alone (Whisper's doubt counts), not trusted on its length."""
    session = make_session(barge_in=True)
    speak_one_turn(session)
    actions = feed(session, tone(650) + silence(600))
    assert PauseReply(1) in actions
    checks = [a for a in actions if isinstance(a, CheckBurst)]
    assert len(checks) == 1 and not checks[0].long


def test_half_duplex_drops_input_while_responding() -> None:
    session = make_session(barge_in=False)
    speak_one_turn(session)
    processed = session.processed_samples
    assert feed(session, tone(500) + silence(500)) == []
    stats = session.input_stats()
    # The 150 ms of silence after the end-of-turn decision, then the whole second.
    assert stats["dropped_responding"] == 2400 + 16000
    assert stats["processed"] == processed
    assert session.active_turn == 1
    assert session.turn_finished(1) == []
    assert session.state is State.LISTENING
    actions = feed(session, tone(300))
    started = events(actions)
    assert len(started) == 1 and isinstance(started[0], SpeechStarted)
    assert started[0].turn_id == 2


def test_stream_time_counts_dropped_input() -> None:
    session = make_session(barge_in=False)
    speak_one_turn(session)  # 2100 ms; the turn is decided at 1950 ms
    feed(session, silence(1000))  # dropped while responding, with the last 150 ms above
    session.turn_finished(1)
    started = events(feed(session, silence(400) + tone(300)))
    assert len(started) == 1 and isinstance(started[0], SpeechStarted)
    # "ms of audio received": the dropped audio is part of the stream.
    assert started[0].audio_ms == 2100 + 1000 + 400
    assert session.input_stats()["dropped_responding"] == 16 * 1150


def test_muted_input_is_not_heard_but_counted() -> None:
    session = make_session()
    session.muted = True  # e.g. --mic while the reply plays on an open speaker
    assert feed(session, tone(600) + silence(600)) == []
    assert session.input_stats()["dropped_muted"] == 16 * 1200
    session.muted = False
    started = events(feed(session, tone(300)))
    assert len(started) == 1 and isinstance(started[0], SpeechStarted)
    assert started[0].audio_ms >= 1200


def test_cancel_stops_the_active_turn_once() -> None:
    session = make_session()
    assert session.cancel() == []  # idle: nothing to cancel
    speak_one_turn(session)
    assert session.cancel() == [CancelTurn(1, "client")]
    assert session.state is State.LISTENING
    assert session.active_turn is None
    assert session.cancel() == []
    assert session.turn_finished(1) == []


def test_cancel_while_user_speaks_does_nothing() -> None:
    session = make_session()
    feed(session, tone(300))
    assert session.state is State.USER_SPEAKING
    assert session.cancel() == []
    assert session.state is State.USER_SPEAKING


def test_turn_finished_returns_to_listening_and_ignores_other_ids() -> None:
    session = make_session()
    speak_one_turn(session)
    assert session.turn_finished(7) == []
    assert session.state is State.RESPONDING
    assert session.turn_finished(1) == []
    assert session.state is State.LISTENING
    assert session.active_turn is None


# --- end ------------------------------------------------------------------------------


def test_end_when_idle_closes_at_once() -> None:
    session = make_session()
    feed(session, silence(300))
    assert session.end() == [Close("end")]
    assert session.state is State.CLOSED
    assert session.end() == []


def test_end_flushes_the_open_utterance_and_closes_after_its_turn() -> None:
    session = make_session()
    feed(session, silence(200) + tone(800))
    actions = session.end()
    assert [type(a) for a in actions] == [Emit, StartTurn]
    stopped = actions[0]
    assert isinstance(stopped, Emit) and isinstance(stopped.event, SpeechStopped)
    assert stopped.event.reason == "flush"
    assert stopped.event.turn_id == 1
    assert session.state is State.ENDING
    assert session.end() == []
    assert session.turn_finished(1) == [Close("end")]
    assert session.state is State.CLOSED


def test_end_while_responding_waits_for_the_reply() -> None:
    session = make_session()
    speak_one_turn(session)
    assert session.end() == []
    assert session.state is State.ENDING
    assert session.turn_finished(1) == [Close("end")]


def test_end_after_cancel_closes_on_the_cancelled_turns_report() -> None:
    session = make_session()
    speak_one_turn(session)
    session.end()
    assert session.cancel() == [CancelTurn(1, "client")]
    # The driver reports every turn's end, cancelled ones too: that closes the session.
    assert session.turn_finished(1) == [Close("end")]


def test_audio_after_end_is_dropped_and_counted() -> None:
    session = make_session()
    session.end()
    assert session.audio(tone(100)) == []
    assert session.input_stats()["dropped_after_end"] == 1600


def test_audio_after_end_is_counted_in_pipeline_samples() -> None:
    session = make_session(48000)
    session.end()
    session.audio(tone(100, 48000))
    # input_stats counts 16 kHz samples (see SessionEnd.input_stats).
    assert session.input_stats()["dropped_after_end"] == 1600


# --- input checks and accounting ------------------------------------------------------


@pytest.mark.parametrize("size", [1, 3, 161])
def test_odd_byte_count_is_bad_audio(size: int) -> None:
    session = make_session()
    with pytest.raises(AudioFormatError) as info:
        session.audio(b"\x00" * size)
    assert info.value.code == "bad_audio"
    assert session.audio(b"") == []


@pytest.mark.parametrize(("rate", "tolerance"), [(16000, 0), (48000, 8), (8000, 8)])
def test_every_input_sample_is_accounted_for(rate: int, tolerance: int) -> None:
    session = make_session(rate, barge_in=False)
    total = 0
    for ms in (333, 1000, 700, 500, 555):
        pcm = tone(ms, rate) if ms in (1000, 500) else silence(ms, rate)
        # uneven chunks, so the framer holds partial frames between them
        cut = len(pcm) // 3 * 2 // 2 * 2 + 2
        for piece in (pcm[:cut], pcm[cut:]):
            session.audio(piece)
            total += len(piece) // 2
    session.end()
    session.audio(tone(50, rate))
    total += rate // 20
    stats = session.input_stats()
    assert stats["dropped_responding"] > 0
    assert stats["dropped_after_end"] == 800
    assert stats["processed"] > 0
    # Counted in 16 kHz samples: exact at 16 kHz, up to the resampler's rounding otherwise.
    assert abs(sum(stats.values()) - total * 16000 // rate) <= tolerance


# --- any sequence of operations -------------------------------------------------------

audio_op = st.tuples(
    st.just("audio"),
    st.integers(0, 400),  # ms
    st.sampled_from(["tone", "silence"]),
    st.integers(0, 2),  # extra samples, so chunks are not whole frames
    st.integers(0, 9).map(lambda n: n == 0),  # an odd byte count now and then
)
operations = st.lists(
    st.one_of(
        audio_op, audio_op, audio_op, audio_op, audio_op,
        st.tuples(st.just("cancel")),
        st.tuples(st.just("finished"), st.integers(0, 6)),
        st.tuples(st.just("burst"), st.booleans()),  # a CheckBurst's answer
    ),
    min_size=10,
    max_size=50,
)


@settings(max_examples=200, deadline=None)
@given(
    ops=operations,
    end_at=st.integers(5, 60),
    rate=st.sampled_from([8000, 16000, 48000]),
    barge_in=st.booleans(),
)
def test_any_operation_sequence_keeps_turns_consistent(
    ops: list[tuple[object, ...]], end_at: int, rate: int, barge_in: bool
) -> None:
    session = make_session(rate, barge_in=barge_in, start_speech_ms=30, end_silence_ms=100,
                           pre_roll_ms=50, min_utterance_ms=50, max_utterance_s=1.0)
    live: int | None = None  # the turn the actions say is running
    paused: int | None = None  # the turn whose reply the actions say is paused
    checking: list[int] = []  # bursts sent to be judged
    started: list[int] = []
    last_speech_started = 0
    ended = closed = False

    def check(actions: list[Action], source: str) -> None:
        nonlocal live, paused, last_speech_started, closed
        for action in actions:
            assert not closed, "an action after Close"
            if isinstance(action, Emit) and isinstance(action.event, SpeechStarted):
                if live is not None:  # over the reply: held until it is judged
                    assert barge_in and paused is None
                    paused, live = live, None
                assert action.event.turn_id == last_speech_started + 1
                last_speech_started = action.event.turn_id
            elif isinstance(action, StartTurn):
                assert live is None, "a second turn while one is active"
                assert action.turn_id == last_speech_started
                assert not started or action.turn_id > started[-1]
                assert action.audio.size > 0
                started.append(action.turn_id)
                live = action.turn_id
            elif isinstance(action, CancelTurn):
                assert action.turn_id in (live, paused)
                # Only speech (with barge-in on) or the client's cancel stop a turn.
                assert action.reason == ("client" if source == "cancel" else "barge_in")
                assert barge_in or source == "cancel"
                if action.turn_id == paused:
                    paused = None
                else:
                    live = None
            elif isinstance(action, PauseReply):
                assert barge_in and action.turn_id == paused and live is None
            elif isinstance(action, ResumeReply):
                assert action.turn_id == paused and live is None
                live, paused = paused, None
            elif isinstance(action, CheckBurst):
                assert action.paused_turn == paused
                checking.append(action.turn_id)
            elif isinstance(action, Close):
                assert ended and live is None and paused is None
                closed = True
        if paused is not None and session.active_turn == paused:
            live, paused = paused, None  # a blip too short to pause it: it just plays on
        if live is not None and session.active_turn is None and barge_in:
            paused, live = live, None  # a burst not announced yet holds it until judged
        assert session.active_turn == live

    def finish(turn_id: int) -> None:
        nonlocal live, paused
        if turn_id == live:
            live = None  # the connection reports the end of the running turn
        if turn_id == paused:
            paused = None
        check(session.turn_finished(turn_id), "finished")

    ops = [*ops[:end_at], ("end",), *ops[end_at:]]
    for op in ops:
        if op[0] == "audio":
            ms, kind, extra_samples, odd = op[1:]
            assert isinstance(ms, int) and isinstance(extra_samples, int)
            data = tone(ms, rate) if kind == "tone" else silence(ms, rate)
            data += b"\x10\x00" * extra_samples + (b"\x00" if odd else b"")
            if len(data) % 2:
                with pytest.raises(AudioFormatError):
                    session.audio(data)
                continue
            check(session.audio(data), "audio")
        elif op[0] == "cancel":
            check(session.cancel(), "cancel")
        elif op[0] == "finished":
            assert isinstance(op[1], int)
            finish(op[1])
        elif op[0] == "burst":
            if checking:
                check(session.burst_heard(checking.pop(), bool(op[1]), "yeah"), "burst")
        else:
            ended = True
            check(session.end(), "end")
        assert closed == (session.state is State.CLOSED)

    # Ending and reporting every started turn always closes the session, exactly once.
    ended = True
    check(session.end(), "end")
    if paused is not None:
        finish(paused)
    for turn_id in started:
        finish(turn_id)
    assert closed
    assert len(started) == len(set(started))
    event(f"turns started: {min(len(started), 3)}")


# --- the echo reference ------------------------------------------------------------------


class ReferenceTap(PassthroughFrontend):
    """The frontend, keeping every reference frame the session feeds it."""

    def __init__(self) -> None:
        self.fed: list[np.ndarray] = []

    def feed_reference(self, frame: np.ndarray) -> None:
        self.fed.append(frame.copy())


def tapped_session() -> tuple[Session, ReferenceTap]:
    tap = ReferenceTap()
    session = Session(vad_config=VadConfig(), frontend=tap, vad=EnergyVad(), input_rate=16000)
    return session, tap


def test_a_piece_that_follows_is_placed_right_after_the_last_one_whatever_its_estimate() -> None:
    session, tap = tapped_session()
    first, second = np.full(800, 1000, np.int16), np.full(800, 2000, np.int16)
    session.reference(first, delay_ms=0)
    session.reference(second, delay_ms=37, follows=True)  # the clock's estimate jittered
    feed(session, silence(200))
    played = np.concatenate(tap.fed)
    assert (played[:800] == 1000).all() and (played[800:1600] == 2000).all()
    assert not played[1600:].any()


def test_a_piece_after_the_player_ran_dry_is_placed_by_its_estimate() -> None:
    session, tap = tapped_session()
    session.reference(np.full(160, 1000, np.int16), delay_ms=0)
    feed(session, silence(100))  # played out, and more: the player's buffer ran dry
    session.reference(np.full(160, 2000, np.int16), delay_ms=20, follows=True)
    feed(session, silence(100))
    played = np.concatenate(tap.fed)
    assert (played[1600 + 320 : 1600 + 480] == 2000).all()
    assert not played[1600 : 1600 + 320].any()


def test_what_the_player_dropped_is_no_longer_expected_back() -> None:
    session, tap = tapped_session()
    session.reference(np.full(16000, 1000, np.int16), delay_ms=0)
    feed(session, silence(100))
    session.reference_dropped()  # paused: the client dropped the rest of its buffer
    feed(session, silence(400))
    played = np.concatenate(tap.fed)
    assert (played[:1600] == 1000).all() and not played[1600:].any()


def test_what_played_while_the_client_sent_nothing_is_not_expected_in_its_next_audio() -> None:
    session, tap = tapped_session()
    session.reference(np.full(16000, 1000, np.int16), delay_ms=0)  # 1 s of reply
    session.input_paused(8000)  # the client was silent for the first half of it
    feed(session, silence(1000))
    played = np.concatenate(tap.fed)
    assert (played[:8000] == 1000).all() and not played[8000:].any()


# --- speech in the echo tail of a reply ----------------------------------------------------


def reply_then_speech(gap_ms: int, *, echo_tail_ms: int = 600,
                      reference: bool = True) -> StartTurn:
    """One turn answered by a 1 s reply (fed as the echo reference when ``reference``),
    finished when it has played; speech starting ``gap_ms`` after its end: the next turn."""
    session = make_session(barge_in_config=BargeInConfig(echo_tail_ms=echo_tail_ms))
    (first,) = [a for a in speak_one_turn(session) if isinstance(a, StartTurn)]
    if reference:
        session.reference(np.zeros(16000, np.int16))
    feed(session, silence(1000))
    session.turn_finished(first.turn_id)
    actions = feed(session, silence(gap_ms) + tone(600) + silence(600))
    (second,) = [a for a in actions if isinstance(a, StartTurn)]
    return second


@pytest.mark.parametrize(("gap_ms", "after_reply"), [(0, True), (400, True), (900, False)])
def test_speech_begun_in_the_echo_tail_is_marked_for_its_words_to_be_checked(
        gap_ms: int, after_reply: bool) -> None:
    assert reply_then_speech(gap_ms).after_reply is after_reply


def test_speech_after_a_reply_the_client_was_silent_through_is_not_in_its_echo_tail() -> None:
    session = make_session(barge_in_config=BargeInConfig(echo_tail_ms=600))
    (first,) = [a for a in speak_one_turn(session) if isinstance(a, StartTurn)]
    session.reference(np.zeros(16000, np.int16))
    session.turn_finished(first.turn_id)
    session.input_paused(16000 + 16000 * 900 // 1000)  # push-to-talk: nothing sent meanwhile
    actions = feed(session, tone(600) + silence(600))
    (second,) = [a for a in actions if isinstance(a, StartTurn)]
    assert not second.after_reply


def test_without_a_loudspeaker_or_with_the_tail_off_speech_after_a_reply_is_not_marked() -> None:
    assert not reply_then_speech(0, reference=False).after_reply
    assert not reply_then_speech(0, echo_tail_ms=0).after_reply
