"""The Wyoming server with the ``wyoming`` package's own client over TCP, the way Home
Assistant discovers and calls it: describe, speech to text, text to speech, conversation."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator

import numpy as np
import pytest
from wyoming.asr import Transcribe, Transcript, TranscriptChunk, TranscriptStart, TranscriptStop
from wyoming.audio import AudioChunk, AudioStart, AudioStop
from wyoming.client import AsyncTcpClient
from wyoming.error import Error
from wyoming.event import Event
from wyoming.handle import Handled
from wyoming.info import Describe, Info
from wyoming.tts import Synthesize

from tests.conftest import harvard_clips, make_config
from tests.fakes import RateRecordingTts
from voice_agent.appliance import Appliance
from voice_agent.audio.pcm import read_audio, resample
from voice_agent.engines import Engines
from voice_agent.errors import ConfigError
from voice_agent.server.wyoming import WyomingServer
from voice_agent.wer import word_error_rate

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]


@pytest.fixture
async def port(engines: Engines) -> AsyncIterator[int]:
    async with WyomingServer(Appliance(engines, make_config()), "127.0.0.1", 0) as server:
        yield server.port


async def next_event(client: AsyncTcpClient, timeout_s: float = 60.0) -> Event:
    event = await asyncio.wait_for(client.read_event(), timeout_s)
    assert event is not None, "the server closed the connection"
    return event


async def send_audio(client: AsyncTcpClient, samples: np.ndarray, rate: int) -> None:
    await client.write_event(AudioStart(rate=rate, width=2, channels=1).event())
    for start in range(0, samples.size, rate // 10):
        piece = samples[start:start + rate // 10].astype("<i2").tobytes()
        await client.write_event(AudioChunk(rate=rate, width=2, channels=1, audio=piece).event())
    await client.write_event(AudioStop().event())


async def test_describe_answers_within_a_second_with_all_three_services(port: int) -> None:
    async with AsyncTcpClient("127.0.0.1", port) as client:
        began = time.perf_counter()
        await client.write_event(Describe().event())
        event = await next_event(client, 1.0)
        assert time.perf_counter() - began < 1.0
    info = Info.from_event(event)
    assert info.asr[0].installed and info.asr[0].supports_transcript_streaming
    assert info.tts[0].voices and info.handle[0].models


async def test_speech_to_text_streams_the_transcript(port: int) -> None:
    clip = harvard_clips()[0]
    samples, _ = read_audio(clip.path)
    async with AsyncTcpClient("127.0.0.1", port) as client:
        await client.write_event(Transcribe(language="en").event())
        # Home Assistant's satellites send 16 kHz; any rate is taken.
        await send_audio(client, resample(samples, 16000, 22050), 22050)
        kinds = []
        while not Transcript.is_type((event := await next_event(client)).type):
            kinds.append(event.type)
    assert kinds[0] == TranscriptStart().event().type
    assert kinds[-1] == TranscriptStop().event().type
    assert TranscriptChunk(text="x").event().type in kinds
    assert word_error_rate(clip.reference, Transcript.from_event(event).text) < 0.25


async def test_text_to_speech_says_what_it_was_given(port: int, engines: Engines) -> None:
    text = "The pharmacy opens at nine tomorrow morning."
    async with AsyncTcpClient("127.0.0.1", port) as client:
        await client.write_event(Synthesize(text=text).event())
        start = AudioStart.from_event(await next_event(client))
        chunks = []
        while AudioChunk.is_type((event := await next_event(client)).type):
            chunks.append(AudioChunk.from_event(event).audio)
        assert AudioStop.is_type(event.type)
        # Round trip: what it said is heard back as the same words.
        audio = np.frombuffer(b"".join(chunks), dtype="<i2")
        assert (start.width, start.channels) == (2, 1) and audio.size > start.rate
        await client.write_event(Transcribe().event())
        await send_audio(client, audio, start.rate)
        while not Transcript.is_type((event := await next_event(client)).type):
            pass
    assert word_error_rate(text, Transcript.from_event(event).text) < 0.2


async def test_a_conversation_agent_answers_text_and_mistakes_get_errors(port: int) -> None:
    async with AsyncTcpClient("127.0.0.1", port) as client:
        await client.write_event(Event(type="no-such-event"))
        error = Error.from_event(await next_event(client, 10))
        assert error.code == "unknown_type"
        await client.write_event(AudioChunk(rate=16000, width=1, channels=1,
                                            audio=b"\x00" * 160).event())
        assert Error.from_event(await next_event(client, 10)).code == "bad_audio"
        await client.write_event(Transcript(text="What is the capital of France?").event())
        handled = Handled.from_event(await next_event(client))
    assert handled.text and len(handled.text.split()) >= 2


async def test_the_conversation_agent_spends_no_time_on_speech_nobody_hears(
    engines: Engines,
) -> None:
    """Home Assistant speaks the agent's answer with its own TTS pipeline: the turn makes
    none (it used to synthesize the whole reply, and answer only once that was done)."""
    tts = RateRecordingTts(engines.tts)
    appliance = Appliance(dataclasses.replace(engines, tts=tts), make_config())
    async with (WyomingServer(appliance, "127.0.0.1", 0) as server,
                AsyncTcpClient("127.0.0.1", server.port) as client):
        for question in ("What is the capital of France?", "And of Italy?"):
            await client.write_event(Transcript(text=question).event())
            handled = Handled.from_event(await next_event(client))
            assert any(ch.isalpha() for ch in handled.text), handled
    assert tts.rates == []


def test_off_loopback_it_must_name_its_clients() -> None:
    with pytest.raises(ConfigError, match="allow_from"):
        make_config(wyoming={"uri": "tcp://0.0.0.0:10700"})
    make_config(wyoming={"uri": "tcp://0.0.0.0:10700", "allow_from": ["192.168.1.20"]})
    with pytest.raises(ConfigError, match="tcp://"):
        make_config(wyoming={"uri": "http://127.0.0.1:10700"})
