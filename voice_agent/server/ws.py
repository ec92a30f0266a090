"""The native WebSocket endpoint (``websockets`` asyncio server).

One :class:`Connection` per client: it decodes messages, feeds the I/O-free
:class:`~voice_agent.session.Session`, and carries out the actions it returns (send an
event, run or cancel a turn, close). Client mistakes get a coded ``error`` event and the
session goes on; only protocol violations (oversized frames, too many errors, no ``start``
in time) close the socket. Plain HTTP ``GET /healthz`` answers ``ok`` for probes.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import uuid
from http import HTTPStatus

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from voice_agent.audio.frontend import make_frontend
from voice_agent.audio.pcm import check_rate
from voice_agent.audio.vad import make_vad
from voice_agent.audit import AuditLog
from voice_agent.config import Config
from voice_agent.driver import SessionDriver
from voice_agent.engines import Engines
from voice_agent.errors import ClientGone, ProtocolError, VoiceAgentError
from voice_agent.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from voice_agent.metrics import Metrics
from voice_agent.server.access import (
    PUBLIC_PATHS,
    AccessPolicy,
    Credential,
    RedactTokens,
    build_policy,
    refusal,
    request_credential,
    route,
    ssl_context,
)
from voice_agent.server.limits import (
    AddressCounter,
    InputPacer,
    SessionSlots,
    SessionTimer,
    TurnRate,
)
from voice_agent.server.observe import Observer, client_host
from voice_agent.server.protocol import (
    Cancel,
    ClientMessage,
    End,
    ErrorEvent,
    Ping,
    Pong,
    Ready,
    ServerEvent,
    SessionEnd,
    Start,
    decode_client,
    encode,
)
from voice_agent.session import Action, Emit, Session
from voice_agent.turn import TurnRunner

log = logging.getLogger(__name__)

class Connection:
    def __init__(self, ws: ServerConnection, engines: Engines, config: Config,
                 observer: Observer | None = None, *, access: AccessPolicy | None = None,
                 slots: SessionSlots | None = None) -> None:
        """``access``: the token a client must show (on the upgrade or in ``start``);
        ``slots``: the started-session cap, claimed only once ``start`` is accepted."""
        self.ws = ws
        self._access = access or AccessPolicy()
        self._slots = slots
        self._claimed = False
        self.engines = engines
        self.config = config
        self.session_id = uuid.uuid4().hex[:12]
        self._obs = (observer or Observer()).session(self.session_id, client_host(ws))
        self._seq = 0
        self._send_lock = asyncio.Lock()
        self._errors = 0
        self._driver: SessionDriver | None = None
        self._closing = False
        self._draining = False
        self._gone = False

    # --- sending ---------------------------------------------------------------------

    async def event(self, event: ServerEvent) -> None:
        await self._obs.before_send(event)
        async with self._send_lock:
            self._seq += 1
            text = encode(dataclasses.replace(event, seq=self._seq))
            await self._send(text)

    async def audio(self, pcm: bytes) -> None:
        async with self._send_lock:
            await self._send(pcm)

    async def _send(self, data: str | bytes) -> None:
        """Send, or raise :class:`ClientGone`. A client that takes nothing for
        ``server.send_timeout_s`` is cut off at once (no closing handshake: it would queue
        behind the data it is not reading), which also ends the receive loop."""
        if self._gone:
            raise ClientGone("the client is gone")
        try:
            await asyncio.wait_for(self.ws.send(data), self.config.server.send_timeout_s)
        except TimeoutError:
            self._gone = True
            log.info("session %s: client stopped reading; closing", self.session_id)
            self.ws.transport.abort()
            raise ClientGone("the client stopped reading") from None
        except ConnectionClosed as exc:
            self._gone = True
            raise ClientGone("the client disconnected") from exc

    async def _client_error(self, exc: VoiceAgentError) -> None:
        self._errors += 1
        await self.event(ErrorEvent(code=exc.code, message=str(exc), transient=exc.transient))
        if self._errors >= self.config.server.max_errors:
            await self.ws.close(1008, "too many client errors")

    # --- receiving -------------------------------------------------------------------

    async def serve(self) -> None:
        try:
            start = await self._await_start()
            if start is None or not await self._admit():
                return
            await self._run(start)
        except (ConnectionClosed, ClientGone):
            pass
        finally:
            if self._driver is not None:
                await self._driver.stop()
                log.info("session %s ended: %s", self.session_id,
                         self._driver.session.input_stats())
                self._obs.closed(self._driver.session.input_stats())
            if self._claimed and self._slots is not None:
                self._slots.release()  # after its turns have ended

    async def _await_start(self) -> Start | None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.config.server.start_timeout_s
        while True:
            try:
                message = await asyncio.wait_for(self.ws.recv(), deadline - loop.time())
            except TimeoutError:
                await self.event(ErrorEvent(code="start_timeout",
                                            message="no start message received"))
                await self.ws.close(1008, "no start message")
                return None
            try:
                if isinstance(message, bytes):
                    raise ProtocolError("send a start message before audio", code="not_started")
                parsed = decode_client(message)
                if not isinstance(parsed, Start):
                    raise ProtocolError(f"expected start, got {parsed.type}", code="not_started")
                check_rate(parsed.sample_rate)
                if parsed.output_sample_rate is not None:
                    check_rate(parsed.output_sample_rate)
                if not self._authorized(parsed):
                    await self.event(ErrorEvent(code="unauthorized",
                                                message="missing or wrong access token"))
                    await self.ws.close(1008, "unauthorized")
                    return None
                return parsed
            except VoiceAgentError as exc:
                await self._client_error(exc)

    def _authorized(self, start: Start) -> bool:
        """The upgrade's credential was checked in ``process_request`` (a wrong one never
        gets here); without one, ``start`` must carry the token."""
        request = self.ws.request
        if request is not None and request_credential(self._access, request) is Credential.OK:
            return True
        return self._access.check(start.token) is Credential.OK

    async def _admit(self) -> bool:
        """Take a session slot now that ``start`` came; refuse (1013) when all are taken."""
        if self._slots is None:
            return True
        if not self._slots.claim():
            await self.event(ErrorEvent(code="overloaded", transient=True,
                                        message="too many sessions; try again later"))
            await self.ws.close(1013, "too many sessions")
            return False
        self._claimed = True
        return True

    async def _run(self, start: Start) -> None:
        config = self.config
        output_rate = start.output_sample_rate or start.sample_rate
        limits = config.server
        clock = asyncio.get_running_loop().time
        turns = TurnRate(limits.turns_per_minute)
        pacer = InputPacer(limits.max_input_speed, limits.input_burst_s, clock())
        timer = SessionTimer(limits.idle_timeout_s, limits.max_session_s, clock())
        session = Session(
            vad_config=config.vad,
            frontend=make_frontend(config.frontend.noise_suppression,
                                   config.frontend.auto_gain_dbfs),
            vad=make_vad(config.vad),
            input_rate=start.sample_rate,
            turn_gate=lambda: turns.allow(clock()),
        )
        runner = TurnRunner(self.engines, config, output_rate, send_reasoning=start.reasoning)
        self._driver = driver = SessionDriver(session, runner, self, self._close,
                                              on_turn_done=self._obs.turn_done)
        self._obs.opened()
        await self.event(Ready(session_id=self.session_id, sample_rate=start.sample_rate,
                               output_sample_rate=output_rate))
        log.info("session %s started (%d Hz in, %d Hz out)", self.session_id,
                 start.sample_rate, output_rate)
        while True:
            # Idle and maximum-length limits: idle sockets must never hold the sessions.
            if driver.active_turns:
                timer.activity(clock())
            expired = timer.expired(clock())
            if expired is not None:
                await self._expire(expired)
                break
            try:
                message = await asyncio.wait_for(self.ws.recv(), timer.wait_s(clock()))
            except TimeoutError:
                continue
            try:
                if isinstance(message, bytes):
                    timer.activity(clock())
                    if pacer.admit(len(message) / 2 / start.sample_rate, clock()):
                        actions = session.audio(message)
                    else:  # faster than max_input_speed: its DSP would starve others
                        session.drop(message, "too_fast")
                        actions = []
                else:
                    actions = self._control(session, decode_client(message))
            except VoiceAgentError as exc:
                await self._client_error(exc)
                continue
            if self._draining:
                continue  # shutting down: no new turns; drain() ends the session
            await driver.execute(actions)
            if self._closing:
                break
            await asyncio.sleep(0)  # one client's queued audio never monopolizes the loop

    async def _expire(self, reason: str) -> None:
        """End a session that reached a limit (``idle``, ``max_duration``): running turns
        end first, with their ``turn_done``, then ``session_end`` and close 1000."""
        assert self._driver is not None  # noqa: S101 - only called from _run
        await self._driver.stop()
        if not self._closing:
            log.info("session %s: %s", self.session_id, reason)
            await self._close(reason)

    def _control(self, session: Session, message: ClientMessage) -> list[Action]:
        if isinstance(message, Start):
            raise ProtocolError("session already started", code="already_started")
        if isinstance(message, Cancel):
            return session.cancel()
        if isinstance(message, End):
            return session.end()
        if isinstance(message, Ping):
            return [Emit(Pong(id=message.id))]
        raise ProtocolError(f"unhandled message {message!r}", code="unknown_type")

    async def _close(self, reason: str) -> None:
        assert self._driver is not None  # noqa: S101 - Close comes from the driver's session
        if self._closing:
            return
        self._closing = True
        stats = self._driver.session.input_stats()
        with contextlib.suppress(ClientGone):  # gone or not, the session ends here
            await self.event(SessionEnd(reason=reason, input_stats=stats))
        await self.ws.close(1001 if reason == "shutdown" else 1000, reason)

    async def drain(self, timeout_s: float) -> None:
        """Server shutdown: take no new turns, give running ones ``timeout_s`` to finish,
        cancel the rest (each still ends with its ``turn_done``), then ``session_end``
        (reason ``shutdown``) and close 1001."""
        self._draining = True
        driver = self._driver
        try:
            if driver is None:  # not started yet: nothing to finish
                await self.ws.close(1001, "server shutting down")
                return
            await driver.wait_idle(timeout_s)
            await driver.stop()
            await self._close("shutdown")
        except (ConnectionClosed, ClientGone):
            pass


class VoiceServer:
    """The WebSocket server. ``await start()``, then ``await stop()`` (or use ``async with``)."""

    def __init__(self, engines: Engines, config: Config) -> None:
        self.engines = engines
        self.config = config
        self._server: Server | None = None
        self._probes: asyncio.Task[None] | None = None
        self._connections: set[Connection] = set()
        self._sessions = SessionSlots(config.server.max_sessions)
        self._addresses = AddressCounter(config.server.max_connections_per_address)
        self.access = AccessPolicy()
        """Resolved at :meth:`start` (token file read once)."""
        self.metrics = Metrics(engines.llm, engines.load_seconds)
        self.observer = Observer(self.metrics)

    @property
    def _active(self) -> int:
        """Started sessions (pre-start sockets are not sessions)."""
        return self._sessions.active

    @property
    def port(self) -> int:
        assert self._server is not None  # noqa: S101 - only valid after start()
        return int(next(iter(self._server.sockets)).getsockname()[1])

    async def start(self) -> VoiceServer:
        cfg = self.config.server
        # Before anything else: an exposed server without a token must not come up at all.
        self.access = build_policy(cfg)
        tls = ssl_context(cfg)
        ws_log = logging.getLogger("websockets.server")
        if not any(isinstance(f, RedactTokens) for f in ws_log.filters):
            ws_log.addFilter(RedactTokens())  # its debug log shows request lines and headers
        audit = AuditLog.from_config(self.config.audit)
        self.observer.audit = audit.open() if audit is not None else None
        self._server = await serve(
            self._handle,
            cfg.host,
            cfg.port,
            max_size=cfg.max_message_bytes,
            max_queue=cfg.input_queue_frames,
            ping_interval=cfg.ping_interval_s,
            ping_timeout=cfg.ping_timeout_s,
            close_timeout=cfg.close_timeout_s,
            process_request=self._http,
            ssl=tls,
            logger=ws_log,
        )
        self._probes = asyncio.create_task(self.engines.llm.probe_forever())
        return self

    async def stop(self) -> None:
        if self._probes is not None:
            self._probes.cancel()
            await asyncio.gather(self._probes, return_exceptions=True)
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        if self.observer.audit is not None:
            # In a thread: it waits for the queued rows to be written.
            await asyncio.to_thread(self.observer.audit.close)
            self.observer.audit = None

    async def drain(self, timeout_s: float | None = None) -> None:
        """Graceful shutdown (SIGTERM): stop accepting connections, let every session
        finish its running turn within ``timeout_s`` (default ``server.drain_timeout_s``),
        cancel what is left, end each session with ``session_end`` (``shutdown``) and close
        1001. Bounded by ``timeout_s + send_timeout_s + close_timeout_s``; what is still open
        then is cut off. Call :meth:`stop` after it."""
        cfg = self.config.server
        timeout = cfg.drain_timeout_s if timeout_s is None else timeout_s
        if self._server is not None:
            self._server.close(close_connections=False)  # stop listening, keep sessions
        drains = [asyncio.create_task(c.drain(timeout)) for c in list(self._connections)]
        if not drains:
            return
        _, late = await asyncio.wait(
            drains, timeout=timeout + cfg.send_timeout_s + cfg.close_timeout_s + 1.0)
        for task in late:
            task.cancel()
        for connection in list(self._connections):
            connection.ws.transport.abort()
        await asyncio.gather(*drains, return_exceptions=True)

    async def __aenter__(self) -> VoiceServer:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def _http(self, connection: ServerConnection, request: Request) -> Response | None:
        path = request.path.partition("?")[0]
        if path == "/healthz":
            return connection.respond(HTTPStatus.OK, "ok\n")
        if path == "/readyz":
            reason = self._not_ready()
            if reason:
                return connection.respond(HTTPStatus.SERVICE_UNAVAILABLE, reason + "\n")
            return connection.respond(HTTPStatus.OK, "ok\n")
        if path == "/metrics":
            if (denied := self._refuse(connection, request)) is not None:
                return denied
            response = connection.respond(HTTPStatus.OK, self.metrics.render().decode())
            del response.headers["Content-Type"]
            response.headers["Content-Type"] = METRICS_CONTENT_TYPE
            return response
        if path == "/status":
            if (denied := self._refuse(connection, request)) is not None:
                return denied
            # Which LLM engines are in service (circuit breaker states), for operators.
            body = json.dumps({"sessions": self._active, "llm": self.engines.llm.status()})
            return connection.respond(HTTPStatus.OK, body + "\n")
        # Anything else is a WebSocket upgrade.
        if self._addresses.full(client_host(connection)):
            return connection.respond(HTTPStatus.TOO_MANY_REQUESTS,
                                      "too many connections from this address\n")
        return self._refuse(connection, request, upgrade=True)

    def _refuse(self, connection: ServerConnection, request: Request, *,
                upgrade: bool = False) -> Response | None:
        """The access check every non-public route calls: a response refusing the request
        (403 wrong origin, 401 missing or wrong token), or None to go on."""
        if route(request.path) in PUBLIC_PATHS:
            return None
        denied = refusal(self.access, request, upgrade=upgrade)
        if denied is None:
            return None
        response = connection.respond(*denied)
        if denied[0] == HTTPStatus.UNAUTHORIZED:
            response.headers["WWW-Authenticate"] = "Bearer"
        return response

    def _not_ready(self) -> str:
        """Why no turn could be answered now ("" when one can); says nothing private."""
        if self._server is None:
            return "not listening"
        if not any(link["state"] == "closed" for link in self.engines.llm.status()):
            return "no LLM engine available"
        return ""

    async def _handle(self, ws: ServerConnection) -> None:
        # Every open socket counts against its address from here (the upgrade pre-checked
        # it); a session slot is taken only once ``start`` is accepted (Connection._admit).
        address = client_host(ws)
        if not self._addresses.acquire(address):
            self.observer.error("too_many_connections")
            await ws.send(encode(ErrorEvent(code="too_many_connections", transient=True,
                                            message="too many connections from this address")))
            await ws.close(1008, "too many connections from this address")
            return
        connection = Connection(ws, self.engines, self.config, self.observer,
                                access=self.access, slots=self._sessions)
        self._connections.add(connection)  # for drain()
        try:
            await connection.serve()
        except Exception:
            log.exception("session failed")
            await ws.close(1011, "internal error")
        finally:
            self._connections.discard(connection)
            self._addresses.release(address)
