"""Every transport at once on one process, sharing one appliance (the same models): the
native protocol, OpenAI Realtime and Wyoming, each with a client of its own kind, in
parallel."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from openai import AsyncOpenAI
from websockets.asyncio.client import connect
from wyoming.audio import AudioChunk, AudioStop
from wyoming.client import AsyncTcpClient
from wyoming.tts import Synthesize

from tests.conftest import harvard_clips, make_config
from tests.server.test_realtime import add_user_text
from tests.server.test_ws import send_speech, wait_for_type
from voice_agent.audio.pcm import read_audio
from voice_agent.engines import Engines
from voice_agent.server.ws import VoiceServer
from voice_agent.server.wyoming import WyomingServer

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]


async def native_turn(url: str) -> dict[str, Any]:
    samples, _ = read_audio(harvard_clips()[0].path)
    async with connect(url) as ws:
        await ws.send(json.dumps({"type": "start", "sample_rate": 16000}))
        await send_speech(ws, samples)
        return await wait_for_type(ws, "turn_done", timeout=120)


async def realtime_turn(base_url: str) -> Any:
    client = AsyncOpenAI(base_url=base_url, api_key="unused-on-loopback")
    async with client.realtime.connect(model="voice-agent") as connection:
        await add_user_text(connection, "Say hello.")
        await connection.response.create()
        async with asyncio.timeout(120):
            async for event in connection:
                if event.type == "response.done":
                    return event


async def wyoming_speech(port: int) -> int:
    async with AsyncTcpClient("127.0.0.1", port) as client:
        await client.write_event(Synthesize(text="Good morning.").event())
        audio = 0
        async with asyncio.timeout(120):
            while True:
                event = await client.read_event()
                assert event is not None
                if AudioChunk.is_type(event.type):
                    audio += len(AudioChunk.from_event(event).audio)
                elif AudioStop.is_type(event.type):
                    return audio


async def test_native_realtime_and_wyoming_at_once_on_one_appliance(engines: Engines) -> None:
    async with VoiceServer(engines, make_config()) as server, \
            WyomingServer(server.appliance, "127.0.0.1", 0) as wyoming:
        native, realtime, spoken = await asyncio.gather(
            native_turn(f"ws://127.0.0.1:{server.port}"),
            realtime_turn(f"http://127.0.0.1:{server.port}/v1"),
            wyoming_speech(wyoming.port))
        async with asyncio.timeout(10):  # every session and request gives its slot back
            while server.appliance.sessions.active:
                await asyncio.sleep(0.05)
    assert native["status"] == "ok" and native["transcript"], native
    assert realtime.response.status == "completed"
    assert spoken > 16000
