"""How the speaker sounds: prosody + hesitation fillers + word sentiment -> :class:`EmotionTag`.

Why: the same words ("fine.") mean different things said calmly or shouted. Each utterance
gets a small tag that (1) goes into the LLM prompt, (2) is sent to the client as an event
(:meth:`EmotionTag.as_dict`) and (3) shapes the spoken reply: Piper ``length_scale``
(:func:`reply_length_scale`) and calmer wording for an upset speaker (:data:`WORDING`).

Prompt format (:func:`prompt_tag`), one line, exactly::

    [speaker: label=<label> valence=<v> arousal=<a> confidence=<c>]

``<v>`` is in [-1, 1] and ``<a>``, ``<c>`` in [0, 1], all with two decimals (``-0.62``,
``0.81``); it matches ``^\\[speaker: label=[a-z]+ valence=-?\\d\\.\\d\\d arousal=\\d\\.\\d\\d
confidence=\\d\\.\\d\\d\\]$``. Labels (:data:`LABELS`), decided in this order:

- ``angry``: valence <= -0.25, arousal >= 0.55, loudness at least the reference - 2 dB,
  no fillers;  ``anxious``: the same but quieter, or with fillers;
- ``sad``: valence <= -0.25, arousal < 0.55;
- ``hesitant``: 2+ fillers, fillers are 15%+ of the words, or pauses fill 35%+ of the
  speech span while the rate is under 70% of the reference;
- ``excited``: valence >= 0.25, arousal >= 0.6;  ``happy``: valence >= 0.25;
- ``neutral``: everything else.

Valence is mainly the VADER compound score of the words (weight 0.85) plus a weak
intonation cue (a lively pitch range is slightly positive). Arousal is ``1 / (1 +
exp(-2 z))``, ``z`` the weighted mean of cue scores relative to a reference (weight, one
unit): loudness (1.0, 8 dB), speaking rate (0.8, 1 word/s; 1.5 characters/s in Chinese),
pitch level (0.8, 3 semitones; only against a speaker's own baseline, since typical pitch
depends on the voice), pitch range (0.6, 4 semitones) and the text's intensity (0.6;
exclamation marks, strong sentiment). The reference is :data:`TYPICAL` (measured on the
human clips of ``shared/audio/speech``) or, with an :class:`EmotionTracker`, that blended
with the speaker's running baseline. Confidence drops for short utterances, few words,
cues that disagree, and text whose sentiment cannot be read (Chinese: VADER is English).

Speed, 5 s of speech on the 2-core CPU here: :func:`prosody` 6.7 ms best / 11.7 ms median,
:func:`analyze` 7.2 / 13.8 ms (median taken with other jobs loading both cores).
"""

from __future__ import annotations

import itertools
import math
import re
import threading
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from voice_agent.asr import Word
from voice_agent.audio.pcm import Int16Array

LABELS = ("neutral", "happy", "excited", "sad", "angry", "anxious", "hesitant")
SILENCE_DBFS = -100.0
"""Loudness reported when nothing is active (JSON has no -inf)."""
FMIN, FMAX = 60.0, 400.0
FRAME_S, PITCH_HOP_S, HOP_S = 0.032, 0.016, 0.010
"""Pitch frames of 32 ms every 16 ms; 10 ms frames for the energy gate and pauses."""
CLARITY = 0.7
"""Voicing threshold on the normalized autocorrelation peak (1.0 = perfectly periodic)."""
PEAK_PICK = 0.9
"""McLeod: take the first lag peak within 90% of the best one, which avoids octave-down
errors (every multiple of the period is also a peak)."""
GATE_BELOW_PEAK_DB, GATE_FLOOR_DBFS = 35.0, -70.0
"""A 10 ms frame is active within 35 dB of the loudest one and above -70 dBFS: relative,
so a quieter recording of the same sentence selects the same frames."""
MIN_PAUSE_S = 0.15
"""Silences shorter than this are stop closures inside words, not pauses."""
_FILLERS_EN = re.compile(r"\b(?:u+m+|u+h+|e+r+m*|h+m+|m{2,})\b(?!-)", re.IGNORECASE)
_FILLERS_ZH = re.compile(r"(?:嗯+|啊+|呃+)")
_CJK = re.compile(r"[\u3400-\u9fff]")


