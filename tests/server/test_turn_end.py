"""Every turn ends, whatever the client does: real engines, real server, real sockets.

Speech sent faster than real time and multi-megabyte bursts get one ``turn_done`` per
``speech_stopped``; a client that stops reading is cut off within the send timeout and its
turn is still recorded on the server; JSON nested 10,000 deep is a coded error.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from tests.conftest import harvard_clips, make_config
from voice_agent.audio.pcm import read_audio
from voice_agent.engines import Engines
from voice_agent.server.ws import VoiceServer

pytestmark = pytest.mark.slow

SEND_TIMEOUT_S = 1.0


def turn_end_config(resume_window_ms: int = 0, **server: object) -> Any:
    # Fast senders are the point here: the too-fast input drop and the turn rate cap
    # (tested on their own) would hide the orderings under test. Resumed speech (which joins
    # utterances whose reply was not heard yet: all of them, faster than real time) is off
    # unless a test asks for it, and the fixed silence ends turns (the end-of-turn model
    # answers in wall time, long after a fast sender's 0.7 s gap is over). Speculation is on.
    return make_config(server={"host": "127.0.0.1", "port": 0, "send_timeout_s": SEND_TIMEOUT_S,
                               "max_input_speed": 0, "turns_per_minute": 10_000, **server},
                       turn={"resume_window_ms": resume_window_ms, "endpoint": "silence"})


@pytest.fixture
async def fresh_server(engines: Engines) -> AsyncIterator[VoiceServer]:
    async with VoiceServer(engines, turn_end_config()) as running:
        yield running


@pytest.fixture
async def resuming_server(engines: Engines) -> AsyncIterator[VoiceServer]:
    async with VoiceServer(engines, turn_end_config(resume_window_ms=3000)) as running:
        yield running


def url(server: VoiceServer) -> str:
    return f"ws://127.0.0.1:{server.port}"


def turns_recorded(server: VoiceServer) -> float:
    """Turns the server recorded (``on_turn_done`` → metrics), delivered or not."""
    total = 0.0
    for metric in server.metrics.registry.collect():
        for sample in metric.samples:
            if sample.name == "voice_agent_turns_total":
                total += sample.value
    return total


def sessions_open(server: VoiceServer) -> float:
    value = server.metrics.registry.get_sample_value("voice_agent_sessions_open")
    return value or 0.0


def speech(count: int, gap_s: float = 0.7) -> np.ndarray:
    """``count`` real utterances, each followed by ``gap_s`` of silence."""
    pieces = []
    clips = harvard_clips()
    for index in range(count):
        samples, _ = read_audio(clips[index % len(clips)].path)
        pieces += [samples, np.zeros(int(16000 * gap_s), np.int16)]
    return np.concatenate(pieces)


async def send_fast(ws: ClientConnection, audio: np.ndarray, chunk_s: float = 1.0) -> None:
    step = int(16000 * chunk_s)
    for start in range(0, audio.size, step):
        await ws.send(audio[start:start + step].astype("<i2").tobytes())


async def collect_until_session_end(ws: ClientConnection, timeout: float) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    async with asyncio.timeout(timeout):
        async for message in ws:
            if isinstance(message, str):
                events.append(json.loads(message))
                if events[-1]["type"] == "session_end":
                    break
    return events


async def session_of(server: VoiceServer, audio: np.ndarray, *, chunk_s: float,
                     timeout: float) -> list[dict[str, Any]]:
    """Send ``audio`` as fast as the socket takes it, then ``end``: every event until
    ``session_end``."""
    async with connect(url(server), max_size=None) as ws:
        await ws.send(json.dumps({"type": "start", "sample_rate": 16000}))
        await send_fast(ws, audio, chunk_s=chunk_s)
        await ws.send(json.dumps({"type": "end"}))
        return await collect_until_session_end(ws, timeout)


def check_one_turn_done_per_utterance(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    seqs = [e["seq"] for e in events]
    assert seqs == list(range(1, len(events) + 1)), "seq must be gap-free"
    # Speech resumed before a reply could be heard continues its turn: one utterance, however
    # many end-of-turn decisions it took (stream time runs ahead of the clock here, so no
    # reply is ever heard before the next speech, and within turn.resume_window_ms the
    # utterances join).
    # Every speech_started gets one turn_done (a burst too short to be speech ends "empty",
    # one over a reply that was no turn "backchannel").
    started = sorted({e["turn_id"] for e in events if e["type"] == "speech_started"})
    stopped = {e["turn_id"] for e in events if e["type"] == "speech_stopped"}
    done = [e for e in events if e["type"] == "turn_done"]
    assert sorted(d["turn_id"] for d in done) == started, (started, done)
    assert all(d["status"] in ("empty", "backchannel") for d in done
               if d["turn_id"] not in stopped), done
    for turn in done:  # nothing of a turn after its end
        after = events[events.index(turn) + 1:]
        assert not [e for e in after if e.get("turn_id") == turn["turn_id"]]
    assert events[-1]["type"] == "session_end" and events[-1]["reason"] == "end"
    return done


@pytest.mark.timeout(240)
async def test_speech_faster_than_real_time_gets_one_turn_done_per_utterance(
    fresh_server: VoiceServer,
) -> None:
    # A few times real time, no waiting.
    events = await session_of(fresh_server, speech(6), chunk_s=0.5, timeout=180)
    done = check_one_turn_done_per_utterance(events)
    # Six utterances with 0.7 s gaps; one that starts over a reply joins the next while it
    # is being judged (a barge-in or a backchannel?), so fewer turns than utterances.
    assert len(done) >= 3
    # Every turn but the last was overtaken by the next utterance: cancelled.
    assert done[-1]["status"] in ("ok", "empty")
    assert {d["status"] for d in done[:-1]} <= {"cancelled", "ok", "empty"}


@pytest.mark.timeout(240)
async def test_fast_speech_with_resumed_turns_still_ends_each_turn_once(
    resuming_server: VoiceServer,
) -> None:
    events = await session_of(resuming_server, speech(6), chunk_s=0.5, timeout=180)
    done = check_one_turn_done_per_utterance(events)
    resumed = [e for e in events if e["type"] == "speech_resumed"]
    assert resumed, "no reply can be heard before the next speech: the turns join"
    assert len(done) < 6
    # The turns were asked about every utterance they joined: no words lost (six Harvard
    # sentences of 6-8 words; a turn also ends at vad.max_utterance_s).
    words = sum(len(d["transcript"].split()) for d in done)
    assert 6 * 5 <= words <= 6 * 9, done  # and none twice (a resumed turn is not carried)


@pytest.mark.timeout(240)
async def test_multi_megabyte_burst_gets_one_turn_done_per_utterance(
    fresh_server: VoiceServer,
) -> None:
    audio = np.tile(speech(4, gap_s=0.5), 12)  # ~3.5 MB of real speech, ~48 utterances
    assert audio.nbytes > 3_000_000
    # 32 KB messages, as fast as TCP takes them.
    events = await session_of(fresh_server, audio, chunk_s=1.0, timeout=200)
    done = check_one_turn_done_per_utterance(events)
    # 0.5 s gaps: some utterances run together, more so when one that starts over a reply
    # is still being judged as the next begins (they join into one burst).
    assert len(done) >= 5
    assert sum(d["status"] == "cancelled" for d in done) >= len(done) // 2  # overtaken


# --- a client that stops reading --------------------------------------------------------


async def tiny_buffer_client(server: VoiceServer) -> ClientConnection:
    """A real client whose socket buffers almost nothing and that stops taking frames from
    the socket after one: once it stops calling recv(), the server's sends block.

    The server side of the socket gets a small send buffer too: on loopback Linux sizes it
    for a 64 KiB MSS (megabytes), which a slow mobile link would never offer."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", server.port))
    ws = await connect(url(server), sock=sock, max_queue=1, max_size=None)
    port = ws.local_address[1]
    async with asyncio.timeout(5):  # the server's handler starts just after the handshake
        while not (mine := [c for c in server._connections
                            if c.ws.remote_address[1] == port]):
            await asyncio.sleep(0.01)
    server_sock = mine[0].ws.transport.get_extra_info("socket")
    server_sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    return ws


