"""The WebSocket endpoint's handling of clients: errors, cancel, barge-in, limits, health."""

from __future__ import annotations

import asyncio
import json
import urllib.request
from typing import Any

import numpy as np
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from tests.conftest import harvard_clips
from voice_agent.audio.pcm import read_audio
from voice_agent.server.ws import VoiceServer

pytestmark = pytest.mark.slow


async def next_event(ws: ClientConnection, *, timeout: float = 30.0) -> dict[str, Any]:
    """The next JSON event (binary audio frames are skipped)."""
    while True:
        message = await asyncio.wait_for(ws.recv(), timeout)
        if isinstance(message, str):
            event: dict[str, Any] = json.loads(message)
            return event


async def wait_for_type(ws: ClientConnection, kind: str, seen: list[dict[str, Any]] | None = None,
                        *, timeout: float = 60.0) -> dict[str, Any]:
    while True:
        event = await next_event(ws, timeout=timeout)
        if seen is not None:
            seen.append(event)
        if event["type"] == kind:
            return event


async def started(url: str, rate: int = 16000) -> ClientConnection:
    ws = await connect(url)
    await ws.send(json.dumps({"type": "start", "sample_rate": rate}))
    ready = await next_event(ws)
    assert ready["type"] == "ready"
    return ws


async def send_speech(ws: ClientConnection, samples: np.ndarray, *, silence_s: float = 1.5) -> None:
    """``samples`` then ``silence_s`` of silence, as fast as the socket takes them. 1.5 s ends
    the turn however the end-of-turn model judges it (``turn.incomplete_silence_ms``)."""
    audio = np.concatenate([samples, np.zeros(int(16000 * silence_s), np.int16)])
    for start in range(0, audio.size, 320):
        await ws.send(audio[start:start + 320].astype("<i2").tobytes())


async def test_client_mistakes_get_coded_errors_and_the_session_goes_on(server_url: str) -> None:
    async with await started(server_url) as ws:
        cases = [
            ("{not json", "bad_json"),
            ("[1, 2]", "bad_json"),
            (json.dumps({"type": "dance"}), "unknown_type"),
            (json.dumps({"type": "ping", "id": 5}), "bad_field"),
            (json.dumps({"type": "start", "sample_rate": 16000}), "already_started"),
            (b"\x01\x02\x03", "bad_audio"),
        ]
        for message, code in cases:
            await ws.send(message)
            event = await next_event(ws)
            assert event["type"] == "error" and event["code"] == code, (message, event)
        await ws.send(json.dumps({"type": "ping", "id": "still-there"}))
        assert await next_event(ws) == {"type": "pong", "id": "still-there",
                                        "seq": len(cases) + 2}


@pytest.mark.parametrize(
    "first, code",
    [
        (json.dumps({"type": "start", "sample_rate": 96000}), "bad_audio"),
        (json.dumps({"type": "start", "sample_rate": 16000, "output_sample_rate": 100}),
         "bad_audio"),
        (json.dumps({"type": "cancel"}), "not_started"),
        (b"\x00\x00", "not_started"),
    ],
)
async def test_bad_start_is_reported_and_a_good_one_still_works(
    server_url: str, first: str | bytes, code: str
) -> None:
    async with connect(server_url) as ws:
        await ws.send(first)
        event = await next_event(ws)
        assert (event["type"], event["code"]) == ("error", code)
        await ws.send(json.dumps({"type": "start", "sample_rate": 16000}))
        assert (await next_event(ws))["type"] == "ready"


async def test_oversized_message_closes_with_1009(server: VoiceServer, server_url: str) -> None:
    async with await started(server_url) as ws:
        await ws.send(b"\x00" * (server.config.server.max_message_bytes + 2))
        with pytest.raises(ConnectionClosed) as closed:
            await next_event(ws)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009


async def test_cancel_ends_the_turn_with_one_terminal_event(server_url: str) -> None:
    samples, _ = read_audio(harvard_clips()[0].path)
    async with await started(server_url) as ws:
        await send_speech(ws, samples)
        seen: list[dict[str, Any]] = []
        await wait_for_type(ws, "speech_stopped", seen)
        await ws.send(json.dumps({"type": "cancel"}))
        done = await wait_for_type(ws, "turn_done", seen)
        assert done["status"] == "cancelled"
        await ws.send(json.dumps({"type": "end"}))
        end = await wait_for_type(ws, "session_end", seen)
        assert [e["type"] for e in seen].count("turn_done") == 1
        assert end["input_stats"]["processed"] > samples.size


async def test_speaking_again_interrupts_the_reply(server_url: str) -> None:
    first, second = harvard_clips()[0], harvard_clips()[1]
    samples_a, _ = read_audio(first.path)
    samples_b, _ = read_audio(second.path)
    async with await started(server_url) as ws:
        await send_speech(ws, samples_a)
        seen: list[dict[str, Any]] = []
        await wait_for_type(ws, "speech_stopped", seen)
        while not isinstance(await asyncio.wait_for(ws.recv(), 60), bytes):
            pass  # the reply is going out
        # Half a second of it heard (stream time is the session's clock), then speech.
        await send_speech(ws, np.zeros(8000, np.int16), silence_s=0.0)
        await send_speech(ws, samples_b)
        await ws.send(json.dumps({"type": "end"}))
        await wait_for_type(ws, "session_end", seen)
    done = {e["turn_id"]: e for e in seen if e["type"] == "turn_done"}
    assert sorted(done) == [1, 2], seen
    # This server sends replies unpaced (playback.lead_ms = 0): all of a reply counts as
    # heard once sent, so one sent whole before the new speech is judged a turn ends "ok".
    assert done[1]["status"] == "cancelled" or done[1]["heard_text"] == done[1]["reply_text"]
    assert done[2]["status"] == "ok" and done[2]["transcript"]


async def test_health_endpoint(server: VoiceServer) -> None:
    url = f"http://127.0.0.1:{server.port}/healthz"
    body = await asyncio.to_thread(lambda: urllib.request.urlopen(url, timeout=5).read())
    assert body == b"ok\n"
