"""OpenAI Realtime wire messages (``/v1/realtime``): each a small frozen dataclass with its
``type``, encoded to and decoded from JSON.

Event names are the GA ones. A client that says it speaks the beta protocol (the
``OpenAI-Beta: realtime=v1`` header) gets the beta names of the events that were renamed
(:data:`BETA_NAMES`); both names are accepted from every client. Only what the appliance
does is modelled; fields a client sends that it has no use for are ignored, as the Realtime
API's own clients expect of a server that adds fields over time.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar

from voice_agent.errors import ProtocolError

BETA_NAMES: dict[str, str] = {
    "conversation.item.added": "conversation.item.created",
    "response.output_audio.delta": "response.audio.delta",
    "response.output_audio.done": "response.audio.done",
    "response.output_audio_transcript.delta": "response.audio_transcript.delta",
    "response.output_audio_transcript.done": "response.audio_transcript.done",
}
"""GA event name -> the beta name a beta client expects."""

EXTENSION_PREFIX = "voice_agent."
"""Events of the appliance's own (emotion, reasoning, barge-in): standard clients skip
types they do not know."""

# --- client -> server -----------------------------------------------------------------


@dataclass(frozen=True)
class SessionUpdate:
    type: ClassVar[str] = "session.update"
    instructions: str | None = None
    turn_detection: bool | None = None
    """None: not mentioned (unchanged); False: ``turn_detection: null``."""


@dataclass(frozen=True)
class AudioAppend:
    type: ClassVar[str] = "input_audio_buffer.append"
    audio: bytes = field(repr=False)
    """PCM16, 24 kHz mono (base64 on the wire)."""


@dataclass(frozen=True)
class AudioCommit:
    type: ClassVar[str] = "input_audio_buffer.commit"


@dataclass(frozen=True)
class AudioClear:
    type: ClassVar[str] = "input_audio_buffer.clear"


@dataclass(frozen=True)
class ItemCreate:
    """A user message of text (the only item kind a voice appliance takes)."""

    type: ClassVar[str] = "conversation.item.create"
    text: str
    item_id: str = ""


@dataclass(frozen=True)
class ResponseCreate:
    type: ClassVar[str] = "response.create"


@dataclass(frozen=True)
class ResponseCancel:
    type: ClassVar[str] = "response.cancel"


@dataclass(frozen=True)
class ItemTruncate:
    type: ClassVar[str] = "conversation.item.truncate"
    item_id: str
    audio_end_ms: int
    content_index: int = 0


RealtimeClientEvent = (SessionUpdate | AudioAppend | AudioCommit | AudioClear | ItemCreate
                       | ResponseCreate | ResponseCancel | ItemTruncate)

# --- server -> client -----------------------------------------------------------------


@dataclass(frozen=True)
class SessionCreated:
    type: ClassVar[str] = "session.created"
    session: dict[str, Any]


@dataclass(frozen=True)
class SessionUpdated:
    type: ClassVar[str] = "session.updated"
    session: dict[str, Any]


@dataclass(frozen=True)
class SpeechStartedRt:
    type: ClassVar[str] = "input_audio_buffer.speech_started"
    audio_start_ms: int
    item_id: str


@dataclass(frozen=True)
class SpeechStoppedRt:
    type: ClassVar[str] = "input_audio_buffer.speech_stopped"
    audio_end_ms: int
    item_id: str


@dataclass(frozen=True)
class Committed:
    type: ClassVar[str] = "input_audio_buffer.committed"
    item_id: str
    previous_item_id: str | None = None


@dataclass(frozen=True)
class Cleared:
    type: ClassVar[str] = "input_audio_buffer.cleared"


@dataclass(frozen=True)
class ItemAdded:
    type: ClassVar[str] = "conversation.item.added"
    item: dict[str, Any]
    previous_item_id: str | None = None


@dataclass(frozen=True)
class TranscriptionDelta:
    """More of the user item's transcript while the person still speaks. Deltas are only
    ever appended; the ``completed`` event's transcript is the final word."""

    type: ClassVar[str] = "conversation.item.input_audio_transcription.delta"
    item_id: str
    delta: str
    content_index: int = 0


@dataclass(frozen=True)
class TranscriptionCompleted:
    type: ClassVar[str] = "conversation.item.input_audio_transcription.completed"
    item_id: str
    transcript: str
    content_index: int = 0


