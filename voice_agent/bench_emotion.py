"""``voice-agent bench --emotion``: how well the emotion tag follows the voice.

Material: the acted clips of ``../shared/audio/emotion`` (each speaker says two neutral
sentences neutral, calm, happy, sad, angry, fearful, disgusted and surprised; labels in its
``manifest.tsv``). Each clip goes through what a turn goes through: the default frontend
(with a second of room before it, as a live stream has), the embedded Whisper, then
:func:`voice_agent.emotion.analyze`. Then, speaker by speaker, the clips are tagged in a
shuffled order by one :class:`EmotionTracker`, like one conversation; ``shuffles`` orders
per speaker (seeded by shuffle and speaker) make the first turns' figures more than a
handful of clips.

Reported:
- arousal, high (angry, happy, fearful, surprised) against low (neutral, calm, sad):
  balanced accuracy of ``arousal > 0.5``, over all turns and over each speaker's first
  three;
- four classes from the label (neutral+calm, happy, sad, angry; labels mapped by what the
  reply does: neutral/hesitant, happy/excited, sad, angry/anxious): accuracy and the
  confusion matrix, and how often neutral+calm is tagged ``neutral``;
- what the reply does: the tag's speaking-rate factor and wording rule per label heard;
- what decided the labels (words, fillers, voice) and the analysis time per clip.

The clips are licensed for non-commercial use: they are read from ``../shared``, never
copied, and nothing here is fit to them.
"""

from __future__ import annotations

import csv
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from voice_agent.audio.frontend import FRAME_SAMPLES, make_frontend, process_recording
from voice_agent.audio.pcm import Int16Array, read_audio
from voice_agent.bench import percentile, shared_audio_dir
from voice_agent.config import Config
from voice_agent.emotion import WORDING, EmotionTag, EmotionTracker, analyze, reply_length_scale
from voice_agent.engines import load_asr
from voice_agent.models import Manifest

__all__ = ["Heard", "run_emotion_bench", "score_sessions", "summarize"]

HIGH_AROUSAL = frozenset({"angry", "happy", "fearful", "surprised"})
LOW_AROUSAL = frozenset({"neutral", "calm", "sad"})
FOUR_CLASSES = ("neutral", "happy", "sad", "angry")
ACTED_CLASS = {"neutral": "neutral", "calm": "neutral", "happy": "happy", "sad": "sad",
               "angry": "angry"}
"""The four classes of the acted labels (the others are in no class)."""
TAG_CLASS = {"neutral": "neutral", "hesitant": "neutral", "happy": "happy",
             "excited": "happy", "sad": "sad", "angry": "angry", "anxious": "angry"}
"""The class a tag's label falls in: by what the reply does with it."""
LEAD_IN_S = 1.0


@dataclass(frozen=True)
class Heard:
    """One clip as a turn hears it."""

    name: str
    speaker: str
    acted: str
    audio: Int16Array
    """After the frontend."""
    text: str
    language: str


def hear_clips(config: Config, folder: Path, *, limit: int | None = None) -> list[Heard]:
    """Every clip of ``folder/manifest.tsv`` through the frontend and Whisper."""
    asr = load_asr(config, Manifest.load(config.models.manifest,
                                         config.models.directory or None))
    with (folder / "manifest.tsv").open(encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle, delimiter="\t"))[:limit]
    heard = []
    lead = np.zeros(round(LEAD_IN_S * 16000), dtype=np.int16)
    for index, row in enumerate(rows, 1):
        audio, _ = read_audio(folder.parent / row["file"])
        padded = np.concatenate([lead, audio, np.zeros(FRAME_SAMPLES, np.int16)])
        cleaned = process_recording(make_frontend(config.frontend), padded)
        cleaned = cleaned[lead.size: lead.size + audio.size]
        transcript = asr.transcribe(cleaned)
        heard.append(Heard(Path(row["file"]).stem, row["speaker"], row["label"], cleaned,
                           transcript.text, transcript.language))
        if index % 20 == 0 or index == len(rows):
            print(f"  heard {index}/{len(rows)}", file=sys.stderr, flush=True)
    return heard


def score_sessions(clips: list[Heard], *, shuffles: int) -> list[dict[str, Any]]:
    """Each speaker's clips through one tracker, in ``shuffles`` seeded orders: one row per
    tagged turn."""
    rows: list[dict[str, Any]] = []
    speakers = sorted({c.speaker for c in clips})
    for seed in range(shuffles):
        for number, speaker in enumerate(speakers):
            own = [c for c in clips if c.speaker == speaker]
            order = np.random.default_rng([seed, number]).permutation(len(own))
            tracker = EmotionTracker()
            for turn, index in enumerate(order):
                clip = own[index]
                started = time.perf_counter()
                tag = analyze(clip.audio, clip.text, language=clip.language, tracker=tracker)
                rows.append(_row(clip, tag, turn, seed, time.perf_counter() - started))
    return rows


