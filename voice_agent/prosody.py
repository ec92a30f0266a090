"""Prosody of one utterance: pitch, loudness, spectral tilt, rate and pauses (pure numpy).

These are the acoustic cues the emotion tag rests on (``voice_agent.emotion``). Each is a
property a person can check with a tone generator or a level meter: the tests pin them on
tones of known pitch and on one sentence at two loudness levels and two speeds.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from voice_agent.asr import Word
from voice_agent.audio.pcm import Int16Array

__all__ = ["SILENCE_DBFS", "Prosody", "prosody"]

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
TILT_LOW_HZ, TILT_SPLIT_HZ, TILT_HIGH_HZ = 100.0, 1000.0, 4000.0
"""Spectral tilt bands: where the voice's fundamental and first formant sit, against where
vocal effort adds energy (below 4 kHz, so an 8 kHz telephone stream measures the same)."""


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
    tilt_db: float = 0.0
    """Spectral tilt: power in 1-4 kHz over 0.1-1 kHz, in dB, over the active frames.
    Vocal effort raises it (a pressed, shouting voice has strong harmonics up high; a
    relaxed one falls off steeply), and unlike loudness it does not move with the
    microphone's gain."""


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
    tilt = _tilt_db(x[: count * hop].reshape(count, hop), active, rate)
    if words:
        speech_s_rate, n_words = _words_speech_s(words), len(words)
    else:
        speech_s_rate, n_words = speech_s, word_count or 0
    return Prosody(
        pitch_hz=pitch, pitch_range_semitones=spread,
        loudness_dbfs=float(10 * np.log10(power[active].mean() + 1e-12)),
        speaking_rate_wps=n_words / speech_s_rate if speech_s_rate > 0.05 else 0.0,
        pause_ratio=pause_s / (speech_s + pause_s),
        voiced_ratio=float(voiced.sum() / loud.sum()) if loud.any() else 0.0, speech_s=speech_s,
        tilt_db=tilt)


def _tilt_db(frames: np.ndarray, active: np.ndarray, rate: int) -> float:
    """Spectral tilt (see :attr:`Prosody.tilt_db`) of the active 10 ms frames, pairs of them
    taken as one 20 ms window (the resolution 100 Hz bands need)."""
    count = frames.shape[0] // 2 * 2
    if count == 0:
        return 0.0
    pairs = frames[:count].reshape(count // 2, -1)[active[:count].reshape(-1, 2).all(axis=1)]
    if pairs.shape[0] == 0:
        return 0.0
    power = np.abs(np.fft.rfft(pairs * np.hanning(pairs.shape[1]), axis=1)) ** 2
    spectrum = power.sum(axis=0)
    freqs = np.fft.rfftfreq(pairs.shape[1], 1.0 / rate)
    low = spectrum[(freqs >= TILT_LOW_HZ) & (freqs < TILT_SPLIT_HZ)].sum()
    high = spectrum[(freqs >= TILT_SPLIT_HZ) & (freqs < TILT_HIGH_HZ)].sum()
    if low <= 0 or high <= 0:
        return 0.0
    return float(10 * np.log10(high / low))
