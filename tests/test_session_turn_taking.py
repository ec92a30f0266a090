"""Turn-taking in the I/O-free session (issue 8): pauses judged, answers speculated during
them, and speech resumed before the reply is heard continuing the same turn.

The end-of-turn model here is a policy double (the real Smart Turn model is tested in
``tests/audio/test_turn_end.py``): it says "finished" for utterances longer than a set
length, which makes every branch of the state machine reachable on demand."""

from __future__ import annotations

import numpy as np
from hypothesis import event, given, settings
from hypothesis import strategies as st

from tests.test_session import EnergyVad, tone
from voice_agent.audio.frontend import PassthroughFrontend
from voice_agent.audio.pcm import Int16Array
from voice_agent.audio.vad import FRAME_MS
from voice_agent.config import TurnConfig, VadConfig
from voice_agent.server.protocol import SpeechResumed, SpeechStarted, SpeechStopped
from voice_agent.session import (
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
    Session,
    Speculate,
    StartTurn,
    State,
    Transcribe,
    silence,
)


class LengthJudge:
    """Finished when the utterance (with its silence) is longer than ``finished_after_ms``."""

    def __init__(self, finished_after_ms: int) -> None:
        self.finished_after_ms = finished_after_ms
        self.calls = 0

    def complete_probability(self, audio: Int16Array) -> float:
        self.calls += 1
        return 0.9 if audio.size > 16 * self.finished_after_ms else 0.1


JUDGES: dict[int, LengthJudge] = {}


def make(judge: LengthJudge | None = None, *, barge_in: bool = True, **turn: object) -> Session:
    vad = VadConfig(start_speech_ms=30, end_silence_ms=450, pre_roll_ms=50,
                    min_utterance_ms=50, max_utterance_s=5.0)
    settings_ = {"speculate_after_ms": 150, "complete_silence_ms": 300,
                 "incomplete_silence_ms": 1000, "partial_interval_ms": 0, **turn}
    config = TurnConfig(**settings_)  # type: ignore[arg-type]
    config.validate()
    session = Session(vad_config=vad, frontend=PassthroughFrontend(), vad=EnergyVad(),
                      input_rate=16000, barge_in=barge_in, turn_config=config,
                      judge_pauses=judge is not None)
    if judge is not None:
        JUDGES[id(session)] = judge
    return session


def feed(session: Session, pcm: bytes, chunk_ms: int = 20) -> list[Action]:
    """Stream ``pcm``; each pause's judgement comes back before the next chunk (as the
    driver does it, only faster), and is left out of the returned actions."""
    step = 2 * 16 * chunk_ms
    actions: list[Action] = []
    for offset in range(0, len(pcm), step):
        for action in session.audio(pcm[offset : offset + step]):
            if isinstance(action, JudgeTurn):
                judge = JUDGES[id(session)]
                actions.extend(session.judged(action.turn_id, action.pause_at_ms,
                                              judge.complete_probability(action.audio)))
            else:
                actions.append(action)
    return actions


def kinds(actions: list[Action]) -> list[str]:
    return [type(a.event).__name__ if isinstance(a, Emit) else type(a).__name__
            for a in actions]


def test_a_pause_speculates_then_a_finished_utterance_commits_after_the_short_silence() -> None:
    judge = LengthJudge(finished_after_ms=500)
    session = make(judge)
    feed(session, silence(200) + tone(800))
    actions = feed(session, silence(160))
    assert kinds(actions) == ["Speculate"] and judge.calls == 1
    speculate = actions[0]
    assert isinstance(speculate, Speculate) and speculate.turn_id == 1
    assert 140 <= speculate.endpoint_wait_ms <= 170
    actions = feed(session, silence(160))  # 320 ms of silence: past complete_silence_ms
    assert kinds(actions) == ["SpeechStopped", "CommitTurn"]
    commit = actions[1]
    assert isinstance(commit, CommitTurn) and commit.turn_id == 1
    assert 290 <= commit.endpoint_wait_ms <= 330
    assert session.state is State.RESPONDING


def test_an_unfinished_utterance_waits_for_the_long_silence() -> None:
    session = make(LengthJudge(finished_after_ms=5000))
    feed(session, silence(200) + tone(800))
    assert kinds(feed(session, silence(900))) == ["Speculate"]
    assert kinds(feed(session, silence(200))) == ["SpeechStopped", "CommitTurn"]