@pytest.mark.timeout(180)
async def test_client_that_stops_reading_is_cut_off_and_its_turn_still_ends(
    fresh_server: VoiceServer,
) -> None:
    baseline_tasks = len(asyncio.all_tasks())
    ws = await tiny_buffer_client(fresh_server)
    await ws.send(json.dumps({"type": "start", "sample_rate": 16000,
                              "output_sample_rate": 48000}))  # a big reply: 96 KB/s
    await send_fast(ws, speech(1, gap_s=1.2))
    await ws.send(json.dumps({"type": "end"}))
    async with asyncio.timeout(10):
        while not sessions_open(fresh_server):
            await asyncio.sleep(0.01)
    # From here on the client reads nothing. The reply fills the socket buffers, a send
    # blocks, and send_timeout_s later the server cuts the client off.
    deadline = time.monotonic() + 120
    while sessions_open(fresh_server) and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    assert sessions_open(fresh_server) == 0, "the server never closed the non-reading client"
    assert turns_recorded(fresh_server) == 1, "the turn's end was not recorded"
    # The client finds the connection cut off: no closing handshake, no session_end.
    events: list[dict[str, Any]] = []
    with pytest.raises(ConnectionClosed) as closed:
        async with asyncio.timeout(30):
            async for message in ws:
                if isinstance(message, str):
                    events.append(json.loads(message))
            raise AssertionError("closed normally")
    assert closed.value.rcvd is None
    assert "session_end" not in [e["type"] for e in events]
    for _ in range(50):  # the server's per-connection tasks end with it
        if len(asyncio.all_tasks()) <= baseline_tasks:
            break
        await asyncio.sleep(0.1)
    assert len(asyncio.all_tasks()) <= baseline_tasks


