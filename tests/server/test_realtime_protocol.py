"""OpenAI Realtime messages: every client event round-trips, every server event encodes with
its type and fields, beta names for beta clients, coded errors for malformed events; and the
wire's translation of a turn."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import pytest

from voice_agent.errors import ProtocolError
from voice_agent.server import realtime_protocol as rt
from voice_agent.server.protocol import (
    Cancel,
    Commit,
    Playback,
    ReplyText,
    SpeechStarted,
    SpeechStopped,
    Text,
    TranscriptEvent,
    TranscriptPartial,
    TurnDone,
    Update,
)
from voice_agent.server.realtime import RealtimeWire
from voice_agent.server.wire import Reply

CLIENT_SAMPLES: list[rt.RealtimeClientEvent] = [
    rt.SessionUpdate(instructions="Be brief.", turn_detection=False),
    rt.SessionUpdate(turn_detection=True),
    rt.SessionUpdate(),
    rt.AudioAppend(audio=b"\x01\x00\xff\x7f"),
    rt.AudioCommit(),
    rt.AudioClear(),
    rt.ItemCreate(text="What is the time?", item_id="msg_1"),
    rt.ItemCreate(text="Hello."),
    rt.ResponseCreate(),
    rt.ResponseCancel(),
    rt.ItemTruncate(item_id="item_3_out", audio_end_ms=1500),
]

SERVER_SAMPLES: list[Any] = [
    rt.SessionCreated(session={"id": "sess_1"}), rt.SessionUpdated(session={"id": "sess_1"}),
    rt.SpeechStartedRt(audio_start_ms=300, item_id="item_1_in"),
    rt.SpeechStoppedRt(audio_end_ms=2000, item_id="item_1_in"),
    rt.Committed(item_id="item_1_in", previous_item_id="item_0_out"), rt.Cleared(),
    rt.ItemAdded(item={"id": "x"}),
    rt.TranscriptionDelta(item_id="item_1_in", delta=" hello"),
    rt.TranscriptionCompleted(item_id="item_1_in", transcript="hello"),
    rt.ResponseCreated(response={"id": "resp_1"}),
    rt.OutputItemAdded(response_id="resp_1", item={"id": "item_1_out"}),
    rt.AudioDelta(response_id="resp_1", item_id="item_1_out", delta="AAA="),
    rt.AudioDone(response_id="resp_1", item_id="item_1_out"),
    rt.TranscriptDelta(response_id="resp_1", item_id="item_1_out", delta="Hi."),
    rt.TranscriptDone(response_id="resp_1", item_id="item_1_out", transcript="Hi."),
    rt.OutputItemDone(response_id="resp_1", item={"id": "item_1_out"}),
    rt.ResponseDone(response={"id": "resp_1", "status": "completed"}),
    rt.ItemTruncated(item_id="item_1_out", audio_end_ms=500),
    rt.RealtimeError(error=rt.error_body("bad_json", "no", transient=False)),
]


@pytest.mark.parametrize("event", CLIENT_SAMPLES, ids=lambda e: e.type)
def test_every_client_event_round_trips(event: rt.RealtimeClientEvent) -> None:
    assert rt.decode_event(rt.encode_client_event(event)) == event


@pytest.mark.parametrize("event", SERVER_SAMPLES, ids=lambda e: e.type)
def test_every_server_event_encodes_its_type_and_fields(event: Any) -> None:
    data = json.loads(rt.encode_event(event, "event_7"))
    assert data.pop("type") == event.type and data.pop("event_id") == "event_7"
    assert data == dataclasses.asdict(event)


def test_beta_clients_get_the_beta_names() -> None:
    delta = rt.AudioDelta(response_id="r", item_id="i", delta="AA==")
    assert json.loads(rt.encode_event(delta, "e", beta=True))["type"] == "response.audio.delta"
    assert json.loads(rt.encode_event(delta, "e"))["type"] == "response.output_audio.delta"
    extension = rt.Extension("emotion", {"label": "sad"})
    assert json.loads(rt.encode_event(extension, "e")) == {
        "type": "voice_agent.emotion", "event_id": "e", "label": "sad"}


def test_beta_session_fields_are_read_too() -> None:
    update = rt.decode_event(json.dumps({"type": "session.update", "session": {
        "turn_detection": None, "input_audio_format": "pcm16"}}))
    assert update == rt.SessionUpdate(turn_detection=False)


@pytest.mark.parametrize(("text", "code"), [
    ("{", "bad_json"),
    ('{"type": "nope"}', "unknown_type"),
    ('{"type": "input_audio_buffer.append", "audio": "%%"}', "bad_audio"),
    ('{"type": "input_audio_buffer.append"}', "bad_field"),
    ('{"type": "session.update", "session": {"audio": {"input": {"format": '
     '{"type": "audio/pcmu"}}}}}', "unsupported_format"),
    ('{"type": "session.update", "session": {"instructions": 3}}', "bad_field"),
    ('{"type": "conversation.item.create", "item": {"role": "assistant", "content": []}}',
     "unsupported_item"),
    ('{"type": "conversation.item.truncate", "item_id": "x", "audio_end_ms": -1}',
     "bad_field"),
])
def test_malformed_events_get_coded_errors(text: str, code: str) -> None:
    with pytest.raises(ProtocolError) as info:
        rt.decode_event(text)
    assert info.value.code == code


def types(messages: list[str]) -> list[str]:
    return [json.loads(m)["type"] for m in messages]


def test_a_spoken_turn_becomes_one_response_with_one_done() -> None:
    wire = RealtimeWire("s1", instructions="x", voice="v")
    sent = [*wire.encode(SpeechStarted(turn_id=1, audio_ms=300)),
            *wire.encode(SpeechStopped(turn_id=1, audio_ms=2000, speech_end_ms=1600,
                                       reason="silence")),
            *wire.encode(TranscriptEvent(turn_id=1, text="hello", asr_ms=1.0)),
            *wire.encode(ReplyText(turn_id=1, delta="Hi there.")),
            *[m for m in wire.encode_audio(b"\x00\x00" * 10) if isinstance(m, str)],
            *wire.encode(TurnDone(turn_id=1, status="ok", transcript="hello",
                                  reply_text="Hi there.", engine="e", audio_samples=10,
                                  heard_text="Hi there."))]
    assert types(sent) == [
        "input_audio_buffer.speech_started", "input_audio_buffer.speech_stopped",
        "input_audio_buffer.committed",
        "conversation.item.input_audio_transcription.completed",
        "response.created", "response.output_item.added",
        "response.output_audio_transcript.delta", "response.output_audio.delta",
        "response.output_audio.done", "response.output_audio_transcript.done",
        "response.output_item.done", "response.done"]
    done = json.loads(sent[-1])["response"]
    assert done["status"] == "completed"
    assert done["output"][0]["content"][0]["transcript"] == "Hi there."
    assert len({json.loads(m)["event_id"] for m in sent}) == len(sent)


def test_partial_transcripts_become_deltas_that_are_only_ever_appended() -> None:
    """Whisper revises its running hypothesis; a Realtime client appends deltas. So a delta
    goes out only where the new hypothesis extends what was sent; each partial still goes
    out whole as ``voice_agent.transcript_partial``."""
    wire = RealtimeWire("s1", instructions="x", voice="v")
    hypotheses = [(1, " Drop the"), (1, "Drop the two"), (1, "Drop a two when"),
                  (1, "Drop the two when you"), (1, "Drop the two when you"), (2, " Add it")]
    sent = [json.loads(m) for m in wire.encode(SpeechStarted(turn_id=1, audio_ms=0))]
    for turn_id, text in hypotheses:
        sent += [json.loads(m) for m in wire.encode(
            TranscriptPartial(turn_id=turn_id, text=text, audio_ms=700))]
    deltas = [(e["item_id"], e["delta"]) for e in sent
              if e["type"] == "conversation.item.input_audio_transcription.delta"]
    assert deltas == [("item_1_in", "Drop the"), ("item_1_in", " two"),
                      ("item_1_in", " when you"), ("item_2_in", "Add it")]
    partials = [e["text"] for e in sent if e["type"] == "voice_agent.transcript_partial"]
    assert partials == [text for _, text in hypotheses]


def test_commands_from_client_events() -> None:
    wire = RealtimeWire("s1", instructions="x", voice="v")
    update = wire.decode(rt.encode_client_event(rt.SessionUpdate(turn_detection=False)))
    assert update[0] == Update(turn_detection=False)
    assert isinstance(update[1], Reply) and '"turn_detection":null' in update[1].text
    assert wire.decode(rt.encode_client_event(rt.AudioCommit())) == [Commit()]
    with pytest.raises(ProtocolError):
        wire.decode(rt.encode_client_event(rt.ResponseCreate()))
    wire.decode(rt.encode_client_event(rt.ItemCreate(text="Hi.")))
    wire.decode(rt.encode_client_event(rt.ItemCreate(text="How are you?")))
    assert wire.decode(rt.encode_client_event(rt.ResponseCreate())) == [
        Text(text="Hi. How are you?")]
    wire.encode(ReplyText(turn_id=4, delta="Fine."))  # turn 4's response is open
    truncate = wire.decode(rt.encode_client_event(rt.ItemTruncate("item_4_out", 500)))
    assert truncate[:2] == [Playback(turn_id=4, audio_samples=12000), Cancel()]
    with pytest.raises(ProtocolError) as info:
        wire.decode(rt.encode_client_event(rt.ItemTruncate("item_x", 500)))
    assert info.value.code == "unknown_item"
