"""How the speaker sounds: voice against their baseline, fillers and words -> :class:`EmotionTag`.

Why: the same words ("where is my car") mean different things said calmly or shouted. Each
utterance gets a small tag that (1) goes into the LLM prompt, (2) is sent to the client as
an event (:meth:`EmotionTag.as_dict`, with every cue against its baseline so a person can
see why) and (3) shapes the spoken reply: Piper ``length_scale`` (:func:`reply_length_scale`)
and calmer wording for an upset speaker (:data:`WORDING`).

Prompt format (:func:`prompt_tag`), one line, exactly::

    [speaker: label=<label> valence=<v> arousal=<a> confidence=<c>]

``<v>`` is in [-1, 1] and ``<a>``, ``<c>`` in [0, 1], all with two decimals (``-0.62``,
``0.81``); it matches ``^\\[speaker: label=[a-z]+ valence=-?\\d\\.\\d\\d arousal=\\d\\.\\d\\d
confidence=\\d\\.\\d\\d\\]$``.

**Labels** (:data:`LABELS`) are what the reply can do something about: each one changes
its wording (:data:`WORDING`) or pace (:func:`reply_length_scale`). Decided in this order
(:attr:`EmotionTag.decided_by` says which):

1. *words*, when their sentiment is clear (valence at least 0.25 either way):
   ``angry`` (negative, aroused, not quieter than usual, no fillers), ``anxious`` (negative
   and aroused otherwise), ``sad`` (negative, not aroused), ``excited`` (positive, aroused),
   ``happy`` (positive);
2. *fillers*: ``hesitant`` for 2+ fillers, fillers 15%+ of the words, or pauses filling 35%+
   of the speech while the rate is under 70% of the reference;
3. *voice*, when the words are neutral: an aroused voice (arousal at least
   :data:`VOICE_AROUSED`, 0.6; 0.7 on a first turn) is ``angry``
   when it is also tense, loud (:data:`TENSE_LOUDNESS`) and bright (:data:`TENSE_TILT`:
   a pressed voice), else ``excited``; a calm one is ``sad`` when its pitch is raised well
   beyond its loudness (:data:`SUBDUED_PITCH_OVER_LOUDNESS`: the strained, quiet voice of
   sadness), else ``neutral``.

The voice cannot tell fear from anger or joy reliably, nor negative from positive
(valence from the voice is near chance): an agitated voice saying neutral words is
``angry`` or ``excited``, the two that answer an agitated person well (calm and short, or
brisk).

**Arousal** is ``1 / (1 + exp(-2 z))``, ``z`` the weighted mean of cue scores, each
``(value - baseline) / unit`` clipped to +-3 (:func:`arousal_cues`, :data:`CUES`):
loudness (1.0, 5 dB; its weight grows from half on the first turn to whole as the
speaker's own level is learned, since a typical microphone level is a guess), pitch (1.0, 3
semitones), pitch range (0.3, 4 semitones), spectral tilt (0.15, 3 dB), speaking rate
(0.15, 1 word/s; 1.5 characters/s in Chinese) and the text's intensity (0.6; exclamation
marks, strong sentiment). Once a
speaker's level is known (3 turns), raised pitch counts only as far as the voice is not
quieter than usual (up to 1 unit above the loudness score): a high pitch in a soft voice is
strain, not agitation. Baselines: ``voice_agent.voice_baseline``.

The units and weights are round values from acoustic phonetics (vocal effort raises level,
pitch and high-frequency energy together); a few alternatives of each were compared with
``voice-agent bench --emotion`` on the acted clips of ``shared/audio/emotion`` (four
speakers), and nothing finer was fit to them: they are licensed for non-commercial use, and
four voices are too few to fit more without learning those voices.

Speed, 5 s of speech on the 2-core CPU here: :func:`analyze` about 10 ms.
"""

from __future__ import annotations

import math
import re
import threading
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np

from voice_agent.asr import Word
from voice_agent.audio.pcm import Int16Array
from voice_agent.prosody import Prosody, prosody
from voice_agent.voice_baseline import TYPICAL, TYPICAL_RATE_ZH, EmotionTracker, Reference

__all__ = ["LABELS", "WORDING", "Cue", "EmotionTag", "EmotionTracker", "analyze",
           "arousal_cues", "fillers", "prompt_tag", "reply_length_scale", "sentiment",
           "warm_up"]

