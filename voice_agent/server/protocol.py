"""The native wire protocol: JSON text frames for control and events, binary frames for PCM.

Every message is a small frozen dataclass with a ``type`` string. This module never touches
a socket: it turns text into messages and messages into text, and rejects anything
malformed with a coded :class:`ProtocolError`. The README documents the protocol.
"""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass, field
from typing import Any, ClassVar

from voice_agent.errors import ProtocolError

PROTOCOL_VERSION = 1


# --- client -> server -------------------------------------------------------------------


@dataclass(frozen=True)
class Start:
    """First message: the PCM format the client sends and wants back."""

    type: ClassVar[str] = "start"
    sample_rate: int
    """Rate of the client's 16-bit mono PCM, 8000-48000 Hz."""
    output_sample_rate: int | None = None
    """Rate of the reply PCM; defaults to ``sample_rate``."""
    reasoning: bool = False
    """Also send the model's reasoning (``<think>`` text) as ``reasoning`` events. It is never
    spoken nor part of ``reply_text``."""
    token: str | None = field(default=None, repr=False)
    """The access token, for clients that cannot send ``Authorization`` (browsers) and do not
    put it in the URL. Never echoed or logged."""
    turn_detection: bool = True
    """The server finds the turns (VAD and turn-taking). Off: the client ends each one
    with ``commit``."""
    instructions: str | None = None
    """This session's system prompt (default: ``llm.system_prompt``)."""


@dataclass(frozen=True)
class Cancel:
    """Stop the reply being generated or spoken now."""

    type: ClassVar[str] = "cancel"


@dataclass(frozen=True)
class End:
    """No more audio: finish the open utterance and its reply, then close normally."""

    type: ClassVar[str] = "end"


@dataclass(frozen=True)
class Ping:
    type: ClassVar[str] = "ping"
    id: str = ""


@dataclass(frozen=True)
class Playback:
    """How much of a turn's reply the client has actually played (like OpenAI Realtime's
    ``audio_end_ms``). Optional: without it the server's own pacing is the playback clock.
    Send it every 100-500 ms while a reply plays, and once when it stops."""

    type: ClassVar[str] = "playback"
    turn_id: int
    audio_samples: int
    """Samples (at ``output_sample_rate``) of the turn's reply played so far."""


@dataclass(frozen=True)
class Commit:
    """End the input here. Turn detection off: the audio since the last commit or
    ``clear`` is a turn. On: the open utterance ends now."""

    type: ClassVar[str] = "commit"


@dataclass(frozen=True)
class Clear:
    """Forget the audio held since the last commit (turn detection off)."""

    type: ClassVar[str] = "clear"


TEXT_MAX_CHARS = 4000
"""Longest typed turn accepted (``text_too_long`` beyond)."""


@dataclass(frozen=True)
class Text:
    """A typed turn: answered like speech, with no audio; it takes the floor from a reply
    still running."""

    type: ClassVar[str] = "text"
    text: str


@dataclass(frozen=True)
class Update:
    """Change the session's options; a field left out keeps its value."""

    type: ClassVar[str] = "update"
    instructions: str | None = None
    turn_detection: bool | None = None


ClientMessage = Start | Cancel | End | Ping | Playback | Commit | Clear | Text | Update


# --- server -> client -------------------------------------------------------------------


@dataclass(frozen=True)
class Ready:
    type: ClassVar[str] = "ready"
    session_id: str
    sample_rate: int
    output_sample_rate: int
    protocol: int = PROTOCOL_VERSION
    seq: int = 0


@dataclass(frozen=True)
class SpeechStarted:
    type: ClassVar[str] = "speech_started"
    turn_id: int
    audio_ms: int
    """Stream time (ms of audio received) where speech began."""
    seq: int = 0


@dataclass(frozen=True)
class SpeechStopped:
    type: ClassVar[str] = "speech_stopped"
    turn_id: int
    audio_ms: int
    """Stream time at which the end of the turn was decided."""
    speech_end_ms: int
    """Stream time just after the last speech frame."""
    reason: str
    """``silence``, ``max_length`` or ``flush`` (the client sent ``end``)."""
    seq: int = 0