def _row(clip: Heard, tag: EmotionTag, turn: int, seed: int, seconds: float) -> dict[str, Any]:
    return {"clip": clip.name, "speaker": clip.speaker, "acted": clip.acted, "seed": seed,
            "turn": turn, "text": clip.text, "label": tag.label, "arousal": tag.arousal,
            "confidence": tag.confidence, "decided_by": tag.decided_by,
            "length_scale": round(reply_length_scale(tag), 3), "analyze_ms": seconds * 1000}


def _balanced_accuracy(rows: list[dict[str, Any]]) -> float:
    high = [r["arousal"] > 0.5 for r in rows if r["acted"] in HIGH_AROUSAL]
    low = [r["arousal"] <= 0.5 for r in rows if r["acted"] in LOW_AROUSAL]
    if not high or not low:
        return float("nan")
    return float(sum(high) / len(high) + sum(low) / len(low)) / 2


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The figures of the module docstring."""
    first = [r for r in rows if r["turn"] < 3]
    in_class = [r for r in rows if r["acted"] in ACTED_CLASS]
    confusion = {a: dict.fromkeys(FOUR_CLASSES, 0) for a in FOUR_CLASSES}
    for r in in_class:
        confusion[ACTED_CLASS[r["acted"]]][TAG_CLASS.get(r["label"], "neutral")] += 1
    hits = sum(confusion[c][c] for c in FOUR_CLASSES)
    neutral_row = confusion["neutral"]
    reply: dict[str, dict[str, Any]] = {}
    for label in sorted({r["label"] for r in rows}):
        scales = [r["length_scale"] for r in rows if r["label"] == label]
        reply[label] = {"turns": len(scales), "length_scale_mean": float(np.mean(scales)),
                        "wording": WORDING.get(label, "(none)")}
    speakers = sorted({r["speaker"] for r in rows})
    times = [r["analyze_ms"] for r in rows]
    return {
        "turns": len(rows),
        "arousal_balanced_accuracy": _balanced_accuracy(rows),
        "arousal_balanced_accuracy_first3": _balanced_accuracy(first),
        "arousal_by_speaker": {s: {
            "all": _balanced_accuracy([r for r in rows if r["speaker"] == s]),
            "first3": _balanced_accuracy([r for r in first if r["speaker"] == s])}
            for s in speakers},
        "four_class_accuracy": hits / max(1, len(in_class)),
        "confusion": confusion,
        "neutral_kept_neutral": neutral_row["neutral"] / max(1, sum(neutral_row.values())),
        "reply": reply,
        "decided_by": {d: sum(r["decided_by"] == d for r in rows)
                       for d in sorted({r["decided_by"] for r in rows})},
        "analyze_ms": {"p50": percentile(times, 0.5), "p95": percentile(times, 0.95)},
    }


def format_report(summary: dict[str, Any]) -> str:
    lines = [f"turns tagged: {summary['turns']}",
             f"arousal balanced accuracy: {summary['arousal_balanced_accuracy']:.1%} overall,"
             f" {summary['arousal_balanced_accuracy_first3']:.1%} over each speaker's first 3",
             *(f"  {s}: {v['all']:.1%} / {v['first3']:.1%}"
               for s, v in summary["arousal_by_speaker"].items()),
             f"four classes: {summary['four_class_accuracy']:.1%} accuracy;"
             f" neutral+calm tagged neutral {summary['neutral_kept_neutral']:.1%}",
             "  acted \\ tagged " + " ".join(f"{c:>8}" for c in FOUR_CLASSES)]
    for acted, row in summary["confusion"].items():
        total = max(1, sum(row.values()))
        lines.append(f"  {acted:>14} " + " ".join(f"{row[c] / total:>8.0%}" for c in FOUR_CLASSES))
    lines.append("the reply, per label heard: turns, mean speaking-rate factor, wording")
    lines += [f"  {label:>9} {v['turns']:>5} {v['length_scale_mean']:>6.3f}  {v['wording']}"
              for label, v in summary["reply"].items()]
    decided = ", ".join(f"{k} {v}" for k, v in summary["decided_by"].items())
    lines.append(f"decided by: {decided}; analysis p50 {summary['analyze_ms']['p50']:.1f} ms,"
                 f" p95 {summary['analyze_ms']['p95']:.1f} ms")
    return "\n".join(lines)


async def run_emotion_bench(config: Config, *, quick: bool = False, shuffles: int = 50,
                            json_path: str | None = None) -> int:
    """Run the measurement, print it, write JSON; 2 without ``../shared/audio/emotion``."""
    shared = shared_audio_dir()
    folder = shared / "emotion" if shared is not None else None
    if folder is None or not (folder / "manifest.tsv").is_file():
        print("needs ../shared/audio/emotion beside the checkout", file=sys.stderr)
        return 2
    print("hearing the clips (frontend, Whisper)...", file=sys.stderr, flush=True)
    clips = hear_clips(config, folder, limit=60 if quick else None)
    rows = score_sessions(clips, shuffles=3 if quick else shuffles)
    summary = summarize(rows)
    print(format_report(summary))
    if json_path:
        Path(json_path).write_text(json.dumps({"summary": summary, "turns": rows}, indent=1))
    return 0