@dataclass(frozen=True)
class Prosody:
    pitch_hz: float = 0.0
    """Median F0 over voiced frames (0 when none)."""
    pitch_range_semitones: float = 0.0
    """12 * log2(p90 / p10) of voiced F0: 80% of a glide's span, robust to octave slips."""
    loudness_dbfs: float = SILENCE_DBFS
    """Power mean over active frames."""
    speaking_rate_wps: float = 0.0
    """Words per second of speech time (pauses excluded); 0 when the count is unknown."""
    pause_ratio: float = 0.0
    """Share of pauses (>= MIN_PAUSE_S) between the first and last active frame."""
    voiced_ratio: float = 0.0
    """Share of active frames that are voiced (whisper and noise are not)."""
    speech_s: float = 0.0
    """Speech time (active span minus pauses) that the rate is computed over."""


@dataclass(frozen=True)
class Reference:
    """What a cue is compared with: typical values, or a speaker's own baseline."""

    loudness_dbfs: float
    pitch_range_semitones: float
    speaking_rate_wps: float
    pitch_hz: float = 0.0
    """0 = unknown: pitch level is only scored against a speaker's own baseline."""


TYPICAL = Reference(loudness_dbfs=-26.0, pitch_range_semitones=7.5, speaking_rate_wps=3.0)
"""Median of the 17 human clips of shared/audio/speech (read speech, close mic)."""
TYPICAL_RATE_ZH = 4.5
"""Chinese is counted in characters (syllables): about 4-5 per second of speech."""