@dataclass(frozen=True)
class SpeechResumed:
    """The person went on speaking after an end-of-turn decision, before hearing any of the
    reply: the turn continues (same ``turn_id``). Drop whatever reply audio and text of this
    turn was received; its transcript and reply come again, for the whole utterance."""

    type: ClassVar[str] = "speech_resumed"
    turn_id: int
    audio_ms: int
    """Stream time where the speech resumed."""
    seq: int = 0


@dataclass(frozen=True)
class TranscriptPartial:
    """What has been heard so far while the person is still speaking (replaced by the next
    partial, and by the final ``transcript``)."""

    type: ClassVar[str] = "transcript_partial"
    turn_id: int
    text: str
    audio_ms: int
    """Stream time up to which the audio was transcribed."""
    seq: int = 0


@dataclass(frozen=True)
class TranscriptEvent:
    type: ClassVar[str] = "transcript"
    turn_id: int
    text: str
    asr_ms: float
    seq: int = 0


@dataclass(frozen=True)
class EmotionEvent:
    type: ClassVar[str] = "emotion"
    turn_id: int
    label: str
    """How the person sounds: see ``voice_agent.emotion`` for the labels."""
    valence: float
    """-1 (negative) .. 1 (positive)."""
    arousal: float
    """0 (calm) .. 1 (agitated)."""
    confidence: float
    """0 .. 1: low when the cues disagree or the utterance is short."""
    fillers: int = 0
    """Hesitation fillers heard (um, uh, er, hmm; 嗯, 啊 in Chinese)."""
    sentiment: float = 0.0
    """VADER compound score of the words, -1 .. 1."""
    cues: dict[str, float] = field(default_factory=dict)
    """Acoustic cues: ``pitch_hz``, ``pitch_range_semitones``, ``loudness_dbfs``,
    ``speaking_rate_wps``, ``pause_ratio``, ``voiced_ratio``, ``speech_s``, ``tilt_db``."""
    basis: dict[str, dict[str, float]] = field(default_factory=dict)
    """What the arousal rests on: per cue (``loudness``, ``pitch``, ``pitch_range``,
    ``tilt``, ``rate``, ``text``) its ``value``, the speaker's ``baseline``, the ``score``
    (units over the baseline) and its ``weight``."""
    decided_by: str = ""
    """What decided the label: ``words``, ``fillers`` or ``voice``."""
    baseline_turns: int = 0
    """How many of the speaker's earlier turns the baseline rests on (0: typical values)."""
    length_scale: float = 1.0
    """Speaking-rate factor the reply is spoken with because of this tag (>1 slower)."""
    seq: int = 0


@dataclass(frozen=True)
class ReplyText:
    type: ClassVar[str] = "reply_text"
    turn_id: int
    delta: str
    """The next piece of reply text (reasoning never appears here)."""
    seq: int = 0


@dataclass(frozen=True)
class ReasoningText:
    type: ClassVar[str] = "reasoning"
    turn_id: int
    delta: str
    """Reasoning text, only for clients that asked for it in ``start``."""
    seq: int = 0


@dataclass(frozen=True)
class TurnDone:
    type: ClassVar[str] = "turn_done"
    turn_id: int
    status: str
    """``ok``, ``empty`` (nothing intelligible heard), ``cancelled``, ``error`` or
    ``backchannel`` (a burst over the reply, or speech in its echo tail, that was no turn:
    its words are in ``transcript``)."""
    transcript: str
    reply_text: str
    engine: str
    audio_samples: int
    """Reply samples sent as binary frames for this turn (at ``output_sample_rate``)."""
    timings_ms: dict[str, float] = field(default_factory=dict)
    fallbacks: dict[str, str] = field(default_factory=dict)
    """Engines that failed during this turn, with their error codes."""
    discarded_llm_runs: int = 0
    """Speculative model runs started for this turn during a pause and thrown away (the person
    went on speaking, or a committed turn of another session took the model)."""
    heard_text: str = ""
    """The reply as far as it was played (cut at a word boundary when interrupted): what the
    conversation history keeps."""
    seq: int = 0

    @classmethod
    def unrun(cls, turn_id: int, status: str) -> TurnDone:
        """The end of a turn nothing of which ran: cancelled before it started, refused
        (``rate_limited``), or a runner that could not report its own end."""
        return cls(turn_id=turn_id, status=status, transcript="", reply_text="", engine="",
                   audio_samples=0)


