"""One client connection, whatever protocol it speaks (its :class:`~voice_agent.server.wire.Wire`).

A :class:`Connection` checks the client's ``start`` (rates, access token; implicit for a
protocol without one), takes a session slot, opens the session through the
:class:`~voice_agent.appliance.Appliance`, then decodes messages, feeds the I/O-free
:class:`~voice_agent.session.Session` and hands its actions to a
:class:`~voice_agent.driver.SessionDriver`. It enforces the
per-session limits (input speed, turns per minute, idle and maximum length), sends every
event and reply frame through one path with a send timeout, and drains on shutdown. Client
mistakes get a coded ``error`` event and the session goes on; only protocol violations
(oversized frames, too many errors, no ``start`` in time, a wrong token) close the socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from voice_agent.aio import wait_within
from voice_agent.appliance import Appliance, SessionOptions
from voice_agent.audio.pcm import PIPELINE_RATE, bytes_to_int16, check_rate
from voice_agent.audio.reference import InputGaps
from voice_agent.driver import SessionDriver
from voice_agent.errors import ClientGone, ProtocolError, VoiceAgentError
from voice_agent.server.access import AccessPolicy, Credential, request_credential
from voice_agent.server.limits import InputPacer, SessionTimer, TurnRate
from voice_agent.server.observe import client_host
from voice_agent.server.protocol import (
    TEXT_MAX_CHARS,
    Cancel,
    Clear,
    ClientMessage,
    Commit,
    End,
    ErrorEvent,
    Ping,
    Playback,
    Pong,
    Ready,
    ServerEvent,
    SessionEnd,
    Start,
    Text,
    Update,
    decode_client,
)
from voice_agent.server.wire import NativeWire, Reply, Wire
from voice_agent.session import Action, Emit, Session
from voice_agent.turn import TurnRunner

log = logging.getLogger(__name__)

AUDIO_SLICE_S = 0.1
"""Longest piece of one client message processed without yielding to the loop."""


class Connection:
    def __init__(self, ws: ServerConnection, appliance: Appliance, *,
                 access: AccessPolicy | None = None, wire: Wire | None = None) -> None:
        """``access``: the token a client must show (on the upgrade or in ``start``);
        ``wire``: the client's protocol (default: the native one). A session slot of the
        appliance's is claimed only once ``start`` is accepted."""
        self.ws = ws
        self.wire: Wire = wire or NativeWire()
        self._access = access or AccessPolicy()
        self._appliance = appliance
        self._slots = appliance.sessions
        self._claimed = False
        self.config = appliance.config
        self.session_id = uuid.uuid4().hex[:12]
        self._obs = appliance.observer.session(self.session_id, client_host(ws))
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
            for message in self.wire.encode(event):
                await self._send(message)

    async def audio(self, pcm: bytes) -> None:
        async with self._send_lock:
            for message in self.wire.encode_audio(pcm):
                await self._send(message)

    async def _send(self, data: str | bytes) -> None:
        """Send, or raise :class:`ClientGone`. A client that takes nothing for
        ``server.send_timeout_s`` is cut off at once (no closing handshake: it would queue
        behind the data it is not reading), which also ends the receive loop."""
        if self._gone:
            raise ClientGone("the client is gone")
        try:
            await wait_within(self.ws.send(data), self.config.server.send_timeout_s)
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
        implicit = self.wire.implicit_start()
        if implicit is not None:  # a protocol with no start message: the upgrade's token
            if self._authorized(implicit):
                return implicit
            await self.event(ErrorEvent(code="unauthorized",
                                        message="missing or wrong access token"))
            await self.ws.close(1008, "unauthorized")
            return None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.config.server.start_timeout_s
        while True:
            try:
                message = await wait_within(self.ws.recv(), deadline - loop.time())
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
        gap_s = config.playback.input_gap_ms / 1000
        gaps = InputGaps(PIPELINE_RATE, max_late_s=gap_s) if gap_s > 0 else None
        timer = SessionTimer(limits.idle_timeout_s, limits.max_session_s, clock())
        options = SessionOptions(input_rate=start.sample_rate, output_rate=output_rate,
                                 reasoning=start.reasoning, turn_detection=start.turn_detection,
                                 instructions=start.instructions)
        self._driver = driver = await self._appliance.open_session(
            options, self, self._close, turn_gate=lambda: turns.allow(clock()),
            on_turn_done=self._obs.turn_done)
        session = driver.session
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
                message = await wait_within(self.ws.recv(), timer.wait_s(clock()))
            except TimeoutError:
                continue
            try:
                for inbound in self.wire.decode(message):
                    if isinstance(inbound, bytes):
                        timer.activity(clock())
                        if not pacer.admit(len(inbound) / 2 / start.sample_rate, clock()):
                            session.drop(inbound, "too_fast")  # its DSP would starve others
                            continue
                        if gaps is not None:
                            session.input_paused(gaps.arrived(
                                len(inbound) // 2 * PIPELINE_RATE // start.sample_rate,
                                clock()))
                        await self._audio(session, driver, inbound, start.sample_rate)
                    elif isinstance(inbound, Reply):
                        async with self._send_lock:
                            await self._send(inbound.text)
                    else:
                        actions = self._control(session, inbound)
                        if not self._draining:
                            await driver.execute(actions)
            except VoiceAgentError as exc:
                await self._client_error(exc)
                continue
            if self._closing:
                break
            await asyncio.sleep(0)  # one client's queued audio never monopolizes the loop

    async def _audio(self, session: Session, driver: SessionDriver, pcm: bytes,
                     sample_rate: int) -> None:
        """Feed ``pcm`` to the session in slices of at most ``AUDIO_SLICE_S``, yielding to
        the loop between them: the DSP costs about 1 ms per 10 ms of audio, so one
        maximum-size message (2 s) run in one go stalled every other session for 200 ms (and
        for over 0.6 s with the interpreter's lock contended)."""
        bytes_to_int16(pcm)  # an odd byte count is refused whole, before any of it is heard
        step = 2 * max(1, round(sample_rate * AUDIO_SLICE_S))
        for offset in range(0, len(pcm), step):
            actions = session.audio(pcm[offset:offset + step])
            if self._draining:
                continue  # shutting down: no new turns; drain() ends the session
            await driver.execute(actions)
            if self._closing:
                return
            if offset + step < len(pcm):
                await asyncio.sleep(0)

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
        assert self._driver is not None  # noqa: S101 - only called from _run
        if isinstance(message, Playback):
            if message.audio_samples < 0:
                raise ProtocolError("playback.audio_samples must be >= 0", code="bad_field")
            self._driver.played(message.turn_id, message.audio_samples)
            return []
        if isinstance(message, Commit):
            return session.commit()
        if isinstance(message, Clear):
            session.clear()
            return []
        if isinstance(message, Text):
            if not message.text.strip():
                raise ProtocolError("text must have words", code="bad_field")
            if len(message.text) > TEXT_MAX_CHARS:
                raise ProtocolError(f"text is limited to {TEXT_MAX_CHARS} characters",
                                    code="text_too_long")
            return session.text_turn(message.text)
        if isinstance(message, Update):
            if message.turn_detection is not None:
                session.set_turn_detection(message.turn_detection)
            if message.instructions is not None:
                self._runner_of(self._driver).instructions = message.instructions
            return []
        raise ProtocolError(f"unhandled message {message!r}", code="unknown_type")

    @staticmethod
    def _runner_of(driver: SessionDriver) -> TurnRunner:
        runner = driver.runner
        assert isinstance(runner, TurnRunner)  # noqa: S101 - built in _run
        return runner

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