LABELS = ("neutral", "happy", "excited", "sad", "angry", "anxious", "hesitant")
CLEAR_SENTIMENT = 0.25
"""Words with a sentiment at least this strong either way decide the label."""
TENSE_LOUDNESS, TENSE_TILT = 1.5, 0.5
"""An aroused voice is tense (``angry``) at least 1.5 loudness units (7.5 dB) over its
baseline and 0.5 tilt units (1.5 dB) brighter: pressed phonation, not just liveliness."""
SUBDUED_PITCH_OVER_LOUDNESS = 1.5
"""A calm voice is subdued (``sad``) when its pitch score exceeds its loudness score by
this much: raised pitch with no more breath behind it."""
VOICE_AROUSED, UNKNOWN_VOICE_AROUSED = 0.6, 0.7
"""The voice alone changes the reply's wording only when clearly aroused (as positive words
need to be ``excited``): the arousal number still shows a lean below it, but a loud
microphone or a lively reader should not be answered as an agitated person. Against
typical values alone (a first turn) the bar is the second, lowered to the first as the
speaker's own baseline takes over."""
KNOWN_LEVEL_TURNS = 3
"""Turns after which the speaker's own level is known well enough to hold pitch to it."""
_FILLERS_EN = re.compile(r"\b(?:u+m+|u+h+|e+r+m*|h+m+|m{2,})\b(?!-)", re.IGNORECASE)
_FILLERS_ZH = re.compile(r"(?:嗯+|啊+|呃+)")
_CJK = re.compile(r"[\u3400-\u9fff]")


def _is_chinese(text: str, language: str) -> bool:
    return language.lower().startswith("zh") or bool(_CJK.search(text))


def fillers(text: str, language: str = "en") -> int:
    """Hesitation fillers: um, uh, er, erm, hmm, mm (whole words, any case, stretched
    spellings like "ummm" too; "uh-huh" is a yes, not a filler); for Chinese also 嗯, 啊
    and 呃, a run such as 嗯嗯 counting once, like "ummm"."""
    count = len(_FILLERS_EN.findall(text))
    if _is_chinese(text, language):
        count += len(_FILLERS_ZH.findall(text))
    return count


_analyzer: Any = None
_analyzer_lock = threading.Lock()


def sentiment(text: str) -> float:
    """VADER compound score of the words, -1 (negative) .. 1 (positive); 0 for text VADER
    cannot read (it is an English lexicon). The analyzer loads its lexicon once, lazily."""
    global _analyzer
    if not text.strip():
        return 0.0
    if _analyzer is None:
        with _analyzer_lock:
            if _analyzer is None:
                from vaderSentiment.vaderSentiment import (  # type: ignore[import-untyped]
                    SentimentIntensityAnalyzer,
                )

                _analyzer = SentimentIntensityAnalyzer()
    return float(_analyzer.polarity_scores(text)["compound"])


@dataclass(frozen=True)
class Cue:
    """One cue of a turn against its reference: what the arousal rests on."""

    value: float
    baseline: float
    score: float
    """``(value - baseline) / unit``, clipped to +-3 (pitch: in semitones)."""
    weight: float

    def as_dict(self) -> dict[str, float]:
        return {"value": round(self.value, 3), "baseline": round(self.baseline, 3),
                "score": round(self.score, 3), "weight": round(self.weight, 3)}


@dataclass(frozen=True)
class EmotionTag:
    label: str = "neutral"
    valence: float = 0.0
    """-1 (negative) .. 1 (positive)."""
    arousal: float = 0.5
    """0 (calm) .. 1 (agitated); 0.5 is the speaker's baseline."""
    confidence: float = 0.0
    prosody: Prosody = field(default_factory=Prosody)
    fillers: int = 0
    sentiment: float = 0.0
    cues: dict[str, Cue] = field(default_factory=dict)
    """Each arousal cue against its baseline, by name (``loudness``, ``pitch``, ...)."""
    decided_by: str = "voice"
    """What decided the label: ``words``, ``fillers`` or ``voice``."""
    baseline_turns: int = 0
    """How many of the speaker's earlier turns the baseline rests on."""

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready payload for the client event and logs (rounded, finite)."""
        measured = {k: round(v, 3) for k, v in asdict(self.prosody).items()}
        return {"label": self.label, "valence": round(self.valence, 2),
                "arousal": round(self.arousal, 2), "confidence": round(self.confidence, 2),
                "fillers": self.fillers, "sentiment": round(self.sentiment, 3),
                "prosody": measured, "basis": {k: c.as_dict() for k, c in self.cues.items()},
                "decided_by": self.decided_by, "baseline_turns": self.baseline_turns}


def _word_count(text: str, chinese: bool) -> int:
    latin = len(re.findall(r"[^\W\d_]+(?:'[^\W\d_]+)?", _CJK.sub(" ", text)))
    return latin + (len(_CJK.findall(text)) if chinese else 0)


CUES = {"loudness": (5.0, 1.0), "pitch": (3.0, 1.0), "pitch_range": (4.0, 0.3),
        "tilt": (3.0, 0.15), "rate": (1.0, 0.15), "text": (1.0, 0.6)}
"""(unit, weight) per arousal cue: a score of 1 is one unit over the baseline (dB,
semitones, words per second). Loudness's weight is scaled by how much of the baseline is
the speaker's own; the rate's unit is 1.5 times larger in Chinese (characters). Tilt weighs
little here (it also moves with the vowels said): its job is telling tense from lively
(:data:`TENSE_TILT`). So does the rate: without word timings it is the transcript's word
count over the energy-gated time, a rough measure."""
FIRST_TURN_LOUDNESS_TRUST = 0.5
"""Loudness weighs this share of its weight against typical values alone: a microphone's
gain and distance move the level by 15 dB and more, a person's voice by less."""