@dataclass(frozen=True)
class ReplyPaused:
    """Speech (or a noise) began over the reply: stop playing it at ``audio_samples`` and drop
    what is buffered past that point. Either ``reply_resumed`` (it was a cough, a "mm-hm")
    or ``reply_interrupted`` follows."""

    type: ClassVar[str] = "reply_paused"
    turn_id: int
    audio_samples: int
    """Where to stop: samples of this turn's reply (at ``output_sample_rate``)."""
    seq: int = 0


@dataclass(frozen=True)
class ReplyResumed:
    """The sound over the reply was not a turn: play on. The reply audio is sent again from
    ``audio_samples`` (where it was paused)."""

    type: ClassVar[str] = "reply_resumed"
    turn_id: int
    audio_samples: int
    seq: int = 0


@dataclass(frozen=True)
class ReplyInterrupted:
    """The reply was stopped (barge-in, or the client's ``cancel``): stop playing at
    ``audio_samples`` and drop the rest. The turn's ``turn_done`` follows; its ``heard_text``
    (the reply cut at the last word played) is all the conversation keeps."""

    type: ClassVar[str] = "reply_interrupted"
    turn_id: int
    audio_samples: int
    reason: str
    """``barge_in`` or ``client``."""
    seq: int = 0


@dataclass(frozen=True)
class WakeEvent:
    """The wake phrase gate (``[wake]``): ``awake`` when the phrase was heard (speech is
    answered from now on), ``asleep`` when the follow-up window ran out."""

    type: ClassVar[str] = "wake"
    state: str
    phrase: str
    audio_ms: int
    """Stream time of the change."""
    seq: int = 0


@dataclass(frozen=True)
class ErrorEvent:
    type: ClassVar[str] = "error"
    code: str
    message: str
    transient: bool = False
    turn_id: int | None = None
    seq: int = 0


@dataclass(frozen=True)
class Pong:
    type: ClassVar[str] = "pong"
    id: str = ""
    seq: int = 0


@dataclass(frozen=True)
class SessionEnd:
    type: ClassVar[str] = "session_end"
    reason: str
    input_stats: dict[str, int] = field(default_factory=dict)
    """Input samples (16 kHz) processed, and dropped by reason."""
    seq: int = 0


ServerEvent = (
    Ready
    | SpeechStarted
    | SpeechStopped
    | SpeechResumed
    | TranscriptPartial
    | TranscriptEvent
    | EmotionEvent
    | ReplyText
    | ReasoningText
    | ReplyPaused
    | ReplyResumed
    | ReplyInterrupted
    | WakeEvent
    | TurnDone
    | ErrorEvent
    | Pong
    | SessionEnd
)

CLIENT_TYPES: dict[str, type[Any]] = {
    c.type: c for c in (Start, Cancel, End, Ping, Playback, Commit, Clear, Text, Update)}
SERVER_TYPES: dict[str, type[Any]] = {
    c.type: c
    for c in (Ready, SpeechStarted, SpeechStopped, SpeechResumed, TranscriptPartial,
              TranscriptEvent, EmotionEvent, ReplyText,
              ReasoningText, ReplyPaused, ReplyResumed, ReplyInterrupted, WakeEvent,
              TurnDone, ErrorEvent, Pong, SessionEnd)
}


def _numbers_by_name(v: Any) -> bool:
    return isinstance(v, dict) and all(
        isinstance(k, str) and isinstance(x, int | float) and not isinstance(x, bool)
        for k, x in v.items())


