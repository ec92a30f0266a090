"""``voice-agent bench --echo``: its pieces on the real engines and a real server with the
default config (echo cancellation, a paced reply), one trial of each kind; and the pure
parts (room settings, sounds, onsets, the report)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest

from voice_agent.audio.pcm import PIPELINE_RATE
from voice_agent.audio.room import active_rms
from voice_agent.bench import shared_audio_dir
from voice_agent.bench_echo import (
    DELAYS_MS,
    ECHO_DB,
    RIRS,
    Material,
    Results,
    Sound,
    barge_trial,
    cough,
    false_trial,
    format_report,
    heard_in_echo,
    knock,
    load_material,
    onset_s,
    self_trial,
    setting,
    summarize,
)
from voice_agent.config import load_config
from voice_agent.engines import Engines
from voice_agent.room_client import Heard
from voice_agent.server.protocol import TranscriptEvent, TurnDone
from voice_agent.server.ws import VoiceServer

SHARED = shared_audio_dir()
needs_audio = pytest.mark.skipif(SHARED is None, reason="needs ../shared/audio")


def test_the_settings_cover_every_room_in_36() -> None:
    rooms = {(s.rir, s.delay_ms, s.echo_db) for s in map(setting, range(36))}
    assert len(rooms) == len(RIRS) * len(DELAYS_MS) * len(ECHO_DB)
    assert {setting(i).noise for i in range(4)} == {"noise3", "noise5"}


def test_onset_is_the_first_active_frame() -> None:
    clip = np.zeros(PIPELINE_RATE)
    clip[4000:8000] = 1000 * np.sin(np.arange(4000) / 5)
    assert onset_s(clip) == pytest.approx(4000 / PIPELINE_RATE, abs=0.01)
    assert onset_s(np.zeros(800)) == 0.0


def test_coughs_and_knocks_are_short_sharp_bursts() -> None:
    rng = np.random.default_rng(1)
    for _ in range(10):
        c = cough(rng)
        assert 0.15 <= c.size / PIPELINE_RATE <= 0.5
        assert active_rms(c[:160]) > 0.3 * active_rms(c)  # a sharp attack
        assert abs(c[-160:]).max() < 0.2 * abs(c).max()  # decayed by the end
    k = knock(rng)
    assert k.size / PIPELINE_RATE == pytest.approx(0.41, abs=0.01)


def test_the_report_counts_outcomes() -> None:
    results = Results(
        replies=[{"setting": "x", "rir": "rir1", "delay_ms": 20, "echo_db": 0.0,
                  "in_session": 0, "reply_s": 4.0, "paused": 1, "resumed": 1,
                  "interrupted": 0, "cancelled": 0, "spurious_starts": 1,
                  "timed_out": False}],
        barge=[{"outcome": "interrupted", "latency_ms": 200.0, "reference": "a b c",
                "transcript": "a b", "alone_transcript": "a b c", "status": "cancelled",
                "reply_text": "One. Two.", "heard_text": "One.", "paused_before_onset": 0},
               {"outcome": "reply over", "reference": "a", "status": "ok"}],
        false=[{"kind": "cough", "outcome": "nothing"},
               {"kind": "cough", "outcome": "paused, resumed"}])
    summary = summarize(results)
    assert summary["self_interruptions"]["all"]["paused"] == 1
    assert summary["self_interruptions"]["all"]["spurious_starts"] == 1
    barge = summary["barge_in"]
    assert barge["trials"] == 1 and barge["latency_ms"]["p95"] == 200.0
    assert barge["wer_alone"] == 0.0 and barge["wer_over_reply"] == pytest.approx(1 / 3, abs=1e-3)
    assert barge["heard_prefix_of_reply"] == 1 == barge["heard_shorter"]
    assert summary["false_interruptions"]["cough"]["paused, resumed"] == 1
    report = format_report(summary)
    assert "detection latency" in report and "cough" in report


@pytest.fixture(scope="module")
def material() -> Material:
    assert SHARED is not None
    return load_material(Path(SHARED))


@pytest.fixture(scope="module")
async def default_server(engines: Engines) -> AsyncIterator[VoiceServer]:
    """The real defaults (not ``make_config``'s unpaced reply)."""
    config = load_config(env={}, overrides={"server": {"host": "127.0.0.1", "port": 0},
                                            "llm": {"seed": 1234}})
    async with VoiceServer(engines, config) as running:
        yield running


@pytest.mark.slow
@pytest.mark.timeout(240)
@needs_audio
async def test_one_reply_one_barge_in_one_knock(default_server: VoiceServer,
                                                material: Material) -> None:
    url = f"ws://127.0.0.1:{default_server.port}"
    rng = np.random.default_rng(0)
    lj = [s for s in material.sentences if s[0].path.name.startswith("LJ")]
    # What its own echo and the sounds do is what the bench counts (and tests/test_barge_in.py
    # asserts on a quiet machine); here: each piece runs to a scored outcome.
    (row,) = await self_trial(url, material, setting(0), lj[1:2])
    assert not row["timed_out"] and row["status"] in ("ok", "cancelled"), row
    assert row["transcript"] and row["reply_s"] > 0, row
    assert row["spurious_starts"] + row["starts_in_noise"] >= 0

    barge = await barge_trial(url, material, setting(5), lj[2], lj[1][1], rng)
    # "reply over": the reply ended before the person spoke, twice (a short answer): the
    # bench's own "not a trial", which it leaves out of the barge-in figures.
    assert barge["outcome"] in ("interrupted", "resumed", "not detected", "reply over"), barge
    if barge["outcome"] == "reply over":
        assert barge["reply_s"] < barge["into_reply_s"], barge
    if barge["outcome"] == "interrupted":
        assert barge["status"] == "cancelled"
        assert barge["reply_text"].startswith(barge["heard_text"])
        assert 0 < barge["latency_ms"] < 5000, barge

    thud = Sound("knock/door", "knock", knock(rng), 6.0)
    row = await false_trial(url, material, setting(7), lj[1][1], thud, rng)
    assert row["outcome"] in ("nothing", "paused, resumed", "paused, not resumed",
                              "interrupted", "reply over"), row
    assert row["status"] in ("ok", "cancelled"), row


def test_what_whisper_made_of_the_echo_is_kept_for_the_report() -> None:
    def done(turn: int, status: str, words: str) -> TurnDone:
        return TurnDone(turn_id=turn, status=status, transcript=words, reply_text="",
                        engine="", audio_samples=0)

    heard = [Heard(0.5, TranscriptEvent(turn_id=1, text="What time is it?", asr_ms=90)),
             Heard(3.0, done(2, "backchannel", "Thank you.")),
             Heard(4.0, TranscriptEvent(turn_id=3, text="No, no, no.", asr_ms=80)),
             Heard(4.5, TranscriptEvent(turn_id=4, text="", asr_ms=80)),
             Heard(5.0, done(3, "ok", "No, no, no."))]
    assert heard_in_echo(heard, question_turn=1) == ["No, no, no.", "Thank you."]