@pytest.mark.timeout(120)
async def test_client_that_stops_reading_is_closed_within_the_send_timeout(
    fresh_server: VoiceServer,
) -> None:
    ws = await tiny_buffer_client(fresh_server)
    await ws.send(json.dumps({"type": "start", "sample_rate": 16000}))

    async def flood() -> None:
        # Pings are answered with pongs the client never reads: the server's output
        # backs up until a send blocks (and then its reading stops too).
        with contextlib.suppress(ConnectionClosed):
            while True:
                await ws.send(json.dumps({"type": "ping", "id": "x" * 2000}))

    async with asyncio.timeout(10):
        while not sessions_open(fresh_server):
            await asyncio.sleep(0.01)
    sender = asyncio.create_task(flood())
    blocked_at = None
    started = time.monotonic()
    while sessions_open(fresh_server) and time.monotonic() - started < 60:
        if blocked_at is None and server_output_backed_up(fresh_server):
            blocked_at = time.monotonic()
        await asyncio.sleep(0.01)
    closed_at = time.monotonic()
    sender.cancel()
    await asyncio.gather(sender, return_exceptions=True)
    await ws.close()
    assert sessions_open(fresh_server) == 0, "the non-reading client was never closed"
    assert blocked_at is not None
    # The slack covers the teardown on a loaded machine (2.9 s seen in CI); what this rules
    # out is a connection held until the keepalive's 20 s, or forever.
    assert closed_at - blocked_at < SEND_TIMEOUT_S + 5.0


def server_output_backed_up(server: VoiceServer) -> bool:
    """Whether the server side of a connection holds output the socket does not take."""
    connections = server._connections
    return any(c.ws.transport.get_write_buffer_size() > 0 for c in connections)


# --- deeply nested JSON -------------------------------------------------------------------


@pytest.mark.timeout(60)
async def test_json_nested_10000_deep_is_a_coded_error_and_the_session_goes_on(
    fresh_server: VoiceServer,
) -> None:
    async with connect(url(fresh_server)) as ws:
        await ws.send(json.dumps({"type": "start", "sample_rate": 16000}))
        assert json.loads(await ws.recv())["type"] == "ready"
        for text in ("[" * 10_000 + "]" * 10_000, '{"a":' * 10_000 + "1" + "}" * 10_000):
            await ws.send(text)
            error = json.loads(await asyncio.wait_for(ws.recv(), 10))
            assert error["type"] == "error" and error["code"] == "bad_json", error
        await ws.send(json.dumps({"type": "ping", "id": "alive"}))
        pong = json.loads(await asyncio.wait_for(ws.recv(), 10))
        assert pong["type"] == "pong" and pong["id"] == "alive"