def _f0_frames(x: np.ndarray, rate: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """F0 (Hz), clarity and level (dBFS) per 32 ms frame, hop 16 ms (McLeod pitch method:
    normalized squared difference function, all frames at once via FFT)."""
    n, hop = round(FRAME_S * rate), max(1, round(PITCH_HOP_S * rate))
    if x.size < n:
        empty = np.zeros(0)
        return empty, empty, empty
    frames = sliding_window_view(x, n)[::hop]
    frames = frames - frames.mean(axis=1, keepdims=True)
    min_lag, max_lag = int(rate / FMAX), math.ceil(rate / FMIN)
    nfft = 1 << math.ceil(math.log2(n + max_lag + 2))
    spec = np.fft.rfft(frames, nfft, axis=1)
    # irfft of a complex power spectrum: ~3x faster than of a real one here (numpy 2.4).
    spec *= spec.conj()
    acf = np.fft.irfft(spec, nfft, axis=1)[:, : max_lag + 2]
    energy = np.zeros((frames.shape[0], n + 1), dtype=frames.dtype)
    np.cumsum(frames * frames, axis=1, out=energy[:, 1:])
    lags = np.arange(max_lag + 2)
    total = energy[:, n : n + 1]
    nsdf = 2.0 * acf / np.maximum(energy[:, n - lags] + total - energy[:, lags], 1e-12)
    # Candidates: local maxima after the first zero crossing (skips the lag-0 lobe).
    first_neg = np.argmax(nsdf < 0, axis=1)
    first_neg[~(nsdf < 0).any(axis=1)] = max_lag + 2
    mid = nsdf[:, 1:-1]
    peak = (mid > nsdf[:, :-2]) & (mid >= nsdf[:, 2:]) & (mid > 0)
    k = lags[1:-1]
    peak &= (k >= min_lag) & (k <= max_lag) & (k > first_neg[:, None])
    best = np.where(peak, mid, -np.inf).max(axis=1)
    pick = np.argmax(peak & (mid >= PEAK_PICK * best[:, None]), axis=1) + 1
    rows = np.arange(nsdf.shape[0])
    a, b, c = nsdf[rows, pick - 1], nsdf[rows, pick], nsdf[rows, pick + 1]
    curve = a - 2 * b + c
    shift = np.where(curve < 0, 0.5 * (a - c) / np.where(curve < 0, curve, -1.0), 0.0)
    shift = np.clip(shift, -0.5, 0.5)  # only frames without a true peak go further
    clarity = np.where(peak.any(axis=1), b - 0.25 * (a - c) * shift, 0.0)
    level = 10 * np.log10(total[:, 0] / n + 1e-12)
    return rate / (pick + shift), clarity, level


def _speech_span(active: np.ndarray, frame_s: float) -> tuple[float, float]:
    """(speech seconds, pause seconds) between the first and last active frame."""
    idx = np.flatnonzero(active)
    if idx.size == 0:
        return 0.0, 0.0
    inside = active[idx[0] : idx[-1] + 1]
    edges = np.diff(np.concatenate(([1], inside.astype(np.int8), [1])))
    runs = np.flatnonzero(edges == 1) - np.flatnonzero(edges == -1)
    pause = float(runs[runs * frame_s >= MIN_PAUSE_S].sum()) * frame_s
    return inside.size * frame_s - pause, pause


def _words_speech_s(words: Sequence[Word]) -> float:
    ordered = sorted(words, key=lambda w: w.start_s)
    span = ordered[-1].end_s - ordered[0].start_s
    gaps = [b.start_s - a.end_s for a, b in itertools.pairwise(ordered)]
    return span - sum(g for g in gaps if g >= MIN_PAUSE_S)


def prosody(audio: Int16Array, *, rate: int = 16000, words: Sequence[Word] = (),
            word_count: int | None = None) -> Prosody:
    """Pitch, loudness, rate and pauses of one utterance (pure numpy, no model).

    Pitch is within 0.1% on pure and sawtooth tones of 100-300 Hz. 5 s of 16 kHz audio
    takes 7-12 ms on this 2-core CPU (all frames in one batched FFT, no Python loop). The
    speaking rate uses the word timings when given (span minus gaps >= MIN_PAUSE_S), else
    ``word_count`` over the energy-gated speech time; without either it is 0.
    """
    x = np.asarray(audio, dtype=np.float64) / 32768.0
    hop = max(1, round(HOP_S * rate))
    count = x.size // hop
    if count == 0:
        return Prosody()
    power = np.mean(np.square(x[: count * hop].reshape(count, hop), dtype=np.float64), axis=1)
    level = 10 * np.log10(power + 1e-12)
    threshold = max(GATE_FLOOR_DBFS, float(level.max()) - GATE_BELOW_PEAK_DB)
    active = level >= threshold
    if not active.any():
        return Prosody()
    speech_s, pause_s = _speech_span(active, hop / rate)
    # Pitch at ~8 kHz: 60-400 Hz needs no more, and a 2:1 pair average keeps a periodic
    # signal periodic (what aliases is still periodic with the same F0), so the tones'
    # accuracy is unchanged while the FFTs cost a third.
    step = max(1, rate // 8000)
    pitch_x = x[: x.size // step * step].reshape(-1, step).mean(axis=1)
    f0, clarity, frame_level = _f0_frames(pitch_x, rate / step)
    loud = frame_level >= threshold
    voiced = loud & (clarity >= CLARITY)
    pitches = f0[voiced]
    pitch = float(np.median(pitches)) if pitches.size else 0.0
    spread = 0.0
    if pitches.size >= 2:
        p10, p90 = np.percentile(pitches, [10, 90])
        spread = float(12 * np.log2(p90 / p10))
    if words:
        speech_s_rate, n_words = _words_speech_s(words), len(words)
    else:
        speech_s_rate, n_words = speech_s, word_count or 0
    return Prosody(
        pitch_hz=pitch, pitch_range_semitones=spread,
        loudness_dbfs=float(10 * np.log10(power[active].mean() + 1e-12)),
        speaking_rate_wps=n_words / speech_s_rate if speech_s_rate > 0.05 else 0.0,
        pause_ratio=pause_s / (speech_s + pause_s),
        voiced_ratio=float(voiced.sum() / loud.sum()) if loud.any() else 0.0, speech_s=speech_s)


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
class EmotionTag:
    label: str = "neutral"
    valence: float = 0.0
    """-1 (negative) .. 1 (positive)."""
    arousal: float = 0.5
    """0 (calm) .. 1 (agitated); 0.5 is typical for the reference."""
    confidence: float = 0.0
    prosody: Prosody = field(default_factory=Prosody)
    fillers: int = 0
    sentiment: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready payload for the client event and logs (rounded, finite)."""
        cues = {k: round(v, 3) for k, v in asdict(self.prosody).items()}
        return {"label": self.label, "valence": round(self.valence, 2),
                "arousal": round(self.arousal, 2), "confidence": round(self.confidence, 2),
                "fillers": self.fillers, "sentiment": round(self.sentiment, 3), "prosody": cues}


class EmotionTracker:
    """One speaker's running baseline of loudness, pitch, pitch range and rate.

    People differ (a quiet speaker's "loud" is another's normal), so a session owns one
    tracker and each turn is scored against the blend ``typical + w * (baseline -
    typical)``, ``w = n / (n + prior_turns)``, before the turn updates the baseline
    (exponential average, ``alpha`` per turn). Pitch level is scored from the first turn on.
    """

    def __init__(self, *, alpha: float = 0.3, prior_turns: float = 2.0) -> None:
        self.alpha, self.prior_turns = alpha, prior_turns
        self._stats: dict[str, tuple[float, int]] = {}
        self._lock = threading.Lock()

    @property
    def turns(self) -> int:
        return max((n for _, n in self._stats.values()), default=0)

    def reference(self, typical: Reference = TYPICAL) -> Reference:
        with self._lock:
            stats = dict(self._stats)

        def blend(name: str, base: float) -> float:
            mean, n = stats.get(name, (base, 0))
            return base + n / (n + self.prior_turns) * (mean - base)

        semitones, known = stats.get("pitch_st", (0.0, 0))
        return Reference(
            loudness_dbfs=blend("loudness_dbfs", typical.loudness_dbfs),
            pitch_range_semitones=blend("pitch_range_semitones", typical.pitch_range_semitones),
            speaking_rate_wps=blend("speaking_rate_wps", typical.speaking_rate_wps),
            pitch_hz=100.0 * 2 ** (semitones / 12) if known else typical.pitch_hz,
        )

    def update(self, cues: Prosody) -> None:
        values = {"loudness_dbfs": cues.loudness_dbfs if cues.speech_s > 0 else None,
                  "speaking_rate_wps": cues.speaking_rate_wps or None,
                  "pitch_range_semitones": cues.pitch_range_semitones if cues.pitch_hz else None,
                  "pitch_st": 12 * math.log2(cues.pitch_hz / 100.0) if cues.pitch_hz else None}
        with self._lock:
            for name, value in values.items():
                if value is None:
                    continue
                mean, n = self._stats.get(name, (value, 0))
                self._stats[name] = (mean + self.alpha * (value - mean) if n else value, n + 1)


def _word_count(text: str, chinese: bool) -> int:
    latin = len(re.findall(r"[^\W\d_]+(?:'[^\W\d_]+)?", _CJK.sub(" ", text)))
    return latin + (len(_CJK.findall(text)) if chinese else 0)


def _arousal_cues(p: Prosody, ref: Reference, text: str, sent: float,
                  rate_scale: float) -> list[tuple[float, float]]:
    """(weight, score) per available cue; score 0 = as the reference, +1 = one unit more."""
    cues: list[tuple[float, float]] = []
    if p.speech_s > 0:
        cues.append((1.0, (p.loudness_dbfs - ref.loudness_dbfs) / 8.0))
    if p.speaking_rate_wps > 0:
        cues.append((0.8, (p.speaking_rate_wps - ref.speaking_rate_wps) / rate_scale))
    if p.pitch_hz > 0:
        cues.append((0.6, (p.pitch_range_semitones - ref.pitch_range_semitones) / 4.0))
        if ref.pitch_hz > 0:
            cues.append((0.8, 12 * math.log2(p.pitch_hz / ref.pitch_hz) / 3.0))
    intensity = min(1.5, 0.75 * text.count("!")) + 2.0 * max(0.0, abs(sent) - 0.5)
    cues.append((0.6, intensity))
    return [(w, max(-3.0, min(3.0, z))) for w, z in cues]


def _label(valence: float, arousal: float, louder: bool, n_fillers: int, n_words: int,
           p: Prosody, slow: bool) -> str:
    if valence <= -0.25:
        if arousal >= 0.55:
            return "angry" if louder and n_fillers == 0 else "anxious"
        return "sad"
    if n_fillers >= 2 or (n_fillers and n_fillers >= 0.15 * n_words) or (
            p.pause_ratio >= 0.35 and slow):
        return "hesitant"
    if valence >= 0.25:
        return "excited" if arousal >= 0.6 else "happy"
    return "neutral"


def analyze(audio: Int16Array, transcript_text: str, *, language: str = "en",
            words: Sequence[Word] = (), tracker: EmotionTracker | None = None,
            rate: int = 16000) -> EmotionTag:
    """The tag for one utterance (its audio and transcript); see the module docstring.

    With a ``tracker`` the turn is scored against the speaker's baseline, then added to it.
    """
    chinese = _is_chinese(transcript_text, language)
    n_words = len(words) or _word_count(transcript_text, chinese)
    cues = prosody(audio, rate=rate, words=words, word_count=n_words)
    typical = replace(TYPICAL, speaking_rate_wps=TYPICAL_RATE_ZH) if chinese else TYPICAL
    ref = tracker.reference(typical) if tracker is not None else typical
    if tracker is not None:
        tracker.update(cues)
    sent = sentiment(transcript_text)
    n_fillers = fillers(transcript_text, language)
    scored = _arousal_cues(cues, ref, transcript_text, sent, 1.5 if chinese else 1.0)
    total_w = sum(w for w, _ in scored)
    z = sum(w * s for w, s in scored) / total_w
    arousal = 1.0 / (1.0 + math.exp(-2.0 * z))
    lively = math.tanh((cues.pitch_range_semitones - ref.pitch_range_semitones) / 4.0)
    valence = 0.85 * sent + 0.15 * lively if cues.pitch_hz > 0 else sent
    # Confidence: enough speech and words, cues pulling the same way, readable sentiment.
    opposed = sum(w * abs(s) for w, s in scored if s * z < 0)
    magnitude = sum(w * abs(s) for w, s in scored)
    agreement = 1.0 - opposed / magnitude if magnitude > 0.3 else 1.0
    amount = min(1.0, cues.speech_s / 1.5) if cues.speech_s > 0 else 0.3
    amount *= min(1.0, n_words / (8.0 if chinese else 4.0))
    readable = 1.0 if re.search(r"[A-Za-z]", transcript_text) else 0.7
    confidence = (0.25 + 0.75 * amount) * agreement * readable
    slow = cues.speaking_rate_wps > 0 and cues.speaking_rate_wps < 0.7 * ref.speaking_rate_wps
    louder = cues.speech_s == 0 or cues.loudness_dbfs >= ref.loudness_dbfs - 2.0
    label = _label(valence, arousal, louder, n_fillers, n_words, cues, slow)
    return EmotionTag(label=label, valence=max(-1.0, min(1.0, valence)), arousal=arousal,
                      confidence=max(0.0, min(1.0, confidence)), prosody=cues,
                      fillers=n_fillers, sentiment=sent)


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
