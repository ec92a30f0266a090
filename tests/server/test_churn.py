"""No task, thread or file descriptor outlives a session: 50 sessions opened and killed in
every way against one real server, then the process is back at its baseline."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from tests.conftest import harvard_clips, make_config
from tests.server.test_turn_end import tiny_buffer_client
from voice_agent.audio.pcm import read_audio
from voice_agent.engines import Engines
from voice_agent.server.ws import VoiceServer

pytestmark = pytest.mark.slow

CONCURRENCY = 5


def clip() -> bytes:
    samples, _ = read_audio(harvard_clips()[0].path)
    # 1.5 s of silence after it ends the turn however the end-of-turn model judges it
    # (turn.incomplete_silence_ms): churn is the point here, not endpointing.
    return np.concatenate([samples, np.zeros(24000, np.int16)]).astype("<i2").tobytes()


class Churn:
    def __init__(self, server: VoiceServer) -> None:
        self.server = server
        self.url = f"ws://127.0.0.1:{server.port}"
        self.speech = clip()

    async def started(self, ws: ClientConnection, **start: Any) -> str:
        await ws.send(json.dumps({"type": "start", "sample_rate": 16000, **start}))
        ready = json.loads(await asyncio.wait_for(ws.recv(), 10))
        assert ready["type"] == "ready", ready
        return str(ready["session_id"])

    async def speak(self, ws: ClientConnection) -> None:
        for start in range(0, len(self.speech), 32000):
            await ws.send(self.speech[start:start + 32000])

    @staticmethod
    async def until(ws: ClientConnection, kind: str) -> None:
        async with asyncio.timeout(120):
            while True:
                message = await ws.recv()
                if kind == "audio" and isinstance(message, bytes):
                    return
                if isinstance(message, str) and json.loads(message)["type"] == kind:
                    return

    async def normal_end(self) -> None:
        async with connect(self.url, max_size=None) as ws:
            await self.started(ws)
            await self.speak(ws)
            await ws.send(json.dumps({"type": "end"}))
            await self.until(ws, "session_end")

    async def abrupt_close(self) -> None:
        ws = await connect(self.url, max_size=None)
        await self.started(ws)
        await self.speak(ws)
        await self.until(ws, "speech_stopped")  # its turn is running
        ws.transport.abort()  # TCP gone, no closing handshake
        with contextlib.suppress(ConnectionClosed):
            await ws.wait_closed()

    async def slow_reader(self) -> None:
        ws = await tiny_buffer_client(self.server)
        session_id = await self.started(ws, output_sample_rate=48000)
        await self.speak(ws)
        await ws.send(json.dumps({"type": "end"}))
        # Read nothing more until the server has cut the session off.
        connections = self.server._connections
        async with asyncio.timeout(120):
            while any(c.session_id == session_id for c in connections):
                await asyncio.sleep(0.1)
        ws.transport.abort()

    async def cancel_mid_reply(self) -> None:
        async with connect(self.url, max_size=None) as ws:
            await self.started(ws)
            await self.speak(ws)
            await self.until(ws, "audio")
            await ws.send(json.dumps({"type": "cancel"}))
            await self.until(ws, "turn_done")

    async def never_start(self, wait_for_timeout: bool) -> None:
        ws = await connect(self.url)
        if wait_for_timeout:  # the server closes it after server.start_timeout_s
            with contextlib.suppress(ConnectionClosed):
                async with asyncio.timeout(30):
                    async for _ in ws:
                        pass
        else:
            ws.transport.abort()
        await ws.close()

    def kinds(self) -> list[Callable[[], Awaitable[None]]]:
        return [self.normal_end, self.abrupt_close, self.slow_reader, self.cancel_mid_reply,
                lambda: self.never_start(True), lambda: self.never_start(False)]

    async def run(self, count: int) -> None:
        gate = asyncio.Semaphore(CONCURRENCY)
        kinds = self.kinds()

        async def one(index: int) -> None:
            kind = index % len(kinds)
            async with gate:
                try:
                    async with asyncio.timeout(150):
                        await kinds[kind]()
                except TimeoutError:
                    raise AssertionError(f"session {index} (kind {kind}) hung") from None

        await asyncio.gather(*(one(i) for i in range(count)))


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def counts() -> tuple[int, int, int]:
    return len(asyncio.all_tasks()), threading.active_count(), open_fds()


async def settle(baseline: tuple[int, int, int], tolerance: tuple[int, int, int]
                 ) -> tuple[int, int, int]:
    """Counts once they are back within tolerance of ``baseline`` (or after 30 s)."""
    deadline = time.monotonic() + 30
    now = counts()
    while time.monotonic() < deadline:
        now = counts()
        if all(n <= b + t for n, b, t in zip(now, baseline, tolerance, strict=True)):
            break
        await asyncio.sleep(0.25)
    return now


@pytest.mark.timeout(900)
async def test_fifty_sessions_killed_every_way_leave_nothing_behind(engines: Engines) -> None:
    config = make_config(server={
        "host": "127.0.0.1", "port": 0, "send_timeout_s": 1.0, "start_timeout_s": 3.0,
        "max_sessions": 16, "max_connections_per_address": 16, "max_input_speed": 0,
        "turns_per_minute": 10_000})
    async with VoiceServer(engines, config) as server:
        churn = Churn(server)
        # Executor threads are created lazily, up to each pool's size: fill the default
        # pool now, and run every kind once, so they are part of the baseline.
        loop = asyncio.get_running_loop()
        await asyncio.gather(*(loop.run_in_executor(None, time.sleep, 0.2) for _ in range(40)))
        await churn.run(len(churn.kinds()))
        baseline = await settle(counts(), (0, 0, 0))
        await asyncio.sleep(2)
        baseline = counts()

        await churn.run(50)

        # A leak grows with the sessions (50 of them); a pool growing by a thread, the
        # audit writer or a keepalive finishing late does not.
        tolerance = (2, 3, 4)
        async with asyncio.timeout(30):  # every session ends (a closing handshake may lag)
            while server._connections:
                await asyncio.sleep(0.25)
        after = await settle(baseline, tolerance)
        names = sorted(t.get_name() for t in asyncio.all_tasks())
        assert after[0] <= baseline[0] + tolerance[0], f"tasks {baseline} -> {after}: {names}"
        assert after[1] <= baseline[1] + tolerance[1], (
            f"threads {baseline} -> {after}: {[t.name for t in threading.enumerate()]}")
        assert after[2] <= baseline[2] + tolerance[2], f"fds {baseline} -> {after}"
