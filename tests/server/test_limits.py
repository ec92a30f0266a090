"""Caps that keep one client from taking the appliance from everyone else: per-address
connections, started-session slots (pre-start sockets do not count), idle timeout, maximum
session length, turns per minute, frame size, audio faster than real time, and the event loop
staying responsive under a flood. Pure rules first, then each on a real server.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import numpy as np
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect as sync_connect

from tests.conftest import harvard_clips, make_config
from tests.test_session import EnergyVad, feed, tone
from voice_agent.audio.frontend import PassthroughFrontend
from voice_agent.audio.pcm import read_audio
from voice_agent.config import VadConfig
from voice_agent.engines import Engines
from voice_agent.server.limits import (
    AddressCounter,
    InputPacer,
    SessionSlots,
    SessionTimer,
    TurnRate,
)
from voice_agent.server.protocol import ErrorEvent, TurnDone
from voice_agent.server.ws import VoiceServer
from voice_agent.session import Emit, Session, StartTurn, silence

# --- pure rules -------------------------------------------------------------------------


def test_address_counter_caps_each_address_and_forgets_those_gone() -> None:
    counter = AddressCounter(2)
    assert counter.acquire("a") and counter.acquire("a")
    assert not counter.acquire("a") and counter.full("a")
    assert counter.acquire("b")
    counter.release("a")
    assert counter.acquire("a")
    for _ in range(2):
        counter.release("a")
    counter.release("b")
    assert counter.count("a") == 0 and not counter._open


def test_session_slots() -> None:
    slots = SessionSlots(1)
    assert slots.claim() and not slots.claim()
    slots.release()
    assert slots.claim() and slots.active == 1


def test_input_pacer_admits_real_time_and_a_burst_and_drops_the_rest() -> None:
    pacer = InputPacer(1.5, 2.0, now=0.0)
    # A burst of 2 s up front, then 1.5 s of audio per second of wall time.
    assert pacer.admit(2.0, 0.0)
    assert not pacer.admit(0.02, 0.0)
    assert pacer.admit(1.5, 1.0)
    # Real time (1x) is always admitted.
    pacer = InputPacer(1.5, 0.1, now=0.0)
    assert all(pacer.admit(0.02, i * 0.02) for i in range(1, 5000))
    # 3x real time: about half is dropped.
    pacer = InputPacer(1.5, 0.1, now=0.0)
    admitted = sum(pacer.admit(0.02, i * 0.02 / 3) for i in range(1, 3001))
    assert 1450 <= admitted <= 1560
    assert InputPacer(0, 0, now=0).admit(1e6, 0)  # off


def test_turn_rate_is_a_sliding_window() -> None:
    rate = TurnRate(2, window_s=60)
    assert rate.allow(0) and rate.allow(10)
    assert not rate.allow(59.9)
    assert rate.allow(60.0)  # the first one left the window
    assert not rate.allow(69.0)
    assert rate.allow(70.0)


def test_session_timer_idle_and_max_duration() -> None:
    timer = SessionTimer(idle_s=5, max_s=20, now=0)
    assert timer.expired(4.9) is None
    assert timer.expired(5.0) == "idle"
    timer.activity(4.0)
    assert timer.expired(8.9) is None and timer.expired(9.0) == "idle"
    for t in range(0, 20):
        timer.activity(t)  # audio all along
    assert timer.expired(19.9) is None
    assert timer.expired(20.0) == "max_duration"
    assert SessionTimer(5, 20, now=0).wait_s(0) == 1.0
    assert SessionTimer(0.3, 20, now=0).wait_s(0.1) == pytest.approx(0.2)
    assert SessionTimer(5, 20, now=0).wait_s(30) == 0.0


def test_refused_turn_gets_rate_limited_and_its_turn_done_and_is_not_run() -> None:
    allowed = iter([True, False])
    session = Session(vad_config=VadConfig(), frontend=PassthroughFrontend(), vad=EnergyVad(),
                      input_rate=16000, turn_gate=lambda: next(allowed))
    one_turn = silence(500) + tone(1000) + silence(600)
    first = feed(session, one_turn)
    assert [a.turn_id for a in first if isinstance(a, StartTurn)] == [1]
    session.turn_finished(1)
    second = feed(session, one_turn)
    assert not [a for a in second if isinstance(a, StartTurn)]
    events = [a.event for a in second if isinstance(a, Emit)]
    errors = [e for e in events if isinstance(e, ErrorEvent)]
    dones = [e for e in events if isinstance(e, TurnDone)]
    assert [(e.code, e.turn_id, e.transient) for e in errors] == [("rate_limited", 2, True)]
    assert [(d.turn_id, d.status) for d in dones] == [(2, "error")]
    assert session.active_turn is None
    assert session.end()[-1].reason == "end"  # type: ignore[union-attr]


def test_too_fast_audio_is_counted_in_pipeline_samples() -> None:
    session = Session(vad_config=VadConfig(), frontend=PassthroughFrontend(), vad=EnergyVad(),
                      input_rate=48000)
    session.drop(silence(100, 48000), "too_fast")
    assert session.input_stats() == {"processed": 0, "dropped_too_fast": 1600}


# --- on a real server -------------------------------------------------------------------

@asynccontextmanager
async def running(engines: Engines, **server: Any) -> AsyncIterator[VoiceServer]:
    config = make_config(server={"host": "127.0.0.1", "port": 0, **server})
    async with VoiceServer(engines, config) as voice:
        yield voice


async def next_event(ws: ClientConnection, timeout: float = 30.0) -> dict[str, Any]:
    while True:
        message = await asyncio.wait_for(ws.recv(), timeout)
        if isinstance(message, str):
            event: dict[str, Any] = json.loads(message)
            return event


async def until(ws: ClientConnection, kind: str, timeout: float = 60.0) -> dict[str, Any]:
    while True:
        event = await next_event(ws, timeout)
        if event["type"] == kind:
            return event


async def started(url: str) -> ClientConnection:
    ws = await connect(url)
    await ws.send(json.dumps({"type": "start", "sample_rate": 16000}))
    event = await next_event(ws)
    assert event["type"] == "ready", event
    return ws


async def closed_code(ws: ClientConnection, timeout: float = 10.0) -> int | None:
    with pytest.raises(ConnectionClosed):
        while True:
            await asyncio.wait_for(ws.recv(), timeout)
    return ws.close_code


@pytest.mark.slow
@pytest.mark.timeout(60)
async def test_connections_per_address_are_capped(engines: Engines) -> None:
    async with running(engines, max_connections_per_address=2) as voice:
        url = f"ws://127.0.0.1:{voice.port}"
        first, second = await connect(url), await connect(url)
        with pytest.raises(InvalidStatus) as caught:
            await connect(url)
        assert caught.value.response.status_code == 429
        await first.close()
        await asyncio.sleep(0.2)
        third = await connect(url)  # a place came free
        for ws in (second, third):
            await ws.close()


@pytest.mark.slow
@pytest.mark.timeout(60)
async def test_sockets_that_never_start_do_not_take_sessions(engines: Engines) -> None:
    async with running(engines, max_sessions=2, max_connections_per_address=16,
                       start_timeout_s=2.0) as voice:
        url = f"ws://127.0.0.1:{voice.port}"
        loiterers = [await connect(url) for _ in range(8)]
        normal = await started(url)  # not refused: the eight never sent start
        assert voice._active == 1
        # The loiterers are closed by the start timeout.
        event = await next_event(loiterers[0], 10)
        assert event["code"] == "start_timeout"
        assert await closed_code(loiterers[0]) == 1008
        for ws in [*loiterers, normal]:
            await ws.close()


@pytest.mark.slow
@pytest.mark.timeout(60)
async def test_idle_started_sessions_end_and_cannot_lock_out_a_client(engines: Engines) -> None:
    async with running(engines, max_connections_per_address=16, idle_timeout_s=1.0) as voice:
        url = f"ws://127.0.0.1:{voice.port}"
        idle = [await started(url) for _ in range(8)]
        refused = await connect(url)
        await refused.send(json.dumps({"type": "start", "sample_rate": 16000}))
        assert (await next_event(refused))["code"] == "overloaded"
        assert await closed_code(refused) == 1013
        began = time.monotonic()
        for ws in idle:
            end = await until(ws, "session_end", 10)
            assert end["reason"] == "idle"
            assert await closed_code(ws) == 1000
        assert time.monotonic() - began < 5
        normal = await started(url)
        await normal.close()


@pytest.mark.slow
@pytest.mark.timeout(60)
async def test_session_length_is_capped(engines: Engines) -> None:
    async with running(engines, max_session_s=1.5) as voice:
        ws = await started(f"ws://127.0.0.1:{voice.port}")
        began = time.monotonic()

        async def talk_silence() -> None:  # a live microphone: never idle
            frame = silence(20)
            while True:
                await ws.send(frame)
                await asyncio.sleep(0.02)

        sender = asyncio.create_task(talk_silence())
        try:
            end = await until(ws, "session_end", 10)
        finally:
            sender.cancel()
            await asyncio.gather(sender, return_exceptions=True)
        assert end["reason"] == "max_duration"
        assert 1.4 <= time.monotonic() - began < 4
        assert await closed_code(ws) == 1000


@pytest.mark.slow
@pytest.mark.timeout(120)
async def test_turns_per_minute(engines: Engines) -> None:
    samples, _ = read_audio(harvard_clips()[0].path)
    speech = np.concatenate([samples, np.zeros(24000, np.int16)]).astype("<i2").tobytes()
    async with running(engines, turns_per_minute=1) as voice:
        ws = await started(f"ws://127.0.0.1:{voice.port}")
        for offset in range(0, len(speech), 640):
            await ws.send(speech[offset:offset + 640])
        assert (await until(ws, "turn_done"))["status"] in ("ok", "empty")
        for offset in range(0, len(speech), 640):
            await ws.send(speech[offset:offset + 640])
        error = await until(ws, "error")
        done = await until(ws, "turn_done")
        assert error["code"] == "rate_limited" and error["transient"]
        assert done["status"] == "error" and done["turn_id"] == error["turn_id"] == 2
        assert done["audio_samples"] == 0
        await ws.send(json.dumps({"type": "end"}))
        assert (await until(ws, "session_end"))["reason"] == "end"


@pytest.mark.slow
@pytest.mark.timeout(60)
async def test_oversized_frame_closes_1009(engines: Engines) -> None:
    async with running(engines) as voice:
        ws = await started(f"ws://127.0.0.1:{voice.port}")
        await ws.send(b"\x00" * (64 * 1024 + 2))
        assert await closed_code(ws) == 1009


def healthz_latencies(port: int, stop: threading.Event) -> list[float]:
    latencies: list[float] = []
    while not stop.is_set():
        began = time.perf_counter()
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        connection.request("GET", "/healthz")
        assert connection.getresponse().status == 200
        connection.close()
        latencies.append(time.perf_counter() - began)
        time.sleep(0.02)
    return latencies


def flood(url: str, seconds: float) -> dict[str, Any]:
    """Audio as fast as the socket takes it, in the largest frames allowed; then ``end``."""
    frame = (np.random.default_rng(1).normal(0, 30, 32_000)).astype("<i2").tobytes()
    with sync_connect(url, max_size=None) as ws:
        ws.send(json.dumps({"type": "start", "sample_rate": 16000}))
        assert json.loads(ws.recv(10))["type"] == "ready"
        deadline = time.monotonic() + seconds
        sent = 0
        while time.monotonic() < deadline:
            ws.send(frame)
            sent += 1
        ws.send(json.dumps({"type": "end"}))
        while True:
            message = ws.recv(60)
            if isinstance(message, str) and json.loads(message)["type"] == "session_end":
                end: dict[str, Any] = json.loads(message)
                end["frames_sent"] = sent
                return end


@pytest.mark.slow
@pytest.mark.timeout(120)
async def test_a_flood_is_dropped_and_the_loop_stays_responsive(engines: Engines) -> None:
    async with running(engines, input_burst_s=2.0) as voice:
        stop = threading.Event()
        poller = asyncio.create_task(asyncio.to_thread(healthz_latencies, voice.port, stop))
        await asyncio.sleep(0.3)
        try:
            end = await asyncio.to_thread(flood, f"ws://127.0.0.1:{voice.port}", 4.0)
        finally:
            stop.set()
        latencies = await poller
    stats = end["input_stats"]
    assert stats.get("dropped_too_fast", 0) > 0, stats
    # At most 1.5x real time plus the burst was processed.
    assert stats["processed"] <= 16000 * (2.0 + 1.5 * 6), stats
    assert len(latencies) > 20
    # Generous: two shared cores, three busy threads in this process (the flood, the poller,
    # the loop) taking turns at the interpreter's lock. Unbounded frames processed back to
    # back without yielding stalled /healthz for 1.3 s, and a whole 2 s message heard in one
    # go 0.6 s; in 100 ms slices the worst seen was 0.57 s on a loaded machine, 0.3 s
    # usually.
    assert max(latencies) < 0.8, sorted(latencies)[-5:]
