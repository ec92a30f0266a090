"""Carry out a :class:`~voice_agent.session.Session`'s actions against an output.

Shared by the WebSocket connection and the microphone loop: events go to the output, turns
run as tasks (one :class:`~voice_agent.turn.TurnRunner` per session), and ``Close`` is
handed back to the owner.

The driver owns the rule "every ``StartTurn`` ends in exactly one ``TurnDone``", whatever
the ordering: a turn cancelled before its task ran, a turn whose output died mid-reply (send
timeout, client gone), a turn cancelled at shutdown. It never cancels a turn's own task,
only the runner inside it, so the part that records and delivers the terminal event always
runs. Output failures never escape: the turn still ends, is recorded (``on_turn_done``),
its entry removed, and the session told (so a session that sent ``end`` closes).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

from voice_agent.audio.pcm import Int16Array
from voice_agent.server.protocol import ServerEvent, TurnDone
from voice_agent.session import Action, CancelTurn, Close, Emit, Session, StartTurn
from voice_agent.turn import TurnOutput

log = logging.getLogger(__name__)


class Runner(Protocol):
    """Runs one turn (:class:`~voice_agent.turn.TurnRunner`): returns its terminal event,
    also when cancelled; may raise only when the output itself fails."""

    async def run(self, turn_id: int, audio: Int16Array, endpoint_wait_ms: float,
                  out: TurnOutput) -> TurnDone: ...


@dataclass
class _Running:
    """One started turn: the driver's task (records and delivers the end) and, once it has
    started, the runner's task (the only one cancellation touches)."""

    task: asyncio.Task[None] | None = None
    runner: asyncio.Task[TurnDone] | None = None
    cancel_reason: str | None = None


class SessionDriver:
    def __init__(
        self,
        session: Session,
        runner: Runner,
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
        self._turns: dict[int, _Running] = {}
        self._output_failed = False
        """Set when the output raised once: it is gone, so new turns end at once."""
        self._idle = asyncio.Event()
        self._idle.set()

    @property
    def active_turns(self) -> int:
        return len(self._turns)

    async def execute(self, actions: list[Action]) -> None:
        """Carry out ``actions`` in order. Never raises for a failing output: the remaining
        actions still run (a ``StartTurn`` after a failed send still ends and is recorded)."""
        for action in actions:
            if isinstance(action, Emit):
                if isinstance(action.event, TurnDone):
                    self._record(action.event)  # a turn the session refused (rate_limited)
                await self._emit(action.event)
            elif isinstance(action, StartTurn):
                self._start(action)
            elif isinstance(action, CancelTurn):
                self._cancel(action.turn_id, action.reason)
            elif isinstance(action, Close):
                await self._on_close(action.reason)

    async def _emit(self, event: ServerEvent) -> None:
        try:
            await self._out.event(event)
        except Exception as exc:  # the output is gone (client disconnected or not reading)
            self._output_failed = True
            log.debug("could not deliver %s: %r", event.type, exc)

    def _start(self, action: StartTurn) -> None:
        if action.turn_id in self._turns:  # a session bug; never two ends for one turn
            log.error("turn %d started twice; ignored", action.turn_id)
            return
        running = _Running()
        self._turns[action.turn_id] = running
        self._idle.clear()
        running.task = asyncio.create_task(self._turn(action, running),
                                           name=f"turn-{action.turn_id}")

    def _cancel(self, turn_id: int, reason: str) -> None:
        running = self._turns.get(turn_id)
        if running is None or running.cancel_reason is not None:
            return
        running.cancel_reason = reason
        if running.runner is not None:
            running.runner.cancel()
        # Not started yet: _turn sees cancel_reason and ends the turn without running it.

    async def _turn(self, action: StartTurn, running: _Running) -> None:
        turn_id = action.turn_id
        done: TurnDone | None = None
        try:
            if running.cancel_reason is None and not self._output_failed:
                running.runner = asyncio.create_task(self.runner.run(
                    turn_id, action.audio, action.endpoint_wait_ms, self._out))
                done = await self._result(turn_id, running.runner)
        except asyncio.CancelledError:
            # Someone cancelled the driver's own task (the loop is shutting down): stop the
            # engines' work and record the end; there is no time left to deliver it.
            if running.runner is not None:
                running.runner.cancel()
            self._record(done or TurnDone.unrun(turn_id, "cancelled"))
            self._forget(turn_id)
            raise
        done = done or TurnDone.unrun(turn_id, "cancelled")
        self._record(done)
        try:
            await self._emit(done)
            await self.execute(self.session.turn_finished(turn_id))
        except Exception:  # the owner's close failed; the turn has ended all the same
            log.exception("turn %d: closing after its end failed", turn_id)
        finally:
            self._forget(turn_id)

    async def _result(self, turn_id: int, runner: asyncio.Task[TurnDone]) -> TurnDone:
        """The runner's TurnDone; a synthetic one when it could not produce one."""
        try:
            return await asyncio.shield(runner)
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise  # the driver's task itself is being cancelled
            # The runner was cancelled before its coroutine ran: it never got to say so.
            return TurnDone.unrun(turn_id, "cancelled")
        except Exception as exc:  # TurnRunner.run catches everything; this is a backstop
            log.warning("turn %d: runner failed: %r", turn_id, exc)
            return TurnDone.unrun(turn_id, "error")

    def _record(self, done: TurnDone) -> None:
        if self._on_turn_done is None:
            return
        try:
            self._on_turn_done(done)
        except Exception:  # recording must never cost the person the turn's end
            log.exception("turn %d: recording its end failed", done.turn_id)

    def _forget(self, turn_id: int) -> None:
        self._turns.pop(turn_id, None)
        if not self._turns:
            self._idle.set()

    async def wait_idle(self, timeout_s: float) -> bool:
        """Wait up to ``timeout_s`` for every running turn to end; True if they did."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), timeout_s)
        return not self._turns

    async def stop(self) -> None:
        """Cancel every running turn and wait until each has ended (and reported its
        ``turn_done``, if the output still takes it): connection gone, or shutdown."""
        running = list(self._turns.items())
        for turn_id, _ in running:
            self._cancel(turn_id, "stop")
        tasks = [entry.task for _, entry in running if entry.task is not None]
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