def test_speech_in_the_pause_abandons_the_speculation_silently() -> None:
    session = make(LengthJudge(finished_after_ms=5000))
    feed(session, silence(200) + tone(600))
    assert kinds(feed(session, silence(300))) == ["Speculate"]
    actions = feed(session, tone(300))
    assert kinds(actions) == ["AbandonTurn"]  # nothing for the client: no event at all
    actions = feed(session, silence(1100))
    assert kinds(actions) == ["Speculate", "SpeechStopped", "CommitTurn"]
    speculate = actions[0]
    assert isinstance(speculate, Speculate) and speculate.turn_id == 1
    assert speculate.audio.size >= 16 * (600 + 300 + 300)  # both parts and the gap


def test_speech_before_the_reply_is_heard_resumes_the_same_turn() -> None:
    session = make(LengthJudge(finished_after_ms=0), speculate=False)
    feed(session, silence(200) + tone(600))
    actions = feed(session, silence(320))
    assert kinds(actions) == ["SpeechStopped", "StartTurn"]
    first = actions[1]
    assert isinstance(first, StartTurn)
    actions = feed(session, silence(200) + tone(400))
    assert kinds(actions) == ["AbandonTurn", "SpeechResumed"]
    resumed = actions[1]
    assert isinstance(resumed, Emit) and isinstance(resumed.event, SpeechResumed)
    assert resumed.event.turn_id == 1
    actions = feed(session, silence(320))
    assert kinds(actions) == ["SpeechStopped", "StartTurn"]
    whole = actions[1]
    assert isinstance(whole, StartTurn) and whole.turn_id == 1
    # The earlier words stay: the whole utterance is asked about once.
    assert whole.audio.size >= first.audio.size + 16 * (200 + 400)
    assert np.array_equal(whole.audio[: first.audio.size], first.audio)


def test_speech_after_the_reply_was_heard_is_a_barge_in() -> None:
    session = make(LengthJudge(finished_after_ms=0), speculate=False)
    feed(session, silence(200) + tone(600) + silence(320))
    session.reply_audible(1)
    actions = feed(session, silence(300) + tone(200))
    assert kinds(actions) == ["SpeechStarted", "PauseReply"]  # silent after a blip's worth
    # barge_in.confirm_ms of speech, some once the paused reply is quiet: what is it?
    actions = feed(session, tone(800))
    assert kinds(actions) == ["CheckBurst"]
    actions = session.burst_heard(2, True, "hold on")
    assert kinds(actions) == ["CancelTurn"]
    assert isinstance(actions[0], CancelTurn) and actions[0].reason == "barge_in"


def test_speech_the_moment_the_reply_starts_still_resumes() -> None:
    # Begun before anyone could react to the reply (turn.reply_heard_after_ms).
    session = make(LengthJudge(finished_after_ms=0), speculate=False, reply_heard_after_ms=250)
    feed(session, silence(200) + tone(600) + silence(320))
    session.reply_audible(1)
    assert kinds(feed(session, silence(100) + tone(200))) == ["AbandonTurn", "SpeechResumed"]


def test_resume_window_zero_keeps_todays_behaviour() -> None:
    session = make(LengthJudge(finished_after_ms=0), speculate=False, resume_window_ms=0)
    feed(session, silence(200) + tone(600) + silence(320))
    assert kinds(feed(session, silence(100) + tone(200))) == ["SpeechStarted", "PauseReply"]


def test_partials_come_while_speaking_only() -> None:
    session = make(LengthJudge(finished_after_ms=0), partial_interval_ms=300)
    actions = feed(session, silence(200) + tone(1000))
    partials = [a for a in actions if isinstance(a, Transcribe)]
    assert len(partials) == 3 and all(p.turn_id == 1 for p in partials)
    assert partials[-1].audio.size > partials[0].audio.size
    assert not [a for a in feed(session, silence(1200)) if isinstance(a, Transcribe)]


def test_no_answer_from_the_model_waits_the_long_silence() -> None:
    # A model that failed or is slow: until an answer comes, the pause may be mid-sentence.
    session = make(LengthJudge(finished_after_ms=0))
    feed(session, silence(200) + tone(600))
    actions = session.audio(silence(900))
    assert kinds(actions) == ["Speculate", "JudgeTurn"]
    assert kinds(session.audio(silence(200))) == ["SpeechStopped", "CommitTurn"]


