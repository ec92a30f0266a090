"""The emotion benchmark's figures, and the tag on the acted clips of ../shared/audio/emotion
(four speakers, the same neutral words in eight emotions: what the voice alone carries)."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import pytest

from tests.voices import SHARED_AUDIO
from voice_agent.audio.pcm import read_audio
from voice_agent.bench_emotion import Heard, format_report, score_sessions, summarize

EMOTION = SHARED_AUDIO / "emotion"
needs_clips = pytest.mark.skipif(not (EMOTION / "manifest.tsv").is_file(),
                                 reason="../shared/audio/emotion is absent")


def row(acted: str, label: str, arousal: float, turn: int = 5,
        speaker: str = "a") -> dict[str, Any]:
    return {"clip": "c", "speaker": speaker, "acted": acted, "seed": 0, "turn": turn,
            "text": "", "label": label, "arousal": arousal, "confidence": 0.5,
            "decided_by": "voice", "length_scale": 1.1 if label == "angry" else 1.0,
            "analyze_ms": 3.0}


def test_the_figures_are_counted_as_the_issue_defines_them() -> None:
    rows = [row("angry", "angry", 0.9, turn=0), row("happy", "excited", 0.4, turn=1),
            row("calm", "neutral", 0.3, turn=2), row("sad", "neutral", 0.6),
            row("fearful", "anxious", 0.8), row("disgust", "sad", 0.9)]
    summary = summarize(rows)
    # high: angry hit, happy missed, fearful hit (2/3); low: calm hit, sad missed (1/2)
    assert summary["arousal_balanced_accuracy"] == pytest.approx((2 / 3 + 1 / 2) / 2)
    assert summary["arousal_balanced_accuracy_first3"] == pytest.approx((1 / 2 + 1) / 2)
    # four classes: angry->angry, happy->happy (excited), calm->neutral, sad->neutral
    assert summary["four_class_accuracy"] == pytest.approx(3 / 4)
    assert summary["confusion"]["sad"]["neutral"] == 1
    assert summary["neutral_kept_neutral"] == 1.0
    assert summary["reply"]["angry"]["length_scale_mean"] == pytest.approx(1.1)
    assert "calmly" in summary["reply"]["angry"]["wording"]
    report = format_report(summary)
    assert "balanced accuracy" in report and "acted \\ tagged" in report


def acted_clips() -> list[Heard]:
    """The clips as recorded, with the words they say (no frontend, no Whisper)."""
    with (EMOTION / "manifest.tsv").open(encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle, delimiter="\t"))
    return [Heard(Path(r["file"]).stem, r["speaker"], r["label"],
                  read_audio(EMOTION.parent / r["file"])[0], r["text"], "en") for r in rows]


@needs_clips
def test_the_tag_follows_the_voice_on_acted_speech() -> None:
    summary = summarize(score_sessions(acted_clips(), shuffles=5))
    # Measured with the frontend and Whisper (voice-agent bench --emotion, 50 orders):
    # 88% / 81%, four classes 59%, neutral+calm kept 85%. Before the voice decided
    # labels: 80.7% / 71%, and nearly every clip was `neutral`.
    assert summary["arousal_balanced_accuracy"] >= 0.84, summary
    assert summary["arousal_balanced_accuracy_first3"] >= 0.72, summary
    assert summary["four_class_accuracy"] >= 0.45, summary
    assert summary["neutral_kept_neutral"] >= 0.7, summary
    confusion = summary["confusion"]
    assert confusion["angry"]["angry"] > confusion["neutral"]["angry"] + 0.3 * sum(
        confusion["angry"].values())
    assert summary["decided_by"] == {"voice": summary["turns"]}  # the words are neutral
