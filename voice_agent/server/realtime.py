"""The OpenAI Realtime wire (``/v1/realtime``): code written for the Realtime API (the
``openai`` SDK's ``realtime.connect``) talks to the appliance unchanged.

It adapts the one session core (:mod:`voice_agent.server.wire`): Realtime events become the
core's commands, the core's events become Realtime events. What it decides:

- The session starts on connect (``session.created``), PCM16 at 24 kHz both ways, server VAD
  on; ``session.update`` sets ``instructions`` and turns detection off
  (``turn_detection: null``) or on. Other formats are refused (``unsupported_format``).
- Each core turn is one user item (``item_<turn>_in``), one response (``resp_<turn>``) and
  one assistant item (``item_<turn>_out``); every turn ends with exactly one
  ``response.done`` (``completed``, ``cancelled`` or ``failed``).
- With detection off, ``input_audio_buffer.commit`` answers the committed audio at once (a
  voice appliance has nothing else to wait for); a ``response.create`` while that answer
  runs starts nothing new. After ``conversation.item.create`` (a user text message),
  ``response.create`` answers it.
- ``conversation.item.truncate`` is the client's playback position: the history keeps what
  was heard, and a reply still going is stopped there.
- Partial transcripts become ``input_audio_transcription.delta`` where they extend what was
  sent (deltas are only appended; see ``_transcription_delta``).
- Emotion, reasoning and the barge-in steps go out as ``voice_agent.*`` events, which
  standard clients skip.
"""

from __future__ import annotations

import base64
import dataclasses
import re
from typing import Any

from voice_agent.errors import ProtocolError
from voice_agent.server.protocol import (
    Cancel,
    Clear,
    Commit,
    EmotionEvent,
    ErrorEvent,
    Playback,
    Pong,
    Ready,
    ReasoningText,
    ReplyText,
    ServerEvent,
    SpeechStarted,
    SpeechStopped,
    Start,
    Text,
    TranscriptEvent,
    TranscriptPartial,
    TurnDone,
    Update,
)
from voice_agent.server.realtime_protocol import (
    AudioAppend,
    AudioClear,
    AudioCommit,
    AudioDelta,
    AudioDone,
    Cleared,
    Committed,
    Extension,
    ItemAdded,
    ItemCreate,
    ItemTruncate,
    ItemTruncated,
    OutputItemAdded,
    OutputItemDone,
    RealtimeError,
    RealtimeServerEvent,
    ResponseCancel,
    ResponseCreate,
    ResponseCreated,
    ResponseDone,
    SessionCreated,
    SessionUpdate,
    SessionUpdated,
    SpeechStartedRt,
    SpeechStoppedRt,
    TranscriptDelta,
    TranscriptDone,
    TranscriptionCompleted,
    TranscriptionDelta,
    decode_event,
    encode_event,
    error_body,
)
from voice_agent.server.wire import Inbound, Reply

RATE = 24_000
"""Realtime audio: PCM16 mono at 24 kHz, both ways."""

_STATUS = {"ok": "completed", "error": "failed"}
"""A turn's status -> the response's; anything else (cancelled, empty, ...) is cancelled."""

_OUT_ITEM = re.compile(r"item_(\d+)_out")


def user_item(turn_id: int) -> str:
    return f"item_{turn_id}_in"


def reply_item(turn_id: int) -> str:
    return f"item_{turn_id}_out"


def response_id(turn_id: int) -> str:
    return f"resp_{turn_id}"