def test_a_late_answer_ends_a_finished_turn_at_once_and_a_stale_one_is_ignored() -> None:
    session = make(LengthJudge(finished_after_ms=0))
    feed(session, silence(200) + tone(600))
    judge = next(a for a in session.audio(silence(500)) if isinstance(a, JudgeTurn))
    assert session.judged(judge.turn_id, judge.pause_at_ms - 10, 0.99) == []  # stale
    assert kinds(session.audio(silence(20))) == []
    # 670 ms of silence, past the short one: the turn ends with the answer, even if the
    # client has stopped sending audio.
    assert kinds(session.judged(judge.turn_id, judge.pause_at_ms, 0.99)) == [
        "SpeechStopped", "CommitTurn"]


operations = st.lists(
    st.one_of(
        st.tuples(st.just("tone"), st.integers(20, 900)),
        st.tuples(st.just("silence"), st.integers(20, 1500)),
        st.tuples(st.just("audible"), st.just(0)),
        st.tuples(st.just("cancel"), st.just(0)),
        st.tuples(st.just("finished"), st.just(0)),
    ),
    min_size=5, max_size=40,
)


@settings(max_examples=150, deadline=None)
@given(ops=operations, finished_after_ms=st.integers(0, 3000), speculate=st.booleans(),
       barge_in=st.booleans(), resume_window_ms=st.sampled_from([0, 500, 3000]))
def test_any_sequence_keeps_one_run_per_turn_and_resumes_only_unheard_replies(
    ops: list[tuple[str, int]], finished_after_ms: int, speculate: bool, barge_in: bool,
    resume_window_ms: int,
) -> None:
    session = make(LengthJudge(finished_after_ms), barge_in=barge_in, speculate=speculate,
                   resume_window_ms=resume_window_ms, partial_interval_ms=300)
    live: int | None = None  # the decided turn whose reply runs
    paused: int | None = None  # the decided turn whose reply a burst paused
    paused_audible_at: int | None = None
    speculating: int | None = None
    current = 0  # the turn id of the open (or last) utterance
    audible_at: int | None = None  # stream time (ms) when the live turn's reply went out
    fed_ms = 0
    runs: dict[int, int] = {}  # decided runs per turn not yet abandoned
    closed = False

    def check(actions: list[Action]) -> None:
        nonlocal live, speculating, current, audible_at, closed, paused, paused_audible_at
        for action in actions:
            assert not closed
            event_ = action.event if isinstance(action, Emit) else None
            if isinstance(event_, SpeechStarted):
                if live is not None:  # over the reply: held until it is judged
                    assert barge_in and paused is None
                    paused, paused_audible_at, live = live, audible_at, None
                assert speculating is None
                assert event_.turn_id == current + 1
                current = event_.turn_id
            elif isinstance(event_, SpeechResumed):
                assert event_.turn_id == current and live is None
                assert resume_window_ms > 0
                # Begun before anyone could react to the reply (turn.reply_heard_after_ms):
                # speech whose onset precedes the reply's first audio by any margin included.
                assert audible_at is None or event_.audio_ms < audible_at + 250 + FRAME_MS
            elif isinstance(event_, SpeechStopped):
                assert event_.turn_id == current
            elif isinstance(action, Speculate):
                assert speculate and speculating is None and live is None
                assert action.turn_id == current
                speculating = current
            elif isinstance(action, CommitTurn):
                assert action.turn_id == speculating == current
                speculating, live, audible_at = None, current, None
                runs[current] = runs.get(current, 0) + 1
            elif isinstance(action, StartTurn):
                assert speculating is None and live is None and action.turn_id == current
                live, audible_at = current, None
                runs[current] = runs.get(current, 0) + 1
            elif isinstance(action, AbandonTurn):
                if action.turn_id == speculating:
                    speculating = None
                else:  # a decided turn, resumed before its reply was heard
                    assert action.turn_id == live  # SpeechResumed follows, checked above
                    runs[live] -= 1
                    live = None
            elif isinstance(action, CancelTurn):
                assert action.turn_id in (live, paused)
                if action.turn_id == live:
                    live = None
                else:
                    paused = None
            elif isinstance(action, PauseReply):
                assert barge_in and action.turn_id == paused and live is None
            elif isinstance(action, ResumeReply):
                assert action.turn_id == paused and live is None
                live, audible_at, paused = paused, paused_audible_at, None
            elif isinstance(action, CheckBurst):
                assert action.paused_turn == paused
            elif isinstance(action, Close):
                assert live is None and paused is None
                closed = True
            elif isinstance(action, Transcribe):
                assert action.turn_id == current and live is None  # while speaking only
        assert all(n <= 1 for n in runs.values()), runs
        if paused is not None and session.active_turn == paused:
            live, audible_at, paused = paused, paused_audible_at, None  # a blip: plays on
        if live is not None and session.active_turn is None and barge_in:
            # A burst over the reply, not announced yet, holds it until it is judged.
            paused, paused_audible_at, live = live, audible_at, None
        assert session.active_turn == live

    for kind, ms in ops:
        if kind == "tone":
            fed_ms += ms
            check(feed(session, tone(ms)))
        elif kind == "silence":
            fed_ms += ms
            check(feed(session, silence(ms)))
        elif kind == "audible":
            if live is not None and audible_at is None:
                session.reply_audible(live)
                audible_at = fed_ms - fed_ms % FRAME_MS
        elif kind == "cancel":
            check(session.cancel())
        elif live is not None:  # finished
            turn, live = live, None
            check(session.turn_finished(turn))
        elif paused is not None:  # a paused reply's run ended (an engine error, say)
            turn, paused = paused, None
            check(session.turn_finished(turn))
    check(session.end())
    for _ in range(3):  # a paused turn's end may decide a held burst, which starts one
        for turn in (paused, live):
            if turn is not None:
                paused = None if turn == paused else paused
                live = None if turn == live else live
                check(session.turn_finished(turn))
    assert closed and speculating is None
    event(f"resumed: {sum(1 for n in runs.values() if n == 0) > 0}")


