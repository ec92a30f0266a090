"""The native WebSocket endpoint (``websockets`` asyncio server).

:class:`VoiceServer` owns the listener: TLS, the access check on every upgrade and private
route, the per-address and session caps, the HTTP probes (``/healthz``, ``/readyz``,
``/status``, ``/metrics``), the kiosk page (``GET /``), the LLM probes, and draining on
shutdown. Each client is a :class:`~voice_agent.server.connection.Connection`.
"""

from __future__ import annotations

import asyncio
import json
import logging
from http import HTTPStatus

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.http11 import Request, Response

from voice_agent.appliance import Appliance
from voice_agent.audit import AuditLog
from voice_agent.config import Config
from voice_agent.engines import Engines
from voice_agent.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from voice_agent.server import kiosk
from voice_agent.server.access import (
    PUBLIC_PATHS,
    AccessPolicy,
    RedactTokens,
    build_policy,
    refusal,
    route,
    ssl_context,
)
from voice_agent.server.connection import Connection
from voice_agent.server.limits import AddressCounter
from voice_agent.server.observe import client_host
from voice_agent.server.protocol import (
    ErrorEvent,
    encode,
)
from voice_agent.server.realtime import RealtimeWire

log = logging.getLogger(__name__)

REALTIME_PATH = "/v1/realtime"
"""The OpenAI Realtime endpoint (``voice_agent.server.realtime``); the SDK appends
``/realtime`` to a ``base_url`` ending in ``/v1``."""
UPGRADE_PATHS = frozenset({"/", REALTIME_PATH})
"""WebSocket endpoints: ``/`` speaks the native protocol."""

class VoiceServer:
    """The WebSocket server. ``await start()``, then ``await stop()`` (or use ``async with``)."""

    def __init__(self, engines: Engines, config: Config,
                 appliance: Appliance | None = None) -> None:
        """``appliance``: shared with the process's other transports (default: its own)."""
        self.appliance = appliance or Appliance(engines, config)
        self.engines = engines
        self.config = config
        self._server: Server | None = None
        self._connections: set[Connection] = set()
        self._sessions = self.appliance.sessions
        self._addresses = AddressCounter(config.server.max_connections_per_address)
        self.access = AccessPolicy()
        """Resolved at :meth:`start` (token file read once)."""
        self.metrics = self.appliance.metrics
        self.observer = self.appliance.observer

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
        self.appliance.start()
        return self

    async def stop(self) -> None:
        await self.appliance.stop()
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
        if self.config.server.page and kiosk.wants_page(request, path):
            # Public: the files hold nothing; the session they open needs the token.
            return kiosk.page_response(path, connection.respond(HTTPStatus.OK, ""))
        if route(path) not in UPGRADE_PATHS:
            return connection.respond(HTTPStatus.NOT_FOUND, "not found\n")
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
        connection = Connection(ws, self.appliance, access=self.access)
        if ws.request is not None and route(ws.request.path) == REALTIME_PATH:
            beta = "realtime=v1" in ws.request.headers.get("OpenAI-Beta", "")
            connection.wire = RealtimeWire(connection.session_id, beta=beta,
                                           instructions=self.config.llm.system_prompt,
                                           voice=self.config.tts.voice)
        self._connections.add(connection)  # for drain()
        try:
            await connection.serve()
        except Exception:
            log.exception("session failed")
            await ws.close(1011, "internal error")
        finally:
            self._connections.discard(connection)
            self._addresses.release(address)
