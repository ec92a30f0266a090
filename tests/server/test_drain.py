"""Graceful shutdown: SIGTERM drains sessions (turn_done, session_end ``shutdown``, 1001)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from tests.conftest import harvard_clips, make_config
from tests.serving import wait_listening
from voice_agent.audio.pcm import read_audio
from voice_agent.engines import Engines
from voice_agent.server.ws import VoiceServer

pytestmark = pytest.mark.slow

UNIT_STOP_TIMEOUT_S = 40
"""``TimeoutStopSec`` in systemd/voice-agent.service: the drain must fit in it."""


def clip() -> np.ndarray:
    samples, _ = read_audio(harvard_clips()[0].path)
    return np.concatenate([samples, np.zeros(24000, np.int16)])  # ends on any judgement


async def ask(url: str) -> ClientConnection:
    """Connect, start, and speak one utterance (fast); returns once its turn is running
    (``speech_stopped``: recognition, the model and synthesis take a second or more)."""
    ws = await connect(url, max_size=None)
    await ws.send(json.dumps({"type": "start", "sample_rate": 16000}))
    audio = clip()
    for start in range(0, audio.size, 8000):
        await ws.send(audio[start:start + 8000].astype("<i2").tobytes())
    async with asyncio.timeout(120):
        while True:
            message = await ws.recv()
            if isinstance(message, str) and json.loads(message)["type"] == "speech_stopped":
                return ws


async def rest_of_session(ws: ClientConnection, timeout: float) -> tuple[list[dict[str, Any]],
                                                                       int | None]:
    events: list[dict[str, Any]] = []
    async with asyncio.timeout(timeout):
        with contextlib.suppress(ConnectionClosed):
            async for message in ws:
                if isinstance(message, str):
                    events.append(json.loads(message))
    return events, ws.close_code


def check_drained(events: list[dict[str, Any]], code: int | None) -> dict[str, Any]:
    types = [e["type"] for e in events]
    assert types.count("turn_done") == 1, types
    assert types[-1] == "session_end" and events[-1]["reason"] == "shutdown", events[-1:]
    assert code == 1001
    done = events[types.index("turn_done")]
    assert done["status"] in ("ok", "cancelled")
    return done


@pytest.fixture
async def draining_server(engines: Engines) -> AsyncIterator[VoiceServer]:
    config = make_config(server={"host": "127.0.0.1", "port": 0, "drain_timeout_s": 0.0})
    async with VoiceServer(engines, config) as running:
        yield running


@pytest.mark.timeout(180)
async def test_drain_cancels_running_turns_with_their_turn_done(
    draining_server: VoiceServer,
) -> None:
    url = f"ws://127.0.0.1:{draining_server.port}"
    ws = await ask(url)
    idle = await connect(url)  # connected, never sent start
    started = time.monotonic()
    drain = asyncio.create_task(draining_server.drain())
    events, code = await rest_of_session(ws, 30)
    done = check_drained(events, code)
    assert done["status"] == "cancelled", "drain_timeout_s = 0 cancels the reply"
    with pytest.raises(ConnectionClosed):
        await asyncio.wait_for(idle.recv(), 10)
    assert idle.close_code == 1001
    await asyncio.wait_for(drain, 30)
    assert time.monotonic() - started < 10
    with pytest.raises(OSError):  # the listener is closed: no new sessions
        await connect(url, open_timeout=5)


@pytest.mark.timeout(180)
async def test_drain_lets_a_running_turn_finish_within_the_timeout(engines: Engines) -> None:
    config = make_config(server={"host": "127.0.0.1", "port": 0, "drain_timeout_s": 60.0})
    async with VoiceServer(engines, config) as server:
        ws = await ask(f"ws://127.0.0.1:{server.port}")
        drain = asyncio.create_task(server.drain())
        events, code = await rest_of_session(ws, 90)
        assert check_drained(events, code)["status"] == "ok"
        await asyncio.wait_for(drain, 30)


# --- the real process -------------------------------------------------------------------


@pytest.mark.timeout(300)
async def test_sigterm_drains_the_served_process_and_exits_0() -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "voice_agent", "serve", "--port", "0"],
        stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
        env={**os.environ, "VOICE_AGENT_SERVER__DRAIN_TIMEOUT_S": "1"},
    )
    try:
        url, log = await asyncio.to_thread(wait_listening, process)
        ws = await ask(url)
        process.send_signal(signal.SIGTERM)
        stopped = time.monotonic()
        events, code = await rest_of_session(ws, UNIT_STOP_TIMEOUT_S)
        check_drained(events, code)
        rc = await asyncio.to_thread(process.wait, UNIT_STOP_TIMEOUT_S)
        assert rc == 0, "".join(log)
        # drain 1 s + engine shutdown; far inside the unit's TimeoutStopSec.
        assert time.monotonic() - stopped < UNIT_STOP_TIMEOUT_S
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
