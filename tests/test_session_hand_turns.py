"""Turns the client starts by hand: a commit with turn detection off, and typed turns."""

from __future__ import annotations

from tests.test_session import EnergyVad, events, feed, speak_one_turn, tone
from voice_agent.audio.frontend import PassthroughFrontend
from voice_agent.config import VadConfig
from voice_agent.server.protocol import ErrorEvent, SpeechStarted, SpeechStopped
from voice_agent.session import CancelTurn, Session, StartTurn, State, silence


def manual_session(**kwargs: object) -> Session:
    return Session(vad_config=VadConfig(), frontend=PassthroughFrontend(), vad=EnergyVad(),
                   input_rate=16000, turn_detection=False, **kwargs)  # type: ignore[arg-type]


def test_with_detection_off_speech_waits_for_the_commit() -> None:
    session = manual_session()
    assert feed(session, silence(300) + tone(1000) + silence(1500)) == []
    committed, start = events(session.commit())
    assert isinstance(committed, SpeechStopped) and committed.reason == "commit"
    assert isinstance(start, StartTurn) and start.turn_id == committed.turn_id == 1
    assert start.audio.size == 16000 * 28 // 10  # all of it, silence included
    assert session.state is State.RESPONDING


def test_an_empty_commit_is_an_error_and_clear_forgets_the_audio() -> None:
    session = manual_session()
    (error,) = events(session.commit())
    assert isinstance(error, ErrorEvent) and error.code == "empty_commit"
    feed(session, tone(500))
    session.clear()
    (error,) = events(session.commit())
    assert isinstance(error, ErrorEvent)


def test_a_typed_turn_takes_the_floor_from_a_running_reply() -> None:
    session = Session(vad_config=VadConfig(), frontend=PassthroughFrontend(), vad=EnergyVad(),
                      input_rate=16000)
    spoken = [a for a in speak_one_turn(session) if isinstance(a, StartTurn)]
    assert session.active_turn == spoken[0].turn_id
    cancel, typed = session.text_turn("What about tomorrow?")
    assert cancel == CancelTurn(spoken[0].turn_id, "client")
    assert isinstance(typed, StartTurn) and typed.text == "What about tomorrow?"
    assert typed.turn_id == spoken[0].turn_id + 1 and typed.audio.size == 0
    assert session.active_turn == typed.turn_id


def test_turn_detection_can_be_switched_during_a_session() -> None:
    session = Session(vad_config=VadConfig(), frontend=PassthroughFrontend(), vad=EnergyVad(),
                      input_rate=16000)
    session.set_turn_detection(False)
    assert feed(session, tone(1000) + silence(1500)) == []
    assert any(isinstance(a, StartTurn) for a in session.commit())
    session.turn_finished(1)
    session.set_turn_detection(True)
    started = events(feed(session, tone(1000) + silence(1500)))
    assert any(isinstance(e, SpeechStarted) for e in started)


def test_a_typed_turn_while_someone_speaks_drops_the_open_utterance() -> None:
    session = Session(vad_config=VadConfig(), frontend=PassthroughFrontend(), vad=EnergyVad(),
                      input_rate=16000)
    assert any(isinstance(e, SpeechStarted) for e in events(feed(session, tone(800))))
    (typed,) = session.text_turn("Never mind, what time is it?")
    assert isinstance(typed, StartTurn) and typed.text
    after = feed(session, silence(1500))
    assert not any(isinstance(a, StartTurn) for a in after), after
    assert session.active_turn == typed.turn_id