class RealtimeWire:
    """One Realtime client's translation state: which turns have an open response, the
    text messages waiting for ``response.create``, the session's settings."""

    def __init__(self, session_id: str, *, instructions: str, voice: str,
                 beta: bool = False) -> None:
        self._session_id = session_id
        self._instructions = instructions
        self._voice = voice
        self._beta = beta
        self._turn_detection = True
        self._events = 0
        self._open: dict[int, list[str]] = {}
        """Turns with a response under way -> the reply text so far."""
        self._audio_turns: set[int] = set()
        """Turns that began as audio (text turns have no input transcription)."""
        self._latest: int | None = None
        self._pending_text: list[str] = []
        self._previous_item: str | None = None
        self._partial: tuple[int, str] = (0, "")
        """The utterance whose transcript deltas went out, and their text so far."""

    # --- client -> core -----------------------------------------------------------

    def implicit_start(self) -> Start | None:
        return Start(sample_rate=RATE, output_sample_rate=RATE)

    def decode(self, message: str | bytes) -> list[Inbound]:
        if isinstance(message, bytes) and not message.lstrip().startswith(b"{"):
            raise ProtocolError("Realtime events are JSON text", code="bad_json")
        event = decode_event(message)
        if isinstance(event, AudioAppend):
            return [event.audio]
        if isinstance(event, SessionUpdate):
            if event.instructions is not None:
                self._instructions = event.instructions
            if event.turn_detection is not None:
                self._turn_detection = event.turn_detection
            update = Update(instructions=event.instructions, turn_detection=event.turn_detection)
            return [update, self._reply(SessionUpdated(self.session_object()))]
        if isinstance(event, AudioCommit):
            return [Commit()]
        if isinstance(event, AudioClear):
            return [Clear(), self._reply(Cleared())]
        if isinstance(event, ItemCreate):
            self._pending_text.append(event.text)
            item_id = event.item_id or f"item_text_{self._events + 1}"
            item = {"id": item_id, "type": "message", "role": "user", "status": "completed",
                    "content": [{"type": "input_text", "text": event.text}]}
            added = self._reply(ItemAdded(item=item, previous_item_id=self._previous_item))
            self._previous_item = item_id
            return [added]
        if isinstance(event, ResponseCreate):
            if self._pending_text:
                text, self._pending_text = " ".join(self._pending_text), []
                return [Text(text=text)]
            if self._open:
                return []  # the committed input's answer is already under way
            raise ProtocolError("nothing to respond to: add a user message or commit audio",
                                code="no_input")
        if isinstance(event, ResponseCancel):
            return [Cancel()]
        return self._truncate(event)

    def _truncate(self, event: ItemTruncate) -> list[Inbound]:
        match = _OUT_ITEM.fullmatch(event.item_id)
        if match is None:
            raise ProtocolError(f"no assistant item {event.item_id!r}", code="unknown_item")
        turn_id = int(match.group(1))
        inbound: list[Inbound] = [Playback(turn_id=turn_id,
                                           audio_samples=event.audio_end_ms * RATE // 1000)]
        if turn_id in self._open:
            inbound.append(Cancel())  # the client stopped playing: nothing more is heard
        inbound.append(self._reply(ItemTruncated(item_id=event.item_id,
                                                 audio_end_ms=event.audio_end_ms,
                                                 content_index=event.content_index)))
        return inbound

    # --- core -> client -----------------------------------------------------------

    def encode(self, event: ServerEvent) -> list[str]:
        return [self._text(e) for e in self._translate(event)]

    def encode_audio(self, pcm: bytes) -> list[str | bytes]:
        turn_id = self._latest
        if turn_id is None:
            return []  # no turn has started: nothing can be playing
        events = self._opened(turn_id)
        events.append(AudioDelta(response_id=response_id(turn_id), item_id=reply_item(turn_id),
                                 delta=base64.b64encode(pcm).decode("ascii")))
        return [self._text(e) for e in events]

    def _translate(self, event: ServerEvent) -> list[RealtimeServerEvent]:
        if isinstance(event, Ready):
            return [SessionCreated(self.session_object())]
        if isinstance(event, SpeechStarted):
            self._audio_turns.add(event.turn_id)
            return [SpeechStartedRt(audio_start_ms=event.audio_ms,
                                    item_id=user_item(event.turn_id))]
        if isinstance(event, SpeechStopped):
            return self._committed(event)
        if isinstance(event, TranscriptPartial):
            return [*self._transcription_delta(event), self._extension(event)]
        if isinstance(event, TranscriptEvent):
            if event.turn_id not in self._audio_turns:
                return []  # a typed turn: its text is already the client's own item
            return [TranscriptionCompleted(item_id=user_item(event.turn_id),
                                           transcript=event.text)]
        if isinstance(event, ReplyText):
            events = self._opened(event.turn_id)
            self._open[event.turn_id].append(event.delta)
            return [*events, TranscriptDelta(response_id=response_id(event.turn_id),
                                             item_id=reply_item(event.turn_id),
                                             delta=event.delta)]
        if isinstance(event, TurnDone):
            return self._done(event)
        if isinstance(event, ErrorEvent):
            return [RealtimeError(error_body(event.code, event.message,
                                             transient=event.transient))]
        if isinstance(event, Pong):
            return []
        if isinstance(event, EmotionEvent | ReasoningText):
            return [*self._opened(event.turn_id), self._extension(event)]
        return [self._extension(event)]  # barge-in steps, wake, session end

    @staticmethod
    def _extension(event: ServerEvent) -> Extension:
        return Extension(event.type,
                         {k: v for k, v in dataclasses.asdict(event).items() if k != "seq"})

    def _transcription_delta(self, partial: TranscriptPartial) -> list[RealtimeServerEvent]:
        """The partial's new words as a delta, when it extends what was sent. A revised
        hypothesis sends none (a delta cannot take words back) until one extends the text
        sent again; every partial also goes out whole as ``voice_agent.transcript_partial``."""
        turn_id, sent = self._partial
        if turn_id != partial.turn_id:
            sent = ""
        text = partial.text.strip()
        if not text.startswith(sent) or len(text) == len(sent):
            return []
        self._partial = (partial.turn_id, text)
        return [TranscriptionDelta(item_id=user_item(partial.turn_id), delta=text[len(sent):])]

    def _committed(self, event: SpeechStopped) -> list[RealtimeServerEvent]:
        self._audio_turns.add(event.turn_id)
        item_id = user_item(event.turn_id)
        events: list[RealtimeServerEvent] = []
        if event.reason != "commit":
            events.append(SpeechStoppedRt(audio_end_ms=event.audio_ms, item_id=item_id))
        events.append(Committed(item_id=item_id, previous_item_id=self._previous_item))
        self._previous_item = item_id
        return events

    def _opened(self, turn_id: int) -> list[RealtimeServerEvent]:
        """``response.created`` and its output item, the first time the turn needs them."""
        self._latest = turn_id
        if turn_id in self._open:
            return []
        self._open[turn_id] = []
        item = self._item(turn_id, "in_progress", "")
        self._previous_item = item["id"]
        return [ResponseCreated(self._response(turn_id, "in_progress", [])),
                OutputItemAdded(response_id=response_id(turn_id), item=item)]

    def _done(self, done: TurnDone) -> list[RealtimeServerEvent]:
        events = self._opened(done.turn_id)
        sent = "".join(self._open.pop(done.turn_id, [])).strip()
        heard = done.heard_text if done.status != "ok" else (done.heard_text or sent)
        status = _STATUS.get(done.status, "cancelled")
        item = self._item(done.turn_id, "completed" if status == "completed" else "incomplete",
                          heard)
        rid, iid = response_id(done.turn_id), reply_item(done.turn_id)
        response = self._response(done.turn_id, status, [item])
        if status != "completed":
            response["status_details"] = {"type": status, "reason": done.status}
        if self._latest == done.turn_id:
            self._latest = None
        return [*events, AudioDone(response_id=rid, item_id=iid),
                TranscriptDone(response_id=rid, item_id=iid, transcript=heard),
                OutputItemDone(response_id=rid, item=item), ResponseDone(response)]

    # --- shapes -------------------------------------------------------------------

    def session_object(self) -> dict[str, Any]:
        detection = ({"type": "server_vad", "create_response": True}
                     if self._turn_detection else None)
        audio_format = {"type": "audio/pcm", "rate": RATE}
        return {"id": f"sess_{self._session_id}", "object": "realtime.session",
                "type": "realtime", "model": "voice-agent",
                "output_modalities": ["audio"], "instructions": self._instructions,
                "audio": {"input": {"format": audio_format, "turn_detection": detection},
                          "output": {"format": audio_format, "voice": self._voice}}}

    def _item(self, turn_id: int, status: str, transcript: str) -> dict[str, Any]:
        return {"id": reply_item(turn_id), "object": "realtime.item", "type": "message",
                "role": "assistant", "status": status,
                "content": [{"type": "output_audio", "transcript": transcript}]}

    def _response(self, turn_id: int, status: str, output: list[dict[str, Any]]
                  ) -> dict[str, Any]:
        return {"id": response_id(turn_id), "object": "realtime.response", "status": status,
                "output": output, "output_modalities": ["audio"]}

    def _reply(self, event: RealtimeServerEvent) -> Reply:
        return Reply(self._text(event))

    def _text(self, event: RealtimeServerEvent) -> str:
        self._events += 1
        return encode_event(event, f"event_{self._events}", beta=self._beta)
