"""How well "finished?" is judged at a pause: Smart Turn v3, the text check, and both.

Built from real speech in ``../shared/audio``:

- positives: whole utterances (Harvard sentences ``speech/spk*``, LJ Speech clips whose
  reference ends a sentence, RAVDESS ``emotion/`` clips, the narration split at its pauses
  where the pause ends a sentence), trimmed to the last speech, then 0.2 s of silence;
- negatives: the same utterances cut at the word boundary nearest their middle (Whisper word
  timings), then 0.2 s of silence; plus the natural ones: narration pieces that end at a
  mid-sentence pause, LJ Speech clips whose reference ends on a comma.

Each sample is judged by Smart Turn v3 on its audio, by ``text_complete_probability`` on the
transcript the server would have at that pause (``WhisperAsr.transcribe`` of the same audio),
and by ``combined_probability`` (and a plain mean, for comparison). For each it prints
accuracy, the false cut-off rate (negatives judged complete: the person would be cut off),
the miss rate (positives judged incomplete: the turn waits for the maximum) at 0.5 and at the
threshold with the best accuracy whose false cut-off rate stays within 5%, and ms per call.
Usage::

    .venv/bin/python benchmarks/turn_end.py [--emotion-clips 24] [--silence-s 0.2] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from voice_agent.asr import Transcript, WhisperAsr
from voice_agent.audio.pcm import PIPELINE_RATE, Int16Array, last_speech_sample, read_audio
from voice_agent.audio.turn_end import (
    SmartTurnV3,
    combined_probability,
    text_complete_probability,
)
from voice_agent.bench import shared_audio_dir
from voice_agent.config import load_config
from voice_agent.models import Manifest

SENTENCE_END = re.compile(r"[.?!][\"')\]]*$")
MAX_FALSE_CUTOFF = 0.05
THRESHOLDS = (0.5, 0.7, 0.9)


@dataclass
class Sample:
    source: str
    name: str
    complete: bool
    transcript: str = ""
    smart: float = 0.0
    text: float = 0.0
    smart_ms: float = 0.0


@dataclass
class Utterance:
    source: str
    name: str
    audio: Int16Array
    complete: bool


def _trim(audio: Int16Array) -> Int16Array:
    return audio[: last_speech_sample(audio, PIPELINE_RATE)]


def _with_silence(audio: Int16Array, silence_s: float) -> Int16Array:
    return np.concatenate([audio, np.zeros(int(silence_s * PIPELINE_RATE), np.int16)])


def _manifest_refs(shared: Path) -> dict[str, str]:
    refs: dict[str, str] = {}
    for line in (shared / "manifest.tsv").read_text(encoding="utf-8").splitlines()[1:]:
        cols = line.split("\t")
        if len(cols) >= 4:
            refs[cols[0]] = cols[3]
    return refs


def utterances(shared: Path, timed: WhisperAsr, emotion_clips: int) -> list[Utterance]:
    refs = _manifest_refs(shared)
    out: list[Utterance] = []
    for path in sorted((shared / "speech").glob("*.wav")):
        audio, _ = read_audio(path)
        ref = refs.get(f"speech/{path.name}", "")
        source = "harvard" if path.name.startswith("spk") else "ljspeech"
        out.append(Utterance(source, path.stem, _trim(audio), bool(SENTENCE_END.search(ref))))
    emotion = sorted((shared / "emotion").glob("*.flac"))
    step = max(1, len(emotion) // max(1, emotion_clips))
    for path in emotion[::step][:emotion_clips]:
        audio, _ = read_audio(path)
        out.append(Utterance("emotion", path.stem, _trim(audio), True))
    narration = shared / "narration" / "asr-reference.wav"
    if narration.is_file():
        out.extend(_narration_pieces(narration, timed))
    return out


def _narration_pieces(path: Path, timed: WhisperAsr, min_gap_s: float = 0.25) -> list[Utterance]:
    """The narration split at its pauses; a piece is complete when its last word ends a
    sentence in Whisper's punctuation (pseudo-labels: the reference is Whisper's too)."""
    audio, _ = read_audio(path)
    words = timed.transcribe(audio).words
    pieces: list[Utterance] = []
    start = 0
    for i, word in enumerate(words):
        last = i == len(words) - 1
        if not last and words[i + 1].start_s - word.end_s < min_gap_s:
            continue
        first_s = max(0.0, words[start].start_s - 0.1)
        piece = audio[int(first_s * PIPELINE_RATE) : int(word.end_s * PIPELINE_RATE)]
        if len(piece) > PIPELINE_RATE // 2:
            pieces.append(Utterance("narration", f"narration-{len(pieces)}", piece,
                                    bool(SENTENCE_END.search(word.text))))
        start = i + 1
    return pieces


def cut_in_middle(utt: Utterance, timed: WhisperAsr) -> Utterance | None:
    """The utterance cut at the word boundary nearest its middle (between two words)."""
    words = timed.transcribe(utt.audio).words
    if len(words) < 3:
        return None
    k = len(words) // 2
    cut_s = (words[k - 1].end_s + words[k].start_s) / 2
    return Utterance(utt.source, f"{utt.name}@{k}w", utt.audio[: int(cut_s * PIPELINE_RATE)],
                     False)


def judge(
    utts: Sequence[Utterance], smart: SmartTurnV3, asr: WhisperAsr, silence_s: float
) -> list[Sample]:
    samples = []
    for utt in utts:
        audio = _with_silence(utt.audio, silence_s)
        started = time.perf_counter()
        p_smart = smart.complete_probability(audio)
        ms = (time.perf_counter() - started) * 1000
        transcript: Transcript = asr.transcribe(audio)
        samples.append(Sample(utt.source, utt.name, utt.complete, transcript.text, p_smart,
                              text_complete_probability(transcript.text), ms))
    return samples


METHODS: dict[str, Callable[[Sample], float]] = {
    "smart-turn-v3": lambda s: s.smart,
    "text": lambda s: s.text,
    "combined (text veto)": lambda s: combined_probability(s.smart, s.text),
    "mean": lambda s: (s.smart + s.text) / 2,
}


def rates(
    samples: Sequence[Sample], score: Callable[[Sample], float], t: float
) -> dict[str, float]:
    pos = [score(s) >= t for s in samples if s.complete]
    neg = [score(s) >= t for s in samples if not s.complete]
    correct = sum(pos) + sum(not x for x in neg)
    return {
        "threshold": t,
        "accuracy": correct / max(1, len(samples)),
        "false_cutoff": sum(neg) / max(1, len(neg)),
        "miss": sum(not x for x in pos) / max(1, len(pos)),
    }


def best_threshold(samples: Sequence[Sample], score: Callable[[Sample], float]) -> dict[str, float]:
    grid = [round(t, 2) for t in np.arange(0.05, 1.0, 0.05)]
    allowed = [r for r in (rates(samples, score, t) for t in grid)
               if r["false_cutoff"] <= MAX_FALSE_CUTOFF]
    if not allowed:
        return rates(samples, score, 0.95)
    return max(allowed, key=lambda r: (r["accuracy"], -r["threshold"]))


def table(samples: Sequence[Sample], title: str, ms: dict[str, float]) -> dict[str, Any]:
    n_pos = sum(s.complete for s in samples)
    print(f"\n{title}: {len(samples)} samples, {n_pos} complete, {len(samples) - n_pos} cut "
          "mid-sentence")
    print("\n| method | threshold | accuracy | false cut-off | miss | ms/call |")
    print("| --- | --- | --- | --- | --- | --- |")
    out: dict[str, Any] = {}
    for name, score in METHODS.items():
        rows = {f"{t:.1f}": rates(samples, score, t) for t in THRESHOLDS}
        rows["best"] = best_threshold(samples, score)
        for label, r in rows.items():
            tag = label if label != "best" else f"{r['threshold']:.2f} (best, ≤5% cut-off)"
            print(f"| {name} | {tag} | {r['accuracy']:.1%} | {r['false_cutoff']:.1%} | "
                  f"{r['miss']:.1%} | {ms[name]:.2f} |")
        out[name] = rows
    return out


def report(samples: Sequence[Sample], text_ms: float) -> dict[str, Any]:
    print(f"\nby source: {', '.join(f'{k} {v}' for k, v in _by_source(samples).items())}")
    smart_ms = float(np.median([s.smart_ms for s in samples]))
    smart_p95 = float(np.percentile([s.smart_ms for s in samples], 95))
    ms = {name: text_ms if name == "text" else smart_ms + text_ms for name in METHODS}
    out: dict[str, Any] = {"all": table(samples, "All", ms)}
    # RAVDESS says one of two sentences; cut in the middle they are whole clauses ("Kids are
    # talking"), negatives only by label. The rest is the fairer set.
    rest = [s for s in samples if s.source != "emotion"]
    out["without_emotion"] = table(rest, "Without emotion/ (its cuts are whole clauses)", ms)
    print(f"\nSmart Turn ms per call: median {smart_ms:.0f}, p95 {smart_p95:.0f} "
          f"(1 intra-op thread); text check: {text_ms * 1000:.0f} µs")
    print("\nPer source at 0.5 (accuracy):")
    for source in _by_source(samples):
        sub = [s for s in samples if s.source == source]
        cells = ", ".join(f"{n} {rates(sub, f, 0.5)['accuracy']:.0%}" for n, f in METHODS.items())
        print(f"  {source}: {cells}")
    out["smart_ms_median"] = smart_ms
    out["smart_ms_p95"] = smart_p95
    out["text_ms"] = text_ms
    return out


def _by_source(samples: Sequence[Sample]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for s in samples:
        counts[s.source] = counts.get(s.source, 0) + 1
    return counts


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--emotion-clips", type=int, default=24)
    parser.add_argument("--silence-s", type=float, default=0.2)
    parser.add_argument("--json", help="write every sample and the table here")
    parser.add_argument("-v", "--verbose", action="store_true", help="print every sample")
    args = parser.parse_args(argv)
    shared = shared_audio_dir()
    if shared is None:
        print("turn_end: ../shared/audio not found", file=sys.stderr)
        return 2
    config = load_config(env={})
    manifest = Manifest.load()
    asr_path = manifest.resolve("asr", config.asr.model).path
    timed = WhisperAsr(asr_path, config.asr, word_timestamps=True)
    asr = WhisperAsr(asr_path, config.asr)
    smart = SmartTurnV3(manifest.resolve("turn", "default").path, threads=1)
    smart.complete_probability(np.zeros(PIPELINE_RATE, np.int16))  # first call warms up
    utts = utterances(shared, timed, args.emotion_clips)
    cuts = [c for u in utts if u.complete and (c := cut_in_middle(u, timed)) is not None]
    samples = judge([*utts, *cuts], smart, asr, args.silence_s)
    started = time.perf_counter()
    for s in samples:
        text_complete_probability(s.transcript)
    text_ms = (time.perf_counter() - started) * 1000 / max(1, len(samples))
    if args.verbose:
        for s in samples:
            print(f"{'+' if s.complete else '-'} {s.source:9} smart {s.smart:.2f} "
                  f"text {s.text:.2f}  {s.name}: {s.transcript}")
    table = report(samples, text_ms)
    if args.json:
        Path(args.json).write_text(json.dumps(
            {"table": table, "samples": [asdict(s) for s in samples]}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