def burst_paused_over_the_reply() -> Session:
    """A reply playing, and a burst over it that paused it and has just paused itself: its
    words are being checked."""
    session = make(LengthJudge(finished_after_ms=0))
    feed(session, silence(200) + tone(600) + silence(400))
    session.reply_audible(1)
    assert kinds(feed(session, silence(300) + tone(200))) == ["SpeechStarted", "PauseReply"]
    assert kinds(feed(session, silence(200))) == ["CheckBurst"]
    return session


def test_no_words_at_a_bursts_pause_play_the_reply_on_at_once() -> None:
    session = burst_paused_over_the_reply()
    assert kinds(session.burst_heard(2, False, "")) == ["ResumeReply"]


def test_doubted_words_at_a_bursts_pause_keep_the_reply_paused_until_it_is_judged_whole() -> None:
    session = burst_paused_over_the_reply()
    assert session.burst_heard(2, False, "", unsure=True) == []
    actions = feed(session, silence(1200))  # no more of it: it ended, and is judged whole
    assert kinds(actions) == ["CheckBurst"]
    assert kinds(session.burst_heard(2, False, "")) == ["TurnDone", "ResumeReply"]
    assert session.active_turn == 1


def test_doubted_words_then_more_speech_are_judged_with_it() -> None:
    session = burst_paused_over_the_reply()
    assert session.burst_heard(2, False, "", unsure=True) == []
    actions = feed(session, tone(900))  # long, and on once the reply is quiet: trusted
    assert "CheckBurst" in kinds(actions) and "ResumeReply" not in kinds(actions)
    assert kinds(session.burst_heard(2, True, "stop there")) == ["CancelTurn"]


def test_a_persons_words_at_a_bursts_pause_interrupt_once_it_goes_on_in_the_quiet() -> None:
    session = burst_paused_over_the_reply()
    assert session.burst_heard(2, True, "and then") == []  # the echo may say that too
    actions = feed(session, tone(600))  # on, once the paused reply is quiet in the room
    assert kinds(actions) == ["CancelTurn"]


def test_words_of_a_burst_that_stops_with_the_reply_are_its_echo_and_it_plays_on() -> None:
    session = burst_paused_over_the_reply()
    assert session.burst_heard(2, True, "what is it") == []
    actions = feed(session, silence(800))  # barge_in.echo_tail_ms + QUIET_WAIT_MS in all
    assert kinds(actions) == ["ResumeReply", "TurnDone"]  # it played on; the burst ended
    assert session.active_turn == 1


def test_a_stop_phrase_interrupts_at_once() -> None:
    session = burst_paused_over_the_reply()
    assert kinds(session.burst_heard(2, True, "stop", stop=True))[0] == "CancelTurn"