@dataclass(frozen=True)
class ResponseCreated:
    type: ClassVar[str] = "response.created"
    response: dict[str, Any]


@dataclass(frozen=True)
class OutputItemAdded:
    type: ClassVar[str] = "response.output_item.added"
    response_id: str
    item: dict[str, Any]
    output_index: int = 0


@dataclass(frozen=True)
class _ReplyPart:
    """Where a piece of the reply belongs: its response, item and (always the first)
    output and content part."""

    response_id: str
    item_id: str
    output_index: int = field(default=0, kw_only=True)
    content_index: int = field(default=0, kw_only=True)


@dataclass(frozen=True)
class AudioDelta(_ReplyPart):
    type: ClassVar[str] = "response.output_audio.delta"
    delta: str
    """Base64 PCM16, 24 kHz mono."""


@dataclass(frozen=True)
class AudioDone(_ReplyPart):
    type: ClassVar[str] = "response.output_audio.done"


@dataclass(frozen=True)
class TranscriptDelta(_ReplyPart):
    type: ClassVar[str] = "response.output_audio_transcript.delta"
    delta: str


@dataclass(frozen=True)
class TranscriptDone(_ReplyPart):
    type: ClassVar[str] = "response.output_audio_transcript.done"
    transcript: str


@dataclass(frozen=True)
class OutputItemDone:
    type: ClassVar[str] = "response.output_item.done"
    response_id: str
    item: dict[str, Any]
    output_index: int = 0


@dataclass(frozen=True)
class ResponseDone:
    type: ClassVar[str] = "response.done"
    response: dict[str, Any]


@dataclass(frozen=True)
class ItemTruncated:
    type: ClassVar[str] = "conversation.item.truncated"
    item_id: str
    audio_end_ms: int
    content_index: int = 0


@dataclass(frozen=True)
class RealtimeError:
    type: ClassVar[str] = "error"
    error: dict[str, Any]


@dataclass(frozen=True)
class Extension:
    """One of the appliance's own events: ``voice_agent.<name>`` with ``data``'s fields."""

    type: ClassVar[str] = EXTENSION_PREFIX
    name: str
    data: dict[str, Any]


RealtimeServerEvent = (SessionCreated | SessionUpdated | SpeechStartedRt | SpeechStoppedRt
                       | Committed | Cleared | ItemAdded | TranscriptionDelta
                       | TranscriptionCompleted
                       | ResponseCreated | OutputItemAdded | AudioDelta | AudioDone
                       | TranscriptDelta | TranscriptDone | OutputItemDone | ResponseDone
                       | ItemTruncated | RealtimeError | Extension)


def encode_event(event: RealtimeServerEvent, event_id: str, *, beta: bool = False) -> str:
    """The JSON text of ``event``, with its ``event_id``; beta names for a beta client."""
    if isinstance(event, Extension):
        body = {"type": EXTENSION_PREFIX + event.name, "event_id": event_id, **event.data}
    else:
        name = BETA_NAMES.get(event.type, event.type) if beta else event.type
        body = {"type": name, "event_id": event_id, **asdict(event)}
    return json.dumps(body, ensure_ascii=False, separators=(",", ":"))


def error_body(code: str, message: str, *, transient: bool, event_id: str | None = None
               ) -> dict[str, Any]:
    """The ``error`` object of an ``error`` event (a server fault or a bad request)."""
    return {"type": "server_error" if transient else "invalid_request_error", "code": code,
            "message": message, "param": None, "event_id": event_id}


# --- decoding ---------------------------------------------------------------------------


def _object(data: dict[str, Any], key: str) -> dict[str, Any]:
    value = data.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ProtocolError(f"{key} must be an object", code="bad_field")
    return value


def _turn_detection(session: dict[str, Any]) -> bool | None:
    """GA: ``audio.input.turn_detection``; beta: ``turn_detection``. null turns it off."""
    audio_input = _object(_object(session, "audio"), "input")
    for where in (audio_input, session):
        if "turn_detection" in where:
            value = where["turn_detection"]
            if value is not None and not isinstance(value, dict):
                raise ProtocolError("turn_detection must be an object or null",
                                    code="bad_field")
            return value is not None
    return None


