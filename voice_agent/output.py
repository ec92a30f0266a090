"""Where a turn's events and reply audio go."""

from __future__ import annotations

from typing import Protocol

from voice_agent.server.protocol import ServerEvent


class TurnOutput(Protocol):
    """Where a turn's events and reply audio go (a WebSocket, a speaker, a test list)."""

    async def event(self, event: ServerEvent) -> None: ...

    async def audio(self, pcm: bytes) -> None: ...


class ReplyPlayback(Protocol):
    """Where a turn's reply is in being played (``voice_agent.reply_pump``)."""

    def played_samples(self) -> int:
        """Samples of the reply the person has heard so far."""
        ...

    async def finished(self) -> None:
        """Return once all of the reply queued so far has been played, or it was stopped."""
        ...
