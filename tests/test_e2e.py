"""The whole appliance on the real embedded models, over a real WebSocket on loopback."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from tests.conftest import harvard_clips, speech_clips
from voice_agent.audio.pcm import PIPELINE_RATE, read_audio, resample
from voice_agent.bench import Clip
from voice_agent.client import ClientResult, stream_samples
from voice_agent.engines import Engines
from voice_agent.wer import normalize, pooled_word_error_rate, word_error_rate

pytestmark = pytest.mark.slow


async def talk(clip: Clip, url: str, *, output_rate: int | None = None,
               realtime: bool = False) -> ClientResult:
    samples, rate = read_audio(clip.path, rate=None)
    return await stream_samples(samples, rate, url, output_rate=output_rate,
                                trailing_silence_s=1.0, realtime=realtime, timeout_s=90)


def heard_back(engines: Engines, result: ClientResult) -> str:
    """Transcribe the reply audio with the appliance's own ASR."""
    audio = resample(result.reply_audio, result.output_sample_rate, PIPELINE_RATE)
    return engines.asr.transcribe(audio).text


def word_recall(said: str, heard: str) -> float:
    """Share of the reply's words (of 3+ letters) that were heard back. Numbers and times
    are left out: "9:00am" is spoken and transcribed in too many valid ways."""
    words = [w for w in normalize(said) if w.isalpha() and len(w) >= 3]
    heard_words = set(normalize(heard))
    return sum(w in heard_words for w in words) / max(1, len(words))


def assert_complete_turn(result: ClientResult) -> dict[str, object]:
    assert result.errors == []
    assert len(result.turns) == 1, result.turns
    turn = result.turns[0]
    assert turn["status"] == "ok"
    # Every reply sample the server counted arrived: nothing lost on the wire.
    assert turn["audio_samples"] == result.reply_audio.size
    seqs = [e["seq"] for e in result.events]
    assert seqs == list(range(1, len(seqs) + 1)), "event sequence has gaps"
    assert result.events[-1]["type"] == "session_end"
    return turn


async def test_real_speech_round_trip(server_url: str, engines: Engines) -> None:
    clips = speech_clips()[:4]
    pairs = []
    for clip in clips:
        result = await talk(clip, server_url, output_rate=24000)
        assert_complete_turn(result)
        pairs.append((clip.reference, result.transcript))
        assert word_error_rate(clip.reference, result.transcript) < 0.35, result.transcript
        assert result.reply_audio_seconds > 0.5
        assert len(normalize(result.reply_text)) >= 2
        # The reply audio is real speech saying the reply text.
        back = heard_back(engines, result)
        assert word_recall(result.reply_text, back) >= 0.6, (result.reply_text, back)
    assert pooled_word_error_rate(pairs) < 0.15


async def test_real_time_stream_measures_voice_to_voice(server_url: str) -> None:
    result = await talk(speech_clips()[0], server_url, realtime=True)
    turn = assert_complete_turn(result)
    assert result.voice_to_voice_ms is not None and result.voice_to_voice_ms > 0
    timings = turn["timings_ms"]
    assert isinstance(timings, dict)
    for stage in ("endpoint_wait_ms", "asr_ms", "llm_first_token_ms", "first_sentence_ms",
                  "tts_first_chunk_ms", "first_audio_ms"):
        assert timings[stage] >= 0, stage


@pytest.mark.parametrize("name", ["utt01_8k.wav", "utt01_44k.wav"])
async def test_other_input_rates_are_resampled(server_url: str, name: str) -> None:
    from tests.conftest import FIXTURES

    clip = Clip(FIXTURES / name, "What time does the pharmacy open tomorrow?", "fixtures")
    result = await talk(clip, server_url)
    assert_complete_turn(result)
    assert word_error_rate(clip.reference, result.transcript) < 0.35, result.transcript
    assert result.output_sample_rate == read_audio(clip.path, rate=None)[1]


async def test_two_clients_at_once_get_their_own_answers(server_url: str) -> None:
    first, second = harvard_clips()[0], harvard_clips()[7]
    results = await asyncio.gather(talk(first, server_url), talk(second, server_url))
    for clip, result in zip((first, second), results, strict=True):
        assert_complete_turn(result)
        assert word_error_rate(clip.reference, result.transcript) < 0.35, result.transcript
        assert result.reply_audio_seconds > 0.5
    assert results[0].transcript != results[1].transcript
    assert not np.array_equal(results[0].reply_audio, results[1].reply_audio)