def arousal_cues(p: Prosody, ref: Reference, text: str = "", sent: float = 0.0, *,
                 rate_unit: float = 1.0) -> dict[str, Cue]:
    """Each available cue of ``p`` against ``ref`` (see the module docstring)."""
    def cue(name: str, value: float, baseline: float, *, unit_scale: float = 1.0,
            trust: float = 1.0) -> Cue:
        unit, weight = CUES[name]
        return Cue(value, baseline, max(-3.0, min(3.0, (value - baseline) / unit / unit_scale)),
                   weight * trust)

    cues: dict[str, Cue] = {}
    if p.speech_s > 0:
        trust = FIRST_TURN_LOUDNESS_TRUST + (1 - FIRST_TURN_LOUDNESS_TRUST) * ref.own_weight
        cues["loudness"] = cue("loudness", p.loudness_dbfs, ref.loudness_dbfs, trust=trust)
        cues["tilt"] = cue("tilt", p.tilt_db, ref.tilt_db)
    if p.speaking_rate_wps > 0:
        cues["rate"] = cue("rate", p.speaking_rate_wps, ref.speaking_rate_wps,
                           unit_scale=rate_unit)
    if p.pitch_hz > 0 and ref.pitch_hz > 0:
        score = _pitch_rise(p.pitch_hz, ref.pitch_hz)
        if ref.turns >= KNOWN_LEVEL_TURNS and "loudness" in cues:
            score = min(score, max(0.0, cues["loudness"].score + 1.0))
        cues["pitch"] = Cue(p.pitch_hz, ref.pitch_hz, max(-3.0, min(3.0, score)),
                            CUES["pitch"][1])
        cues["pitch_range"] = cue("pitch_range", p.pitch_range_semitones,
                                  ref.pitch_range_semitones)
    intensity = min(1.5, 0.75 * text.count("!")) + 2.0 * max(0.0, abs(sent) - 0.5)
    cues["text"] = cue("text", intensity, 0.0)
    return cues


def _pitch_rise(pitch_hz: float, baseline_hz: float) -> float:
    """Pitch over its baseline in pitch units (semitones / unit), unclipped."""
    return 12 * math.log2(pitch_hz / baseline_hz) / CUES["pitch"][0]


def _score(cues: dict[str, Cue], name: str) -> float:
    cue = cues.get(name)
    return cue.score if cue is not None else 0.0


def _label(valence: float, arousal: float, cues: dict[str, Cue], n_fillers: int, n_words: int,
           p: Prosody, slow: bool, own_weight: float) -> tuple[str, str]:
    """(label, what decided it); see the module docstring."""
    loudness = _score(cues, "loudness")
    if valence <= -CLEAR_SENTIMENT:
        if arousal >= 0.55:
            louder = loudness >= -0.4 or "loudness" not in cues
            return ("angry" if louder and n_fillers == 0 else "anxious"), "words"
        return "sad", "words"
    if valence >= CLEAR_SENTIMENT:
        return ("excited" if arousal >= 0.6 else "happy"), "words"
    if n_fillers >= 2 or (n_fillers and n_fillers >= 0.15 * n_words) or (
            p.pause_ratio >= 0.35 and slow):
        return "hesitant", "fillers"
    if arousal >= UNKNOWN_VOICE_AROUSED + (VOICE_AROUSED - UNKNOWN_VOICE_AROUSED) * own_weight:
        tense = loudness >= TENSE_LOUDNESS and _score(cues, "tilt") >= TENSE_TILT
        return ("angry" if tense else "excited"), "voice"
    pitch = cues.get("pitch")
    # The pitch as measured: the arousal's pitch score is held to the loudness.
    raised = _pitch_rise(pitch.value, pitch.baseline) if pitch else 0.0
    subdued = raised - loudness >= SUBDUED_PITCH_OVER_LOUDNESS
    return ("sad" if subdued else "neutral"), "voice"


