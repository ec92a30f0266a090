"""Where a turn's events and reply audio go."""

from __future__ import annotations

from typing import Protocol

from voice_agent.server.protocol import ServerEvent


class TurnOutput(Protocol):
    """Where a turn's events and reply audio go (a WebSocket, a speaker, a test list)."""

    async def event(self, event: ServerEvent) -> None: ...

    async def audio(self, pcm: bytes) -> None: ...
