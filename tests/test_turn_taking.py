"""Turn-taking on real speech and the real engines, over a real socket (issue 8).

Each test streams real human speech in real time (turn-taking is about time) into a
server on port 0 and reads what a client receives. The set's building blocks (a pause put
at a word gap found from Whisper's word timings, the real-time client, the scoring) are
the turn-taking benchmark's own (:mod:`voice_agent.bench_turns`)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from tests.conftest import harvard_clips, make_config
from voice_agent.asr import WhisperAsr
from voice_agent.audio.pcm import last_speech_sample, read_audio
from voice_agent.bench_turns import score_item, stream_item
from voice_agent.client import stream_samples
from voice_agent.config import Config
from voice_agent.engines import Engines
from voice_agent.models import Manifest
from voice_agent.server.ws import VoiceServer
from voice_agent.turn_set import Item, heard_words, insert_pause, pause_point
from voice_agent.wer import normalize

pytestmark = pytest.mark.slow

RATE = 16000


def word_asr(config: Config) -> WhisperAsr:
    manifest = Manifest.load(config.models.manifest, None)
    return WhisperAsr(str(manifest.resolve("asr", "default").path), config.asr,
                      word_timestamps=True)


@pytest.fixture(scope="module")
def paused_items() -> list[Item]:
    """Two Harvard sentences, each with a 0.7 s thinking pause at its middle word gap."""
    asr = word_asr(make_config())
    items = []
    for clip in harvard_clips()[:2]:
        samples, _ = read_audio(clip.path)
        words = heard_words(clip.reference, asr.transcribe(samples).words)
        at, _ = pause_point(samples, words)
        paused = insert_pause(samples, at, 0.7)
        items.append(Item(name=clip.path.stem, kind="paused", samples=paused,
                          speech_end_ms=1000 * last_speech_sample(paused, RATE) / RATE,
                          words=tuple(normalize(" ".join(w.text for w in words))),
                          pause_s=0.7, pause_at_ms=1000 * at / RATE))
    return items


@pytest.fixture
async def url(engines: Engines, request: pytest.FixtureRequest) -> AsyncIterator[str]:
    marker = request.node.get_closest_marker("turn")
    config = make_config(turn=dict(marker.kwargs) if marker else {})
    async with VoiceServer(engines, config) as running:
        yield f"ws://127.0.0.1:{running.port}"


def reply_before(events: list[dict[str, Any]], stream_ms: float) -> list[dict[str, Any]]:
    """What of a reply the client got before ``stream_ms`` of audio had been sent."""
    return [e for e in events if e["sent_ms"] < stream_ms and e["type"] in (
        "transcript", "emotion", "reply_text", "audio", "turn_done")]


@pytest.mark.timeout(120)
async def test_a_mid_sentence_pause_gives_one_turn_with_every_word(
    url: str, paused_items: list[Item]
) -> None:
    for item in paused_items:
        log = await stream_item(item, url)
        row = score_item(item, log)
        assert row["statuses"] == ["ok"], row
        assert not row["lost_words"], row
        assert not row["errors"], row
        # While the person spoke, what was heard so far was streamed (transcript_partial).
        partials = [e["text"] for e in log.events if e["type"] == "transcript_partial"
                    and e["sent_ms"] <= item.speech_end_ms]
        assert partials and all(isinstance(p, str) and p for p in partials), partials


@pytest.mark.timeout(120)
@pytest.mark.turn(complete_silence_ms=1300, incomplete_silence_ms=1300)
async def test_a_speculative_reply_never_reaches_the_client_when_speech_resumes(
    url: str, paused_items: list[Item]
) -> None:
    # Nothing ends a turn before 1.3 s of silence, so the 0.7 s pause is all speculation:
    # the answer is prepared, held, and must be thrown away unseen and unheard.
    item = paused_items[0]
    log = await stream_item(item, url)
    resumed_at = item.pause_at_ms + 1000 * item.pause_s
    assert not reply_before(log.events, resumed_at), reply_before(log.events, resumed_at)
    assert not [e for e in log.events if e["type"] == "speech_resumed"]  # never decided
    done = [e for e in log.events if e["type"] == "turn_done"]
    assert [d["status"] for d in done] == ["ok"]
    assert done[0]["discarded_llm_runs"] >= 1, "the pause was too short to speculate"
    assert len([e for e in log.events if e["type"] == "transcript"]) == 1


@pytest.mark.timeout(120)
async def test_a_complete_sentence_is_answered_without_waiting_the_full_maximum(
    url: str,
) -> None:
    config = make_config()
    clips = harvard_clips()[2:5]
    waits = []
    for clip in clips:
        samples, _ = read_audio(clip.path)
        end = last_speech_sample(samples, RATE)
        item = Item(name=clip.path.stem, kind="complete", samples=samples[:end],
                    speech_end_ms=1000 * end / RATE, words=tuple(normalize(clip.reference)))
        log = await stream_item(item, url)
        done = [e for e in log.events if e["type"] == "turn_done"]
        assert [d["status"] for d in done] == ["ok"], done
        waits.append(done[0]["timings_ms"]["endpoint_wait_ms"])
    # A sentence judged finished ends after turn.complete_silence_ms, and its answer was
    # being prepared meanwhile; an unfinished one would wait turn.incomplete_silence_ms.
    assert min(waits) < config.turn.incomplete_silence_ms - 400, waits


@pytest.mark.timeout(180)
async def test_two_sessions_with_speculation_share_the_model_without_engine_timeout(
    url: str, paused_items: list[Item]
) -> None:
    logs = await asyncio.gather(*(stream_item(item, url) for item in paused_items))
    for item, log in zip(paused_items, logs, strict=True):
        row = score_item(item, log)
        assert "engine_timeout" not in row["errors"], row
        assert row["statuses"] and row["statuses"][-1] == "ok", row
        assert not row["lost_words"], row


@pytest.mark.timeout(120)
@pytest.mark.turn(endpoint="silence", speculate=False, resume_window_ms=3000)
async def test_the_client_drops_a_resumed_turns_first_reply(
    url: str, paused_items: list[Item]
) -> None:
    # 450 ms of silence decides inside the 0.7 s pause; the person resumes before the reply
    # to the fragment can be heard. `voice-agent client` keeps one transcript and one reply.
    item = paused_items[0]
    result = await stream_samples(item.samples, RATE, url, trailing_silence_s=6.0)
    types = [e["type"] for e in result.events]
    assert "speech_resumed" in types, types
    assert [t["status"] for t in result.turns] == ["ok"], result.turns
    done = result.turns[0]
    assert result.transcript == done["transcript"]  # not the fragment and then the whole
    assert result.reply_audio.size == done["audio_samples"], (result.reply_audio.size, done)
    assert result.voice_to_voice_ms is not None and result.voice_to_voice_ms > 0
