"""The native wire protocol: every message round-trips; malformed input gets a stable code."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import pytest

from voice_agent.errors import ProtocolError
from voice_agent.server.protocol import (
    CLIENT_TYPES,
    PROTOCOL_VERSION,
    SERVER_TYPES,
    Cancel,
    Clear,
    Commit,
    EmotionEvent,
    End,
    ErrorEvent,
    Ping,
    Playback,
    Pong,
    Ready,
    ReasoningText,
    ReplyInterrupted,
    ReplyPaused,
    ReplyResumed,
    ReplyText,
    SessionEnd,
    SpeechResumed,
    SpeechStarted,
    SpeechStopped,
    Start,
    Text,
    TranscriptEvent,
    TranscriptPartial,
    TurnDone,
    Update,
    WakeEvent,
    decode_client,
    decode_server,
    encode,
)

# One sample per message type, every field set away from its default where it has one.
SAMPLES: dict[type[Any], list[Any]] = {
    Start: [Start(sample_rate=48000, output_sample_rate=22050, reasoning=True,
                  turn_detection=False, instructions="Answer in French."),
            Start(sample_rate=16000)],
    Commit: [Commit()],
    Clear: [Clear()],
    Text: [Text(text="What time is it?")],
    Update: [Update(instructions="Be brief.", turn_detection=False), Update()],
    Cancel: [Cancel()],
    End: [End()],
    Ping: [Ping(id="p-1"), Ping()],
    Playback: [Playback(turn_id=2, audio_samples=12000)],
    Ready: [Ready(session_id="s1", sample_rate=16000, output_sample_rate=24000,
                  protocol=PROTOCOL_VERSION, seq=1)],
    SpeechStarted: [SpeechStarted(turn_id=3, audio_ms=1230, seq=2)],
    SpeechStopped: [SpeechStopped(turn_id=3, audio_ms=2000, speech_end_ms=1550,
                                  reason="silence", seq=3)],
    SpeechResumed: [SpeechResumed(turn_id=3, audio_ms=2400, seq=4)],
    TranscriptPartial: [TranscriptPartial(turn_id=3, text="I'd like to book", audio_ms=1500,
                                          seq=3)],
    TranscriptEvent: [TranscriptEvent(turn_id=3, text="héllo “world”", asr_ms=12.5, seq=4)],
    ReplyText: [ReplyText(turn_id=3, delta="Hi there. ", seq=5)],
    EmotionEvent: [EmotionEvent(turn_id=3, label="anxious", valence=-0.4, arousal=0.7,
                                confidence=0.6, seq=5),
                   EmotionEvent(turn_id=4, label="sad", valence=-0.5, arousal=0.3,
                                confidence=0.4, fillers=2, sentiment=-0.55,
                                cues={"pitch_hz": 181.5, "speaking_rate_wps": 2.4},
                                length_scale=1.07),
                   EmotionEvent(turn_id=5, label="angry", valence=0.0, arousal=0.8,
                                confidence=0.7, decided_by="voice", baseline_turns=4,
                                basis={"loudness": {"value": -30.5, "baseline": -41.0,
                                                    "score": 2.1, "weight": 0.9}})],
    ReasoningText: [ReasoningText(turn_id=3, delta="The user greets me.", seq=5)],
    TurnDone: [
        TurnDone(turn_id=3, status="ok", transcript="hello", reply_text="Hi there.",
                 engine="llama.cpp", audio_samples=24000,
                 timings_ms={"asr": 12.5, "first_audio_ms": 300.0},
                 fallbacks={"openai:http://gpu:8000/v1#r1": "llm_unreachable"},
                 discarded_llm_runs=2, heard_text="Hi", seq=6),
        TurnDone(turn_id=4, status="cancelled", transcript="", reply_text="", engine="",
                 audio_samples=0),
    ],
    ReplyPaused: [ReplyPaused(turn_id=3, audio_samples=4800, seq=10)],
    ReplyResumed: [ReplyResumed(turn_id=3, audio_samples=4800, seq=11)],
    ReplyInterrupted: [ReplyInterrupted(turn_id=3, audio_samples=9600, reason="barge_in",
                                        seq=12)],
    WakeEvent: [WakeEvent(state="awake", phrase="okay_nabu", audio_ms=1520, seq=13),
                WakeEvent(state="asleep", phrase="okay_nabu", audio_ms=9000)],
    ErrorEvent: [
        ErrorEvent(code="engine_timeout", message="slow", transient=True, turn_id=3, seq=7),
        ErrorEvent(code="bad_json", message="no"),
    ],
    Pong: [Pong(id="p-1", seq=8)],
    SessionEnd: [SessionEnd(reason="end", input_stats={"processed": 16000,
                                                       "dropped_responding": 320}, seq=9)],
}


@pytest.mark.parametrize(
    ("registry", "decode"), [(CLIENT_TYPES, decode_client), (SERVER_TYPES, decode_server)],
    ids=["client", "server"],
)
def test_every_message_type_round_trips(registry: dict[str, type[Any]], decode: Any) -> None:
    missing = [name for name, cls in registry.items() if cls not in SAMPLES]
    assert not missing, f"add a sample for message type(s) {missing} to SAMPLES"
    for name, cls in registry.items():
        assert cls.type == name
        for message in SAMPLES[cls]:
            text = encode(message)
            data = json.loads(text)
            assert data["type"] == name
            assert set(data) == {"type", *(f.name for f in dataclasses.fields(cls))}
            assert decode(text) == message
            assert decode(text.encode("utf-8")) == message


def test_client_and_server_types_are_disjoint() -> None:
    assert not set(CLIENT_TYPES) & set(SERVER_TYPES)


def test_encode_keeps_unicode_and_is_compact() -> None:
    text = encode(ReplyText(turn_id=1, delta="naïve ☃"))
    assert "naïve ☃" in text
    assert ": " not in text and ", " not in text


def test_optional_fields_take_their_defaults() -> None:
    assert decode_client('{"type":"start","sample_rate":8000}') == Start(sample_rate=8000)
    assert decode_client('{"type":"ping"}') == Ping(id="")
    event = decode_server('{"type":"error","code":"x","message":"m","turn_id":null}')
    assert event == ErrorEvent(code="x", message="m")


def test_integers_are_accepted_for_float_fields() -> None:
    event = decode_server('{"type":"transcript","turn_id":1,"text":"t","asr_ms":12}')
    assert isinstance(event, TranscriptEvent)
    assert event.asr_ms == 12


def expect_code(text: str | bytes, code: str, *, server: bool = False) -> ProtocolError:
    with pytest.raises(ProtocolError) as info:
        (decode_server if server else decode_client)(text)
    assert info.value.code == code
    return info.value


@pytest.mark.parametrize(
    "text", ['{"type": "start"', "", "nope", b"\xff\xfe{", '{"type":"cancel"}}'],
)
def test_invalid_json_is_bad_json(text: str | bytes) -> None:
    expect_code(text, "bad_json")


@pytest.mark.parametrize("text", ["[]", '"start"', "3", "null", '[{"type":"cancel"}]'])
def test_non_object_is_bad_json(text: str) -> None:
    expect_code(text, "bad_json")


@pytest.mark.parametrize(
    "text",
    ['{"type":"dance"}', "{}", '{"type":null}', '{"type":3}', '{"type":"ready"}',
     '{"type":"START","sample_rate":16000}'],
)
def test_unknown_type(text: str) -> None:
    expect_code(text, "unknown_type")


def test_server_decoder_rejects_client_types() -> None:
    expect_code('{"type":"cancel"}', "unknown_type", server=True)


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ('{"type":"start","sample_rate":"16000"}', "sample_rate"),
        ('{"type":"start","sample_rate":16000.0}', "sample_rate"),
        ('{"type":"start","sample_rate":16000,"output_sample_rate":"x"}', "output_sample_rate"),
        ('{"type":"ping","id":5}', "id"),
        ('{"type":"ping","id":null}', "id"),
    ],
)
def test_wrong_field_type_is_bad_field(text: str, field: str) -> None:
    error = expect_code(text, "bad_field")
    assert field in error.message


@pytest.mark.parametrize(
    "text",
    ['{"type":"start","sample_rate":true}', '{"type":"start","sample_rate":false}',
     '{"type":"start","sample_rate":16000,"output_sample_rate":true}'],
)
def test_bool_is_not_an_int(text: str) -> None:
    expect_code(text, "bad_field")


def test_bool_is_not_a_float_and_an_int_is_not_a_bool() -> None:
    expect_code('{"type":"transcript","turn_id":1,"text":"t","asr_ms":true}', "bad_field",
                server=True)
    expect_code('{"type":"error","code":"c","message":"m","transient":1}', "bad_field",
                server=True)


def test_missing_required_field_is_bad_field() -> None:
    error = expect_code('{"type":"start"}', "bad_field")
    assert "sample_rate" in error.message
    error = expect_code('{"type":"speech_stopped","turn_id":1,"audio_ms":5}', "bad_field",
                        server=True)
    assert "speech_end_ms" in error.message and "reason" in error.message


def test_unknown_field_is_bad_field() -> None:
    error = expect_code('{"type":"cancel","turn_id":1}', "bad_field")
    assert "turn_id" in error.message
    expect_code('{"type":"start","sample_rate":16000,"channels":1}', "bad_field")


def test_protocol_errors_are_not_transient() -> None:
    error = expect_code("{", "bad_json")
    assert not error.transient


@pytest.mark.parametrize(
    "text",
    [
        '{"type":"turn_done","turn_id":1,"status":"ok","transcript":"","reply_text":"",'
        '"engine":"x","audio_samples":0,"timings_ms":{"asr_ms":"slow"}}',
        '{"type":"session_end","reason":"end","input_stats":{"processed":1.5}}',
        '{"type":"transcript","turn_id":1,"text":"a","asr_ms":NaN}',
        '{"type":"transcript","turn_id":1,"text":"a","asr_ms":Infinity}',
    ],
)
def test_typed_values_inside_fields_are_checked(text: str) -> None:
    with pytest.raises(ProtocolError) as caught:
        decode_server(text)
    assert caught.value.code in ("bad_field", "bad_json")


@pytest.mark.parametrize(
    "text",
    [
        "[" * 10_000 + "]" * 10_000,
        '{"type":"ping","id":' + "[" * 10_000 + "]" * 10_000 + "}",
        '{"type":"ping","id":' + '{"a":' * 10_000 + "1" + "}" * 10_001,
        "[" * 100_000,  # unterminated as well
        ("[" * 10_000).encode(),
    ],
)
def test_deeply_nested_json_is_bad_json_not_a_recursion_error(text: str | bytes) -> None:
    error = expect_code(text, "bad_json")
    assert "deeper" in str(error)
    expect_code(text, "bad_json", server=True)


def test_nesting_is_measured_outside_strings() -> None:
    # Brackets inside strings, even escaped quotes before them, are not nesting.
    text = json.dumps({"type": "ping", "id": '\\"' + "[{" * 5000})
    assert decode_client(text) == Ping(id='\\"' + "[{" * 5000)


def test_nesting_up_to_the_limit_still_parses() -> None:
    from voice_agent.server.protocol import MAX_JSON_DEPTH

    # Depth is checked before field types: a message exactly at the limit reaches them.
    inner = MAX_JSON_DEPTH - 1  # the message object itself is one level
    at_limit = '{"type":"ping","id":' + "[" * inner + "]" * inner + "}"
    assert "expected str" in str(expect_code(at_limit, "bad_field"))
    over = '{"type":"ping","id":' + "[" * MAX_JSON_DEPTH + "]" * MAX_JSON_DEPTH + "}"
    assert "deeper" in str(expect_code(over, "bad_json"))
    # Many sibling containers are not depth: a wide message is judged by its fields.
    wide = '{"type":"ping","id":[' + "[]," * 50_000 + "[]]}"
    assert "expected str" in str(expect_code(wide, "bad_field"))
