"""How one kind of client speaks to a session: its messages in, the core's events out.

A :class:`~voice_agent.server.connection.Connection` owns the socket, the limits and the
session; its :class:`Wire` only translates. The native protocol (:class:`NativeWire`) is one
wire, OpenAI Realtime (:mod:`voice_agent.server.realtime`) another: both drive the same
session core with the same commands (:data:`~voice_agent.server.protocol.ClientMessage`)
and turn the same events (:data:`~voice_agent.server.protocol.ServerEvent`) into their own.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Protocol

from voice_agent.server.protocol import ClientMessage, ServerEvent, Start, decode_client, encode


@dataclass(frozen=True)
class Reply:
    """A message for the client straight from the wire (an acknowledgement that needs
    nothing from the session)."""

    text: str


Inbound = bytes | ClientMessage | Reply
"""What one client message becomes: input audio (PCM16 at the session's input rate), a
command for the session, or an answer sent back at once."""


class Wire(Protocol):
    def implicit_start(self) -> Start | None:
        """The session's start when the client never sends one (None: wait for ``start``)."""
        ...

    def decode(self, message: str | bytes) -> list[Inbound]:
        """One client message; raises :class:`~voice_agent.errors.ProtocolError`."""
        ...

    def encode(self, event: ServerEvent) -> list[str]:
        """The client's messages for one core event (none where it has no such event)."""
        ...

    def encode_audio(self, pcm: bytes) -> list[str | bytes]:
        """The client's messages for a piece of reply audio (PCM16 at the output rate)."""
        ...


class NativeWire:
    """The native protocol (``docs`` in the README): JSON control messages with a ``seq``,
    PCM16 in binary frames both ways."""

    def __init__(self) -> None:
        self._seq = 0

    def implicit_start(self) -> Start | None:
        return None

    def decode(self, message: str | bytes) -> list[Inbound]:
        if isinstance(message, bytes):
            return [message]
        return [decode_client(message)]

    def encode(self, event: ServerEvent) -> list[str]:
        self._seq += 1
        return [encode(dataclasses.replace(event, seq=self._seq))]

    def encode_audio(self, pcm: bytes) -> list[str | bytes]:
        return [pcm]
