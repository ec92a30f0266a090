"""The turn-taking bench's building blocks: the set built from real speech (the pause really
sits in a word gap), and the metrics computed from hand-made event logs. Not its numbers."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from tests.conftest import make_config
from voice_agent.asr import Transcriber, Word
from voice_agent.audio.pcm import read_audio, rms_dbfs
from voice_agent.bench import shared_audio_dir
from voice_agent.bench_turns import (
    ItemLog,
    _all_ended,
    baseline_config,
    format_table,
    lost_words,
    score_item,
    summarize,
)
from voice_agent.turn_set import (
    RATE,
    SNAP_MS,
    Boundary,
    Item,
    build_set,
    heard_words,
    insert_pause,
    narration_boundaries,
    pause_point,
    sources,
)
from voice_agent.wer import normalize

AUDIO = shared_audio_dir()
needs_audio = pytest.mark.skipif(AUDIO is None, reason="no ../shared/audio")


@pytest.fixture(scope="module")
def word_asr() -> Iterator[Transcriber]:
    from voice_agent.bench_turns import _word_asr

    yield _word_asr(make_config())


@pytest.fixture(scope="module")
def quick_set(word_asr: Transcriber) -> list[Item]:
    assert AUDIO is not None
    return build_set(word_asr, AUDIO, quick=True)


# --- the set, on real speech -----------------------------------------------------------


@needs_audio
@pytest.mark.timeout(120)
def test_quick_set_pauses_each_sentence_at_one_point(quick_set: list[Item]) -> None:
    complete = {i.name: i for i in quick_set if i.kind == "complete"}
    paused = [i for i in quick_set if i.kind == "paused"]
    assert len(complete) == 2 and len(paused) == 4
    for item in paused:
        whole = complete[item.name.split("+")[0]]
        assert item.words == whole.words and len(item.words) >= 6
        assert item.samples.size == whole.samples.size + round(item.pause_s * RATE)
        at = round(item.pause_at_ms * RATE / 1000)
        # Digital silence exactly where it was put, the speech around it untouched but
        # for the fades, and the end of speech moved by the pause.
        assert not item.samples[at : at + round(item.pause_s * RATE)].any()
        assert np.array_equal(item.samples[: at - 80], whole.samples[: at - 80])
        assert item.speech_end_ms == pytest.approx(whole.speech_end_ms + item.pause_s * 1000)
        assert 0.25 < item.pause_at_ms / whole.speech_end_ms < 0.75  # near the middle


@needs_audio
@pytest.mark.timeout(120)
def test_the_pause_is_in_a_word_gap(quick_set: list[Item], word_asr: Transcriber) -> None:
    """The pause sits where the original clip is quiet, next to one of Whisper's word
    boundaries, and Whisper hears the same words with it: it did not cut a word in two.
    (Whisper's timings on the paused clip cannot show the gap: tiny.en stretches the next
    word over the silence.)"""
    assert AUDIO is not None
    harvard = {f"speech/{s.path.stem}": s for s in sources(AUDIO)[0]}
    for item in (i for i in quick_set if i.kind == "paused" and i.pause_s == 1.0):
        source = harvard[item.name.split("+")[0]]
        original, _ = read_audio(source.path, rate=RATE)
        at = round(item.pause_at_ms * RATE / 1000)
        loudest = max(rms_dbfs(original[s : s + 160]) for s in range(0, original.size, 160))
        assert rms_dbfs(original[at - 80 : at + 80]) <= loudest - 18
        ends = [w.end_s for w in word_asr.transcribe(original).words[:-1]]
        assert min(abs(e - at / RATE) for e in ends) <= SNAP_MS / 1000 + 0.05
        words = heard_words(source.reference, word_asr.transcribe(item.samples).words)
        assert tuple(t for w in words for t in normalize(w.text)) == item.words


def test_pause_point_takes_a_real_gap_over_the_middle() -> None:
    """Two run-together words at the middle, a silent gap a little off it: the gap wins."""
    tone = (8000 * np.sin(np.arange(RATE) * 2 * np.pi * 220 / RATE)).astype(np.int16)
    samples = tone.copy()
    samples[10560:11840] = 0  # a real gap at 0.66-0.74 s
    words = [Word("a", 0.0, 0.25), Word("b", 0.25, 0.5), Word("c", 0.5, 0.7),
             Word("d", 0.7, 1.0)]
    at, left = pause_point(samples, words)
    assert 10560 <= at <= 11840 and left == 2
    at, left = pause_point(tone, words)  # no gap anywhere: still one of the central ones
    assert 0.25 * RATE - SNAP_MS * 16 <= at <= 0.7 * RATE + SNAP_MS * 16


@needs_audio
@pytest.mark.timeout(120)
def test_narration_sentence_ends_come_from_the_reference(word_asr: Transcriber) -> None:
    assert AUDIO is not None
    narration = sources(AUDIO)[2]
    assert narration is not None
    samples, _ = read_audio(narration.path, rate=RATE)
    bounds = narration_boundaries(narration.reference, word_asr.transcribe(samples).words)
    ends = [b for b in bounds[:-1] if b.sentence_end]
    assert len(ends) == narration.reference.count(".") - 1
    # The speaker pauses at sentence ends, hardly inside sentences.
    assert min(b.gap_s for b in ends) >= 0.5
    assert max(b.gap_s for b in bounds if not b.sentence_end) < 0.5


def test_heard_words_drop_what_the_reference_does_not_have() -> None:
    words = [Word("What", 0.0, 0.3), Word("joy", 0.3, 0.6), Word("living.", 0.6, 1.0),
             Word("Thank", 1.0, 1.0), Word("you.", 1.0, 1.0)]
    kept = heard_words("What joy there is in living.", words)
    assert [w.text for w in kept] == ["What", "joy", "living."]


def test_insert_pause_fades_without_a_click() -> None:
    loud = np.full(1600, 10000, np.int16)
    out = insert_pause(loud, 800, 0.5)
    assert out.size == 1600 + 8000 and not out[800:8800].any()
    assert abs(int(out[799])) < 200 and abs(int(out[8800])) < 200
    assert out[0] == 10000 and out[-1] == 10000


# --- the metrics, on hand-made logs ----------------------------------------------------

WORDS = ("the", "child", "almost", "hurt", "the", "small", "dog")


def _item(kind: str = "paused", boundaries: tuple[Boundary, ...] = ()) -> Item:
    return Item("spk1_snt1+0.7s", kind, np.zeros(0, np.int16), 3500.0, WORDS,
                pause_s=0.7, pause_at_ms=1300.0, boundaries=boundaries)


def _log(*events: tuple[float, str, dict[str, Any]], speech_end_t: float = 3.5) -> ItemLog:
    """Events as (stream ms when they arrived, type, fields); wall clock = stream time."""
    return ItemLog([{"type": kind, "sent_ms": ms, "t": ms / 1000, **fields}
                    for ms, kind, fields in events], speech_end_t=speech_end_t)


def _done(turn: int, status: str, transcript: str, **extra: Any) -> dict[str, Any]:
    return {"turn_id": turn, "status": status, "transcript": transcript, **extra}


def test_todays_split_turn_is_a_cut_off_and_loses_the_first_half() -> None:
    """The issue's failure: the pause ends a turn, resumed speech cancels it unheard, and
    only the second half reaches the model."""
    row = score_item(_item(), _log(
        (300, "speech_started", {"turn_id": 1}),
        (1760, "speech_stopped", {"turn_id": 1, "speech_end_ms": 1300}),
        (1900, "transcript", {"turn_id": 1, "text": "The child almost"}),
        (2100, "speech_started", {"turn_id": 2}),
        (2120, "turn_done", _done(1, "cancelled", "The child almost")),
        (3960, "speech_stopped", {"turn_id": 2, "speech_end_ms": 3500}),
        (4300, "reply_text", {"turn_id": 2, "delta": "Oh no."}),
        (4400, "audio", {"turn_id": 2, "samples": 320}),
        (4900, "turn_done", _done(2, "ok", "hurt the small dog.")),
    ))
    assert row["cut_off"] is True and row["cut_off_turns"] == [1]
    assert row["lost_words"] == ["the", "child", "almost"]
    assert row["voice_to_voice_ms"] == pytest.approx(900.0)
    assert row["resumed"] == 0 and row["answered"] is True and row["decisions"] == 2


def test_a_resumed_turn_is_no_cut_off_and_loses_nothing() -> None:
    row = score_item(_item(), _log(
        (300, "speech_started", {"turn_id": 1}),
        (1760, "speech_stopped", {"turn_id": 1, "speech_end_ms": 1300}),
        (2050, "speech_resumed", {"turn_id": 1, "audio_ms": 2000}),
        (3850, "speech_stopped", {"turn_id": 1, "speech_end_ms": 3500}),
        (3900, "reply_text", {"turn_id": 1, "delta": "Oh no."}),
        (3920, "audio", {"turn_id": 1, "samples": 320}),
        (4500, "turn_done", _done(1, "ok", "The child almost hurt the small dog.",
                                  discarded_llm_runs=1)),
    ))
    assert row["cut_off"] is False and row["resumed"] == 1 and row["lost_words"] == []
    assert row["voice_to_voice_ms"] == pytest.approx(420.0)
    assert row["committed"] == 1 and row["discarded_llm_runs"] == 1


def test_a_reply_heard_inside_the_utterance_is_a_cut_off_but_its_words_were_asked() -> None:
    row = score_item(_item(), _log(
        (1760, "speech_stopped", {"turn_id": 1, "speech_end_ms": 1300}),
        (1950, "reply_text", {"turn_id": 1, "delta": "Who?"}),
        (1960, "audio", {"turn_id": 1, "samples": 320}),
        (2400, "turn_done", _done(1, "cancelled", "The child almost", audio_samples=320)),
        (4500, "turn_done", _done(2, "ok", "hurt the small dog")),
    ))
    assert row["cut_off"] is True and row["lost_words"] == []


def test_an_empty_turn_or_a_reply_after_the_end_is_no_cut_off() -> None:
    row = score_item(_item(), _log(
        (400, "turn_done", _done(1, "empty", "")),
        (3600, "audio", {"turn_id": 2, "samples": 320}),
        (4000, "turn_done", _done(2, "ok", "The child almost hurt the smell dog")),
    ))
    assert row["cut_off"] is False and row["lost_words"] == []  # heard differently: not lost
    assert row["statuses"] == ["empty", "ok"]


def test_an_unanswered_utterance_loses_every_word() -> None:
    row = score_item(_item(), _log((5000, "turn_done", _done(1, "error", "The child"))))
    assert row["lost_words"] == list(WORDS) and row["answered"] is False
    assert row["voice_to_voice_ms"] is None


def test_lost_words_counts_deletions_and_shortened_spans() -> None:
    assert lost_words(["a", "b", "c", "d"], ["a", "x", "d"]) == ["c"]
    assert lost_words(["a", "b"], ["a", "b", "b"]) == []
    assert lost_words(["a", "b", "c"], []) == ["a", "b", "c"]


def test_narration_turns_are_placed_at_the_word_they_followed() -> None:
    bounds = (Boundary(500, 0.1, False, "Hello"), Boundary(900, 1.0, True, "there."),
              Boundary(1400, 0.4, False, "ends,"), Boundary(2000, 0.0, True, "now."))
    row = score_item(_item("narration", bounds), _log(
        (1500, "speech_stopped", {"turn_id": 1, "speech_end_ms": 950}),
        (1700, "audio", {"turn_id": 1, "samples": 320}),
        (2000, "speech_stopped", {"turn_id": 2, "speech_end_ms": 1420}),
        (2300, "turn_done", _done(2, "cancelled", "ends")),
        (2500, "turn_done", _done(1, "cancelled", "Hello there", audio_samples=320)),
        (2600, "speech_stopped", {"turn_id": 3, "speech_end_ms": 2010}),
        (3000, "turn_done", _done(3, "ok", "now")),
    ))
    assert row["sentence_end_turns"] == 1 and row["final_turns"] == 1
    assert row["cut_inside_sentence"] == ["ends,"] and row["sentence_ends"] == 1


def _row(kind: str, pause: float, cut: bool, v2v: float | None, lost: int = 0,
         resumed: int = 0) -> dict[str, Any]:
    return {"item": "x", "kind": kind, "pause_s": pause, "cut_off": cut, "resumed": resumed,
            "voice_to_voice_ms": v2v, "lost_words": ["w"] * lost, "words": 7, "committed": 1,
            "discarded_llm_runs": resumed, "answered": True, "errors": [], "timed_out": False}


def test_summary_and_side_by_side_table() -> None:
    base = summarize([_row("complete", 0, False, 1200), _row("complete", 0, False, 1400),
                      _row("paused", 0.5, True, 1300, lost=3), _row("paused", 1.5, True, 1500)])
    new = summarize([_row("complete", 0, False, 600), _row("complete", 0, False, 700),
                     _row("paused", 0.5, False, 650, resumed=1),
                     _row("paused", 1.5, False, 900)])
    assert base["cut_off_short"] == {"cut_off": 1, "items": 1}
    assert base["cut_off_by_pause"]["1.5"] == {"cut_off": 1, "items": 1, "resumed": 0}
    assert base["words_lost"]["paused"] == {"lost": 3, "words": 14}
    assert new["v2v_complete"] == {"n": 2, "p50": 650.0, "p95": 695.0}
    assert new["discarded_per_committed"] == 0.25 and new["resumed"] == 1
    table = format_table(("fixed 450 ms", "smart"), base, new)
    assert "0.50x" in table  # p50 650 against 1300
    assert "1/1 (100%)" in table and "0/1 (0%)" in table


def test_baseline_is_todays_fixed_silence_and_leaves_the_config_alone() -> None:
    config = make_config()
    base = baseline_config(config)
    assert (base.turn.endpoint, base.turn.speculate, base.turn.resume_window_ms) == (
        "silence", False, 0)
    assert base.vad.end_silence_ms == config.vad.end_silence_ms
    assert config.turn.endpoint == "smart" and config.turn.speculate


def test_a_turn_that_never_ends_is_reported_not_waited_for() -> None:
    """Seen on a real clip: a turn started, a second one started and ended, the first never
    got its turn_done. The item is over (not a 60 s wait) and the fault is counted."""
    log = _log((520, "speech_started", {"turn_id": 1}), (1160, "speech_started", {"turn_id": 2}),
               (4020, "turn_done", _done(2, "ok", "The child almost hurt the small dog.")))
    assert _all_ended(log.events, 3500.0)
    assert not _all_ended(log.events[:2], 3500.0)
    assert not _all_ended(log.events, 4500.0)  # the utterance is not over yet
    assert score_item(_item(), log)["unended_turns"] == [1]
    log.events.append({"type": "speech_started", "turn_id": 3, "sent_ms": 4100, "t": 4.1})
    assert not _all_ended(log.events, 3500.0)  # a later turn is still open
