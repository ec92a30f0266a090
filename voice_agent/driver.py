"""Carry out a :class:`~voice_agent.session.Session`'s actions against an output.

Shared by the WebSocket connection and the microphone loop: events go to the output, turns
run as tasks (one :class:`~voice_agent.turn.TurnRunner` per session), cancelled turns still
send their terminal event, and ``Close`` is handed back to the owner.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from voice_agent.server.protocol import TurnDone
from voice_agent.session import Action, CancelTurn, Close, Emit, Session, StartTurn
from voice_agent.turn import TurnOutput, TurnRunner

log = logging.getLogger(__name__)


class SessionDriver:
    def __init__(
        self,
        session: Session,
        runner: TurnRunner,
        out: TurnOutput,
        on_close: Callable[[str], Awaitable[None]],
        *,
        on_turn_done: Callable[[TurnDone], None] | None = None,
    ) -> None:
        """``on_turn_done`` is told every turn's terminal event exactly once, whether or not
        the output could still take it (metrics and the audit log record it there)."""
        self.session = session
        self._on_turn_done = on_turn_done
        self.runner = runner
        self._out = out
        self._on_close = on_close
        self._turns: dict[int, asyncio.Task[Any]] = {}

    async def execute(self, actions: list[Action]) -> None:
        for action in actions:
            if isinstance(action, Emit):
                await self._out.event(action.event)
            elif isinstance(action, StartTurn):
                self._turns[action.turn_id] = asyncio.create_task(self._turn(action))
            elif isinstance(action, CancelTurn):
                task = self._turns.get(action.turn_id)
                if task is not None:
                    task.cancel()
            elif isinstance(action, Close):
                await self._on_close(action.reason)

    async def _turn(self, action: StartTurn) -> None:
        inner = asyncio.create_task(
            self.runner.run(action.turn_id, action.audio, action.endpoint_wait_ms, self._out)
        )
        try:
            done = await asyncio.shield(inner)
        except asyncio.CancelledError:
            # Cancelling a turn stops the engines' work; its terminal event still goes out.
            inner.cancel()
            done = await inner
        if self._on_turn_done is not None:
            try:
                self._on_turn_done(done)
            except Exception:  # recording must never cost the person the turn's end
                log.exception("turn %d: recording its end failed", action.turn_id)
        try:
            await self._out.event(done)
            await self.execute(self.session.turn_finished(action.turn_id))
        except Exception as exc:  # the output is gone (client disconnected): nothing to tell
            log.debug("turn %d: could not deliver its end: %r", action.turn_id, exc)
        finally:
            self._turns.pop(action.turn_id, None)

    async def stop(self) -> None:
        """Cancel every running turn and wait for them (connection gone or shutdown)."""
        tasks = list(self._turns.values())
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
