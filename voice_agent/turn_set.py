"""The turn-taking benchmark's set (``voice-agent bench --turn-taking``), built at run time
from the real speech in ``../shared/audio`` (never copied into the repository).

- *complete*: the Harvard sentences and the neutral emotion clips as spoken;
- *paused*: each Harvard sentence with a thinking pause inserted at a word gap near its
  middle (``pause_point``: Whisper's word timings snapped to the quietest 10 ms);
- *narration*: the 52 s narration as one person talking, with its word ends marked as
  sentence ends or not (``narration_boundaries``).

The inserted pause is digital silence, faded out and in over ``FADE_MS`` (see
``voice_agent.bench_turns`` for why).
"""

from __future__ import annotations

import csv
import difflib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt

from voice_agent.asr import Transcriber, Word
from voice_agent.audio.pcm import Int16Array, last_speech_sample, read_audio
from voice_agent.wer import normalize

RATE = 16000
PAUSES_S = (0.3, 0.5, 0.7, 1.0, 1.5)
QUICK_PAUSES_S = (0.5, 1.0)
SNAP_MS = 100
"""How far from Whisper's word boundary the quietest 10 ms is looked for."""
MIN_WORD_S = 0.05
"""Whisper words shorter than this are hallucinations in the padding, not speech."""
GAP_DB = 25.0
"""A word gap dips at least this far below the clip's loudest 10 ms."""
FADE_MS = 5
NARRATION = "narration/asr-reference.wav"
NEUTRAL_EMOTION = "emotion/03-01-01-01-0?-01-*.flac"
"""RAVDESS neutral clips, first repetition ("Kids are talking…", "Dogs are sitting…")."""
NEUTRAL_REFERENCES = {"01": "Kids are talking by the door.", "02": "Dogs are sitting by the door."}
SENTENCE_END = (".", "?", "!")



@dataclass(frozen=True)
class Boundary:
    """The end of a word in a long recording, and what follows it."""

    end_ms: float
    gap_s: float
    """Time to the next word (0 after the last one)."""
    sentence_end: bool
    word: str


@dataclass(frozen=True)
class Item:
    name: str
    kind: str
    """``complete``, ``paused`` or ``narration``."""
    samples: Int16Array = field(repr=False)
    speech_end_ms: float
    """Stream time just after the last speech sample."""
    words: tuple[str, ...]
    """The words the model must be asked (normalized)."""
    pause_s: float = 0.0
    pause_at_ms: float = 0.0
    boundaries: tuple[Boundary, ...] = ()


def heard_words(reference: str, words: Sequence[Word]) -> list[Word]:
    """Whisper's words that match the reference, in order: what is really in the clip and
    recognizable (a hallucinated "Thank you for watching" or a misheard word drops out)."""
    ref = normalize(reference)
    flat = [(w, normalize(w.text)) for w in words]
    tokens: list[tuple[Word, str]] = [(w, t) for w, ts in flat for t in ts]
    matcher = difflib.SequenceMatcher(None, ref, [t for _, t in tokens], autojunk=False)
    kept: list[Word] = []
    for block in matcher.get_matching_blocks():
        for k in range(block.size):
            word = tokens[block.b + k][0]
            if not kept or kept[-1] is not word:
                kept.append(word)
    return kept


def _level_db(x: npt.NDArray[np.float64], start: int, window: int) -> float:
    return float(10 * np.log10(np.mean(np.square(x[start : start + window])) + 1e-12))


