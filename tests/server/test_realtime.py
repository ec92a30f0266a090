"""``/v1/realtime`` with the real ``openai`` SDK on a real server: a spoken turn, a text turn,
a cancel and a truncate."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import numpy as np
import pytest
from openai import AsyncOpenAI

from tests.conftest import harvard_clips, make_config
from voice_agent.audio.pcm import StreamResampler, read_audio
from voice_agent.engines import Engines
from voice_agent.server.ws import VoiceServer
from voice_agent.wer import normalize

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

RATE = 24_000
CHUNK = RATE // 10  # 100 ms, as Realtime clients stream


@pytest.fixture
async def base_url(engines: Engines) -> AsyncIterator[str]:
    # Paced like a loudspeaker (the default lead), so a reply is still playing when the
    # client cancels or truncates it.
    config = make_config(playback={"lead_ms": 300})
    async with VoiceServer(engines, config) as server:
        yield f"http://127.0.0.1:{server.port}/v1"


def speech_24k(index: int = 0) -> np.ndarray:
    samples, _ = read_audio(harvard_clips()[index].path)
    return StreamResampler(16000, RATE).process(samples, last=True)


async def append(connection: Any, samples: np.ndarray, *, silence_s: float = 0.0,
                 real_time: bool = False) -> None:
    """``real_time``: paced as a microphone sends it (else as fast as it goes)."""
    audio = np.concatenate([samples, np.zeros(int(RATE * silence_s), np.int16)])
    for start in range(0, audio.size, CHUNK):
        chunk = audio[start:start + CHUNK].astype("<i2").tobytes()
        await connection.input_audio_buffer.append(audio=base64.b64encode(chunk).decode())
        if real_time:
            await asyncio.sleep(CHUNK / RATE)


async def until(connection: Any, kind: str, seen: list[Any], timeout_s: float = 90.0) -> Any:
    async with asyncio.timeout(timeout_s):
        while True:
            event = await connection.recv()
            seen.append(event)
            if event.type == kind:
                return event


async def add_user_text(connection: Any, text: str) -> None:
    await connection.conversation.item.create(item={
        "type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]})


@asynccontextmanager
async def realtime_session(base_url: str) -> AsyncIterator[tuple[Any, list[Any]]]:
    """An SDK connection, once its ``session.created`` has come; ``seen`` holds every event
    received so far (``until`` adds to it)."""
    client = AsyncOpenAI(base_url=base_url, api_key="unused-on-loopback")
    async with client.realtime.connect(model="voice-agent") as connection:
        seen: list[Any] = []
        await until(connection, "session.created", seen, 10)
        yield connection, seen


def of(seen: list[Any], kind: str) -> list[Any]:
    return [e for e in seen if e.type == kind]


def audio_bytes(seen: list[Any]) -> int:
    return sum(len(base64.b64decode(e.delta)) for e in of(seen, "response.output_audio.delta"))


async def test_a_spoken_turn_gets_its_transcript_and_a_spoken_reply(base_url: str) -> None:
    async with realtime_session(base_url) as (connection, seen):
        created = of(seen, "session.created")[0]
        assert created.session.audio.input.format.rate == RATE
        await append(connection, speech_24k(), silence_s=1.5, real_time=True)
        done = await until(connection, "response.done", seen)
        assert [e.type for e in seen].index("input_audio_buffer.speech_started") < \
            [e.type for e in seen].index("input_audio_buffer.committed")
        transcript = of(seen, "conversation.item.input_audio_transcription.completed")
        assert transcript and len(transcript[0].transcript.split()) >= 4, transcript
        assert done.response.status == "completed"
        assert audio_bytes(seen) > RATE  # over half a second of reply
        spoken = "".join(e.delta for e in of(seen, "response.output_audio_transcript.delta"))
        assert spoken.strip()
        assert any(e.type == "voice_agent.emotion" for e in seen)
        # While it was spoken, the SDK's own delta events built up what was heard so far.
        live = of(seen, "conversation.item.input_audio_transcription.delta")
        assert live and {e.item_id for e in live} == {transcript[0].item_id}, live
        live_words = normalize("".join(e.delta for e in live))
        final_words = set(normalize(transcript[0].transcript))
        assert sum(w in final_words for w in live_words) >= len(live_words) / 2, live_words


async def test_a_text_turn_and_instructions_by_session_update(base_url: str) -> None:
    async with realtime_session(base_url) as (connection, seen):
        await connection.session.update(session={
            "type": "realtime", "instructions": "You are a helpful assistant. Be brief.",
            "audio": {"input": {"turn_detection": None}}})
        updated = await until(connection, "session.updated", seen, 10)
        assert updated.session.audio.input.turn_detection is None
        await add_user_text(connection, "What is the capital of France?")
        await until(connection, "conversation.item.added", seen, 10)
        await connection.response.create()
        done = await until(connection, "response.done", seen)
        assert done.response.status == "completed"
        assert not of(seen, "conversation.item.input_audio_transcription.completed")
        assert audio_bytes(seen) > 0
        # With detection off, audio is a turn only when committed.
        await append(connection, speech_24k(1))
        await asyncio.sleep(1.0)
        assert not of(seen, "input_audio_buffer.speech_started")
        await connection.input_audio_buffer.commit()
        await until(connection, "input_audio_buffer.committed", seen, 10)
        await connection.response.create()  # the commit's answer is already under way
        second = await until(connection, "response.done", seen)
        assert second.response.status == "completed"
        assert of(seen, "conversation.item.input_audio_transcription.completed")


async def test_cancel_ends_the_response_cancelled(base_url: str) -> None:
    async with realtime_session(base_url) as (connection, seen):
        await add_user_text(connection, "Tell me a long story about a dragon.")
        await connection.response.create()
        await until(connection, "response.output_audio.delta", seen)
        await connection.response.cancel()
        done = await until(connection, "response.done", seen)
        assert done.response.status == "cancelled"
        assert len(of(seen, "response.done")) == 1


async def test_truncate_keeps_what_was_heard(base_url: str) -> None:
    async with realtime_session(base_url) as (connection, seen):
        await add_user_text(connection, "Tell me a long story about a dragon.")
        await connection.response.create()
        first = await until(connection, "response.output_audio.delta", seen)
        await connection.conversation.item.truncate(item_id=first.item_id, content_index=0,
                                                   audio_end_ms=400)
        truncated = await until(connection, "conversation.item.truncated", seen, 10)
        assert (truncated.item_id, truncated.audio_end_ms) == (first.item_id, 400)
        done = await until(connection, "response.done", seen)
        heard = done.response.output[0].content[0].transcript
        sent = "".join(e.delta for e in of(seen, "response.output_audio_transcript.delta"))
        assert done.response.status == "cancelled"
        assert len(heard.split()) < len(sent.split()), (heard, sent)


async def test_bad_events_get_realtime_errors_and_the_session_goes_on(base_url: str) -> None:
    async with realtime_session(base_url) as (connection, seen):
        await connection.send({"type": "input_audio_buffer.append", "audio": "%%%"})
        error = await until(connection, "error", seen, 10)
        assert error.error.code == "bad_audio"
        await connection.response.create()
        error = await until(connection, "error", seen, 10)
        assert error.error.code == "no_input"
        await add_user_text(connection, "Hello there.")
        await connection.response.create()
        assert (await until(connection, "response.done", seen)).response.status == "completed"