def analyze(audio: Int16Array, transcript_text: str, *, language: str = "en",
            words: Sequence[Word] = (), tracker: EmotionTracker | None = None,
            rate: int = 16000) -> EmotionTag:
    """The tag for one utterance (its audio and transcript); see the module docstring.

    With a ``tracker`` the turn is scored against the speaker's baseline, then added to it.
    """
    chinese = _is_chinese(transcript_text, language)
    n_words = len(words) or _word_count(transcript_text, chinese)
    measured = prosody(audio, rate=rate, words=words, word_count=n_words)
    typical = replace(TYPICAL, speaking_rate_wps=TYPICAL_RATE_ZH) if chinese else TYPICAL
    # Without a tracker, a fresh one gives the typical reference (by this voice's range).
    ref = (tracker or EmotionTracker()).reference(typical, pitch_hz=measured.pitch_hz)
    if tracker is not None:
        tracker.update(measured)
    sent = sentiment(transcript_text)
    n_fillers = fillers(transcript_text, language)
    cues = arousal_cues(measured, ref, transcript_text, sent, rate_unit=1.5 if chinese else 1.0)
    total_w = sum(c.weight for c in cues.values())
    z = sum(c.weight * c.score for c in cues.values()) / total_w
    arousal = 1.0 / (1.0 + math.exp(-2.0 * z))
    lively = math.tanh((measured.pitch_range_semitones - ref.pitch_range_semitones) / 4.0)
    valence = 0.85 * sent + 0.15 * lively if measured.pitch_hz > 0 else sent
    # Confidence: enough speech and words, cues pulling the same way, readable sentiment.
    opposed = sum(c.weight * abs(c.score) for c in cues.values() if c.score * z < 0)
    magnitude = sum(c.weight * abs(c.score) for c in cues.values())
    agreement = 1.0 - opposed / magnitude if magnitude > 0.3 else 1.0
    amount = min(1.0, measured.speech_s / 1.5) if measured.speech_s > 0 else 0.3
    amount *= min(1.0, n_words / (8.0 if chinese else 4.0))
    readable = 1.0 if re.search(r"[A-Za-z]", transcript_text) else 0.7
    confidence = (0.25 + 0.75 * amount) * agreement * readable
    slow = 0 < measured.speaking_rate_wps < 0.7 * ref.speaking_rate_wps
    label, decided_by = _label(valence, arousal, cues, n_fillers, n_words, measured, slow,
                               ref.own_weight)
    return EmotionTag(label=label, valence=max(-1.0, min(1.0, valence)), arousal=arousal,
                      confidence=max(0.0, min(1.0, confidence)), prosody=measured,
                      fillers=n_fillers, sentiment=sent, cues=cues, decided_by=decided_by,
                      baseline_turns=ref.turns)


def warm_up() -> None:
    """Load the sentiment lexicon and run the analysis once (about 80 ms), so the first
    person's turn does not pay for it."""
    t = np.arange(16000) / 16000.0
    tone = (8000 * np.sin(2 * np.pi * 150.0 * t)).astype(np.int16)
    analyze(tone, "Hello there.")


def _unit(value: float, low: float = 0.0) -> float:
    return max(low, min(1.0, value)) if math.isfinite(value) else 0.0


def prompt_tag(tag: EmotionTag) -> str:
    """``[speaker: label=angry valence=-0.62 arousal=0.81 confidence=0.70]``."""
    label = tag.label if tag.label in LABELS else "neutral"
    valence = round(_unit(tag.valence, -1.0), 2) + 0.0  # + 0.0 turns -0.0 into 0.0
    return (f"[speaker: label={label} valence={valence:.2f} arousal={_unit(tag.arousal):.2f}"
            f" confidence={_unit(tag.confidence):.2f}]")


WORDING: dict[str, str] = {
    "angry": "answer calmly and kindly, acknowledge the feeling in a few words, keep it short",
    "anxious": "answer calmly and reassuringly, in short clear steps",
    "sad": "answer gently and warmly, and keep it short",
    "hesitant": "answer simply and patiently",
    "excited": "match their positive energy briefly",
    "happy": "a warm tone is welcome",
}
"""How to word a reply, per label. They reach the model as fixed rules in the system prompt
(``voice_agent.prompt``), not as a per-turn instruction: see there why."""
_LENGTH_SCALES = {"angry": 1.12, "anxious": 1.12, "sad": 1.1, "hesitant": 1.05,
                  "excited": 0.95, "happy": 1.0}
MIN_WORDING_CONFIDENCE = 0.3
"""Below this the tag is a guess: the rules tell the model not to steer its wording on it."""


def reply_length_scale(tag: EmotionTag) -> float:
    """Piper speaking-rate factor for the reply (>1 slower): slower and calmer for upset
    speakers, scaled by confidence (a weak guess moves the rate only half as far); never
    outside 0.85..1.2 whatever the tag holds."""
    target = _LENGTH_SCALES.get(tag.label, 1.0)
    confidence = _unit(tag.confidence)
    scale = 1.0 + (target - 1.0) * (0.5 + 0.5 * confidence)
    return max(0.85, min(1.2, scale))