def pause_point(samples: Int16Array, words: Sequence[Word]) -> tuple[int, int]:
    """(sample index, index of the word before it): a word gap near the middle of the
    speech, at the quietest 10 ms within ``SNAP_MS`` of Whisper's boundary.

    Words are often run together ("have all"), so of the gaps in the middle half of the
    speech the nearest to the middle that really dips ``GAP_DB`` below the loudest 10 ms is
    taken; when none does, the quietest."""
    if len(words) < 2:
        raise ValueError("a pause needs two words")
    window, hop = RATE // 100, RATE // 400
    x = samples.astype(np.float64) / 32768.0
    loudest = max(_level_db(x, s, window) for s in range(0, max(1, x.size - window), window))
    first, last = words[0].start_s, words[-1].end_s
    middle, span = (first + last) / 2, last - first
    candidates = []
    for i in range(len(words) - 1):
        boundary = (words[i].end_s + words[i + 1].start_s) / 2
        low = max(0, int((boundary - SNAP_MS / 1000) * RATE))
        high = max(low, min(x.size - window, int((boundary + SNAP_MS / 1000) * RATE)))
        level, at = min((_level_db(x, s, window), s) for s in range(low, high + 1, hop))
        candidates.append((abs(boundary - middle), level, at + window // 2, i))
    central = [c for c in candidates if c[0] <= span / 4] or candidates
    quiet = [c for c in central if c[1] <= loudest - GAP_DB]
    _, _, at, left = min(quiet) if quiet else min(central, key=lambda c: c[1])
    return at, left


def insert_pause(samples: Int16Array, at: int, pause_s: float) -> Int16Array:
    """``samples`` with ``pause_s`` of digital silence at ``at``, faded out and in over
    ``FADE_MS`` on either side so the cut makes no click."""
    fade = RATE * FADE_MS // 1000
    before = samples[:at].astype(np.float64)
    after = samples[at:].astype(np.float64)
    n = min(fade, before.size)
    if n:
        before[-n:] *= np.linspace(1.0, 0.0, n)
    n = min(fade, after.size)
    if n:
        after[:n] *= np.linspace(0.0, 1.0, n)
    gap = np.zeros(round(pause_s * RATE))
    return np.concatenate([before, gap, after]).round().astype(np.int16)


def narration_boundaries(reference: str, words: Sequence[Word]) -> tuple[Boundary, ...]:
    """Each word end of a long recording, marked as a sentence end by the reference's
    punctuation (Whisper's own where a word does not align with the reference)."""
    raw = reference.split()
    ref = [(i, t) for i, r in enumerate(raw) for t in normalize(r)[-1:]]
    hyp = [(j, t) for j, w in enumerate(words) for t in normalize(w.text)[-1:]]
    aligned: dict[int, int] = {}
    matcher = difflib.SequenceMatcher(None, [t for _, t in ref], [t for _, t in hyp],
                                      autojunk=False)
    for block in matcher.get_matching_blocks():
        for k in range(block.size):
            aligned[hyp[block.b + k][0]] = ref[block.a + k][0]
    bounds = []
    for j, w in enumerate(words):
        text = raw[aligned[j]] if j in aligned else w.text
        gap = words[j + 1].start_s - w.end_s if j + 1 < len(words) else 0.0
        bounds.append(Boundary(round(w.end_s * 1000, 1), round(max(0.0, gap), 3),
                               text.rstrip("\"')").endswith(SENTENCE_END), w.text))
    return tuple(bounds)


@dataclass(frozen=True)
class Source:
    path: Path
    reference: str


def sources(audio_dir: Path) -> tuple[list[Source], list[Source], Source | None]:
    """(Harvard sentences, neutral emotion clips, narration) under ``audio_dir``."""
    with (audio_dir / "manifest.tsv").open(encoding="utf-8") as handle:
        rows = {r["file"]: r["reference"] for r in csv.DictReader(handle, delimiter="\t")}
    harvard = [Source(audio_dir / f, ref) for f, ref in sorted(rows.items())
               if f.startswith("speech/spk") and ref]
    neutral = [Source(p, NEUTRAL_REFERENCES[p.name.split("-")[4]])
               for p in sorted(audio_dir.glob(NEUTRAL_EMOTION))]
    narration = Source(audio_dir / NARRATION, rows[NARRATION]) if NARRATION in rows else None
    return harvard, neutral, narration


def _complete(name: str, samples: Int16Array, words: Sequence[Word]) -> Item:
    return Item(name, "complete", samples, last_speech_sample(samples, RATE) * 1000 / RATE,
                tuple(t for w in words for t in normalize(w.text)))


def build_set(asr: Transcriber, audio_dir: Path, *, quick: bool = False) -> list[Item]:
    """The items, in streaming order. ``asr`` must give word timings."""
    harvard, neutral, narration = sources(audio_dir)
    pauses = QUICK_PAUSES_S if quick else PAUSES_S
    if quick:  # one sentence of each speaker
        harvard = [next(s for s in harvard if s.path.name.startswith(p)) for p in
                   ("spk1", "spk2")]
        neutral, narration = [], None
    items: list[Item] = []
    for source in [*harvard, *neutral]:
        samples, _ = read_audio(source.path, rate=RATE)
        heard = asr.transcribe(samples).words
        name = f"{source.path.parent.name}/{source.path.stem}"
        complete = _complete(name, samples, heard_words(source.reference, heard))
        items.append(complete)
        # Whisper's words place the pause, also where it misheard them; a word with no
        # duration is a hallucination ("Thank you for watching" in the padding).
        spoken = [w for w in heard if w.end_s - w.start_s >= MIN_WORD_S]
        if source not in harvard or len(spoken) < 2:
            continue
        at, _ = pause_point(samples, spoken)
        for pause in pauses:
            paused = insert_pause(samples, at, pause)
            items.append(Item(f"{name}+{pause:.1f}s", "paused", paused,
                              last_speech_sample(paused, RATE) * 1000 / RATE, complete.words,
                              pause_s=pause, pause_at_ms=round(at * 1000 / RATE, 1)))
    if narration is not None and narration.path.is_file():
        samples, _ = read_audio(narration.path, rate=RATE)
        all_words = asr.transcribe(samples).words
        words = heard_words(narration.reference, all_words)
        items.append(Item("narration", "narration", samples,
                          last_speech_sample(samples, RATE) * 1000 / RATE,
                          tuple(t for w in words for t in normalize(w.text)),
                          boundaries=narration_boundaries(narration.reference, all_words)))
    return items
