"""What the server tells its metrics and audit log, kept out of the connection code.

One :class:`Observer` per server (its :class:`~voice_agent.metrics.Metrics` and optional
:class:`~voice_agent.audit.AuditLog`); one :class:`SessionObserver` per started session,
told about every event sent, every turn's end (from ``SessionDriver.on_turn_done``, so
exactly once per turn, delivered or not) and the session's end.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future

from voice_agent.aio import wait_within
from voice_agent.audit import AuditLog, turn_record
from voice_agent.metrics import Metrics
from voice_agent.server.protocol import ErrorEvent, ServerEvent, TurnDone

log = logging.getLogger(__name__)

MAX_PENDING_TURNS = 64
"""Turns whose error codes are held until their end; a session has one or two at a time."""


class Observer:
    def __init__(self, metrics: Metrics | None = None, audit: AuditLog | None = None,
                 *, clock: Callable[[], float] = time.time) -> None:
        self.metrics = metrics or Metrics()
        self.audit = audit
        self.clock = clock

    def session(self, session_id: str, client: str) -> SessionObserver:
        return SessionObserver(self, session_id, client)

    def error(self, code: str) -> None:
        """An error sent outside any session (e.g. ``overloaded`` before it starts)."""
        self.metrics.count_error(code)


class SessionObserver:
    def __init__(self, observer: Observer, session_id: str, client: str) -> None:
        self._observer = observer
        self.session_id = session_id
        self.client = client
        self._turn_errors: dict[int, list[str]] = {}
        self._written: dict[int, Future[bool]] = {}
        self._open = False

    async def before_send(self, event: ServerEvent) -> None:
        """Every event about to be sent. Errors are counted before sending (a client that is
        gone still had the error); ``turn_done`` waits for its audit row, so a client that saw
        a turn end can find it in the log."""
        if isinstance(event, TurnDone):
            written = self._written.pop(event.turn_id, None)
            audit = self._observer.audit
            if written is not None and audit is not None:
                try:
                    await wait_within(asyncio.shield(asyncio.wrap_future(written)),
                                      audit.commit_wait_s)
                except TimeoutError:
                    log.warning("session %s turn %d: audit row not committed after %.1f s",
                                self.session_id, event.turn_id, audit.commit_wait_s)
            return
        if not isinstance(event, ErrorEvent):
            return
        self._observer.metrics.count_error(event.code)
        if event.turn_id is not None:
            if event.turn_id not in self._turn_errors and \
                    len(self._turn_errors) >= MAX_PENDING_TURNS:
                self._turn_errors.pop(next(iter(self._turn_errors)))
            self._turn_errors.setdefault(event.turn_id, []).append(event.code)

    def turn_done(self, done: TurnDone) -> None:
        self._observer.metrics.observe_turn(done)
        errors = self._turn_errors.pop(done.turn_id, [])
        audit = self._observer.audit
        if audit is not None:
            self._written[done.turn_id] = audit.record(turn_record(
                done, session_id=self.session_id, client=self.client, error_codes=errors,
                ended_at=self._observer.clock()))

    def opened(self) -> None:
        self._open = True
        self._observer.metrics.session_opened()

    def closed(self, input_stats: Mapping[str, int]) -> None:
        if self._open:
            self._open = False
            self._observer.metrics.session_closed(input_stats)


def client_host(ws: object) -> str:
    """The peer's address without its port (the port says nothing about who it is)."""
    address = getattr(ws, "remote_address", None)
    if isinstance(address, tuple | list) and address:
        return str(address[0])
    return str(address or "")