def _check_formats(session: dict[str, Any]) -> None:
    """Only PCM16 at 24 kHz is spoken here (g711 is not)."""
    audio = _object(session, "audio")
    for side in ("input", "output"):
        fmt = _object(_object(audio, side), "format")
        if fmt and (fmt.get("type") not in (None, "audio/pcm")
                    or fmt.get("rate", 24000) != 24000):
            raise ProtocolError("only audio/pcm at 24000 Hz is supported",
                                code="unsupported_format")
    for key in ("input_audio_format", "output_audio_format"):
        if session.get(key) not in (None, "pcm16"):
            raise ProtocolError("only pcm16 is supported", code="unsupported_format")


def _text_of(item: dict[str, Any]) -> str:
    if item.get("type", "message") != "message" or item.get("role", "user") != "user":
        raise ProtocolError("only user messages can be added", code="unsupported_item")
    content = item.get("content")
    if not isinstance(content, list):
        raise ProtocolError("item.content must be a list", code="bad_field")
    texts = [part.get("text") for part in content
             if isinstance(part, dict) and part.get("type") in ("input_text", "text")]
    words = [t for t in texts if isinstance(t, str)]
    if not words or len(words) < len(texts):
        raise ProtocolError("a user message needs input_text content", code="unsupported_item")
    return " ".join(words)


def decode_event(text: str | bytes) -> RealtimeClientEvent:
    """One client event; :class:`ProtocolError` (coded) for anything malformed."""
    try:
        data = json.loads(text)
    except (ValueError, RecursionError):
        raise ProtocolError("not valid JSON", code="bad_json") from None
    if not isinstance(data, dict) or not isinstance(data.get("type"), str):
        raise ProtocolError("an event is an object with a type", code="bad_json")
    kind = data["type"]
    if kind == SessionUpdate.type:
        session = _object(data, "session")
        _check_formats(session)
        instructions = session.get("instructions")
        if instructions is not None and not isinstance(instructions, str):
            raise ProtocolError("instructions must be a string", code="bad_field")
        return SessionUpdate(instructions=instructions, turn_detection=_turn_detection(session))
    if kind == AudioAppend.type:
        audio = data.get("audio")
        if not isinstance(audio, str):
            raise ProtocolError("audio must be base64 text", code="bad_field")
        try:
            return AudioAppend(audio=base64.b64decode(audio, validate=True))
        except (binascii.Error, ValueError):
            raise ProtocolError("audio is not valid base64", code="bad_audio") from None
    if kind == ItemCreate.type:
        item = _object(data, "item")
        item_id = item.get("id")
        return ItemCreate(text=_text_of(item), item_id=item_id if isinstance(item_id, str) else "")
    if kind == ItemTruncate.type:
        item_id, end_ms = data.get("item_id"), data.get("audio_end_ms")
        if not isinstance(item_id, str) or not isinstance(end_ms, int) or end_ms < 0:
            raise ProtocolError("truncate needs item_id and audio_end_ms >= 0",
                                code="bad_field")
        return ItemTruncate(item_id=item_id, audio_end_ms=end_ms,
                            content_index=int(data.get("content_index") or 0))
    simple: dict[str, RealtimeClientEvent] = {
        AudioCommit.type: AudioCommit(), AudioClear.type: AudioClear(),
        ResponseCreate.type: ResponseCreate(), ResponseCancel.type: ResponseCancel()}
    if kind in simple:
        return simple[kind]
    raise ProtocolError(f"unsupported event type {kind!r}", code="unknown_type")


def encode_client_event(event: RealtimeClientEvent) -> str:
    """A client event as JSON (tests, and the appliance's own clients)."""
    body: dict[str, Any] = {"type": event.type}
    if isinstance(event, SessionUpdate):
        session: dict[str, Any] = {"type": "realtime"}
        if event.instructions is not None:
            session["instructions"] = event.instructions
        if event.turn_detection is not None:
            session["audio"] = {"input": {"turn_detection": (
                {"type": "server_vad"} if event.turn_detection else None)}}
        body["session"] = session
    elif isinstance(event, AudioAppend):
        body["audio"] = base64.b64encode(event.audio).decode("ascii")
    elif isinstance(event, ItemCreate):
        body["item"] = {"type": "message", "role": "user",
                        "content": [{"type": "input_text", "text": event.text}],
                        **({"id": event.item_id} if event.item_id else {})}
    elif isinstance(event, ItemTruncate):
        body.update(item_id=event.item_id, content_index=event.content_index,
                    audio_end_ms=event.audio_end_ms)
    return json.dumps(body)
