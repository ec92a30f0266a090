"""Every transport at once on one process, sharing one appliance (the same models): the
native protocol, OpenAI Realtime, Wyoming and the kiosk page, each with a client of its own
kind (Chromium for the page), in parallel."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
import soundfile as sf
from websockets.asyncio.client import connect
from wyoming.audio import AudioChunk, AudioStop
from wyoming.client import AsyncTcpClient
from wyoming.tts import Synthesize

from tests.conftest import harvard_clips, make_config
from tests.server.test_kiosk import Page, chromium, question_wav
from tests.server.test_realtime import add_user_text, realtime_session
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
    async with realtime_session(base_url) as (connection, _):
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


async def kiosk_turn(base: str, microphone: Path, spoken_s: float) -> str:
    """What the page showed it heard, once its microphone's recording has played and
    every turn it made has ended. (With four clients on two cores one utterance may be
    taken as two turns.)"""
    async with chromium(microphone) as browser:
        kiosk = await Page.open(browser, base)
        await asyncio.sleep(spoken_s)
        turns_ended = ("document.querySelectorAll('.you').length > 0 && "
                       "window.voiceAgent.stats.events.filter(e => e === 'turn_done').length"
                       " >= document.querySelectorAll('.you').length")
        await kiosk.until(turns_ended, 150)
        assert await kiosk.value("document.querySelector('.agent')?.textContent"), "no reply"
        heard: str = await kiosk.value(
            "[...document.querySelectorAll('.you')].map(p => p.textContent).join(' ')")
        return heard


async def test_every_transport_at_once_on_one_appliance(
    engines: Engines, tmp_path: Path
) -> None:
    microphone = question_wav(tmp_path, lead_s=3.0, tail_s=5.0)
    spoken_s = sf.info(microphone).duration
    async with VoiceServer(engines, make_config()) as server, \
            WyomingServer(server.appliance, "127.0.0.1", 0) as wyoming:
        native, realtime, spoken, page = await asyncio.gather(
            native_turn(f"ws://127.0.0.1:{server.port}"),
            realtime_turn(f"http://127.0.0.1:{server.port}/v1"),
            wyoming_speech(wyoming.port),
            kiosk_turn(f"http://127.0.0.1:{server.port}", microphone, spoken_s))
        async with asyncio.timeout(10):  # every session and request gives its slot back
            while server.appliance.sessions.active:
                await asyncio.sleep(0.05)
    assert native["status"] == "ok" and native["transcript"], native
    assert realtime.response.status == "completed"
    assert spoken > 16000
    assert "pharmacy" in page.lower(), page