_CHECKS: dict[str, Any] = {
    "int": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "float": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
    "str": lambda v: isinstance(v, str),
    "bool": lambda v: isinstance(v, bool),
    "int | None": lambda v: v is None or (isinstance(v, int) and not isinstance(v, bool)),
    "str | None": lambda v: v is None or isinstance(v, str),
    "bool | None": lambda v: v is None or isinstance(v, bool),
    "dict[str, float]": _numbers_by_name,
    "dict[str, dict[str, float]]": lambda v: isinstance(v, dict) and all(
        isinstance(k, str) and _numbers_by_name(x) for k, x in v.items()),
    "dict[str, str]": lambda v: isinstance(v, dict) and all(
        isinstance(k, str) and isinstance(x, str) for k, x in v.items()),
    "dict[str, int]": lambda v: isinstance(v, dict) and all(
        isinstance(k, str) and isinstance(x, int) and not isinstance(x, bool)
        for k, x in v.items()),
}


def _reject_constant(name: str) -> float:
    raise ValueError(f"{name} is not a number JSON allows")


def encode(message: Any) -> str:
    """Message dataclass to a JSON text frame."""
    return json.dumps({"type": message.type, **dataclasses.asdict(message)},
                      ensure_ascii=False, separators=(",", ":"))


MAX_JSON_DEPTH = 8
"""Deepest nesting of arrays/objects a message may have. Every message of the protocol is
an object holding scalars or flat objects (depth 2); a deeply nested one is rejected before
parsing, as ``bad_json``, so it can never exhaust the parser's recursion."""

# A JSON string literal; an unterminated one runs to the end, so no input makes the scan
# go back over itself.
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"?', re.DOTALL)
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")
_SQUARE = str.maketrans("{}", "[]")


def _too_deep(text: str, limit: int) -> bool:
    """Whether ``text`` nests arrays/objects deeper than ``limit``.

    Everything runs at C speed (a Python loop over a megabyte of ``[]`` would hold the
    event loop for most of a second): with strings and scalars removed, each pass of
    deleting every ``[]`` peels exactly one level, so brackets left after ``limit`` passes
    are nesting deeper than that (or are unbalanced: not JSON either way)."""
    if text.count("[") + text.count("{") <= limit:
        return False
    brackets = _NOT_BRACKET.sub("", _STRING.sub("", text)).translate(_SQUARE)
    for _ in range(limit):
        if not brackets:
            return False
        brackets = brackets.replace("[]", "")
    return bool(brackets)


def _decode(text: str | bytes, registry: dict[str, type[Any]]) -> Any:
    try:
        if isinstance(text, bytes):
            text = text.decode("utf-8")
        if _too_deep(text, MAX_JSON_DEPTH):
            raise ProtocolError(f"message nests deeper than {MAX_JSON_DEPTH} levels",
                                code="bad_json")
        data = json.loads(text, parse_constant=_reject_constant)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        # RecursionError: a backstop; _too_deep rejects such nesting first.
        raise ProtocolError(f"message is not valid JSON: {exc}", code="bad_json") from None
    if not isinstance(data, dict):
        raise ProtocolError("message must be a JSON object", code="bad_json")
    kind = data.pop("type", None)
    cls = registry.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise ProtocolError(f"unknown message type {kind!r}", code="unknown_type")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for name, value in data.items():
        spec = fields.get(name)
        if spec is None:
            raise ProtocolError(f"{kind}: unknown field {name!r}", code="bad_field")
        if not _CHECKS[str(spec.type)](value):
            shown = "a hidden value" if name == "token" else repr(value)  # never echo secrets
            raise ProtocolError(f"{kind}.{name}: expected {spec.type}, got {shown}",
                                code="bad_field")
    missing = [
        n for n, f in fields.items()
        if n not in data
        and f.default is dataclasses.MISSING
        and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise ProtocolError(f"{kind}: missing field(s) {', '.join(missing)}", code="bad_field")
    return cls(**data)


def decode_client(text: str | bytes) -> ClientMessage:
    """Parse a client text frame; raises :class:`ProtocolError` with a stable code."""
    message: ClientMessage = _decode(text, CLIENT_TYPES)
    return message


def decode_server(text: str | bytes) -> ServerEvent:
    """Parse a server text frame (used by the client and the tests)."""
    event: ServerEvent = _decode(text, SERVER_TYPES)
    return event
