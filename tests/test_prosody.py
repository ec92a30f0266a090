"""Prosody on audio whose properties are known: tones of known pitch, one sentence at two
levels and two speeds, espeak-ng at two rates, and real speech from ../shared/audio."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.voices import (
    RATE,
    SPEECH,
    espeak,
    needs_espeak,
    needs_shared,
    scaled,
    tone,
)
from voice_agent.asr import Word
from voice_agent.audio.pcm import Int16Array, read_audio
from voice_agent.emotion import analyze
from voice_agent.prosody import SILENCE_DBFS, prosody


@pytest.mark.parametrize("saw", [False, True], ids=["sine", "sawtooth"])
@pytest.mark.parametrize("freq", [100.0, 150.0, 220.0, 300.0])
def test_pitch_of_tones_within_3_percent(freq: float, saw: bool) -> None:
    cues = prosody(tone(freq, saw=saw))
    assert cues.pitch_hz == pytest.approx(freq, rel=0.01)  # brief: 3%; measured <= 0.3%
    assert cues.voiced_ratio > 0.9
    assert cues.pitch_range_semitones < 0.5


def test_pitch_range_of_a_glide_is_12_semitones() -> None:
    # 150 Hz held, glide up an octave, 300 Hz held: p10 and p90 land on the held notes.
    glide = np.concatenate([np.full(9600, 150.0), 150.0 * 2 ** np.linspace(0, 1, 12800),
                            np.full(9600, 300.0)])
    assert prosody(tone(glide, 2.0)).pitch_range_semitones == pytest.approx(12.0, abs=1.5)
    # A plain exponential glide: p10..p90 span 80% of the octave.
    plain = prosody(tone(150.0 * 2 ** np.linspace(0, 1, 2 * RATE), 2.0))
    assert plain.pitch_range_semitones == pytest.approx(9.6, abs=1.0)
    assert plain.pitch_hz == pytest.approx(150 * 2**0.5, rel=0.03)


def test_same_sentence_a_quarter_as_loud(sentence: Int16Array) -> None:
    loud, quiet = prosody(sentence), prosody(scaled(sentence, 0.25))
    assert loud.loudness_dbfs - quiet.loudness_dbfs == pytest.approx(12.04, abs=1.0)
    assert quiet.pitch_hz == pytest.approx(loud.pitch_hz, rel=0.03)
    assert quiet.speech_s == pytest.approx(loud.speech_s, abs=0.1)


def test_same_sentence_played_faster(sentence: Int16Array) -> None:
    # Playing 1.5x faster (resampling, read back at 16 kHz) raises pitch and rate by 1.5.
    n = int(sentence.size / 1.5)
    fast = np.interp(np.arange(n) * 1.5, np.arange(sentence.size), sentence).astype(np.int16)
    slow_cues, fast_cues = prosody(sentence, word_count=8), prosody(fast, word_count=8)
    assert fast_cues.pitch_hz / slow_cues.pitch_hz == pytest.approx(1.5, rel=0.05)
    assert fast_cues.speaking_rate_wps / slow_cues.speaking_rate_wps == pytest.approx(1.5, rel=0.1)


@needs_espeak
def test_espeak_at_220_wpm_is_faster_than_at_120(tmp_path: Path) -> None:
    text = "The quick brown fox jumps over the lazy dog, and then it runs away home."
    slow = prosody(espeak(tmp_path, text, "-s", "120"), word_count=15)
    fast = prosody(espeak(tmp_path, text, "-s", "220"), word_count=15)
    assert fast.speaking_rate_wps > 1.4 * slow.speaking_rate_wps
    assert fast.pitch_hz == pytest.approx(slow.pitch_hz, rel=0.1)


def test_rate_from_word_timings_excludes_pauses() -> None:
    words = [Word("one", 0.0, 0.5), Word("two", 0.5, 1.0), Word("three", 1.6, 2.0),
             Word("four", 2.05, 2.5)]
    # Span 2.5 s minus the 0.6 s pause; the 50 ms gap is not a pause.
    cues = prosody(tone(150.0, 3.0), words=words)
    assert cues.speaking_rate_wps == pytest.approx(4 / 1.9, rel=1e-6)


def test_pauses_are_measured() -> None:
    gap = np.zeros(RATE // 2, dtype=np.int16)
    cues = prosody(np.concatenate([tone(150.0, 0.5), gap, tone(150.0, 0.5)]), word_count=4)
    assert cues.pause_ratio == pytest.approx(1 / 3, abs=0.03)
    assert cues.speech_s == pytest.approx(1.0, abs=0.05)
    assert cues.speaking_rate_wps == pytest.approx(4.0, rel=0.05)


@pytest.mark.parametrize("samples", [0, 1, 160, 400, RATE])
def test_silence_and_tiny_inputs_do_not_crash(samples: int) -> None:
    silent = prosody(np.zeros(samples, dtype=np.int16), word_count=3)
    assert (silent.pitch_hz, silent.voiced_ratio, silent.speaking_rate_wps) == (0, 0, 0)
    assert silent.loudness_dbfs == SILENCE_DBFS
    short = prosody(tone(150.0, samples / RATE))  # 10 ms of tone: too short for a pitch frame
    assert math.isfinite(short.loudness_dbfs)
    tag = analyze(np.zeros(samples, dtype=np.int16), "")
    assert tag.label == "neutral" and 0 <= tag.confidence <= 1
    json.dumps(tag.as_dict(), allow_nan=False)


@needs_shared
@pytest.mark.parametrize(("speaker", "low", "high"), [("spk1", 150, 300), ("spk2", 80, 180)])
def test_real_speaker_pitch(speaker: str, low: float, high: float) -> None:
    # Measured here: spk1 (female) 189-211 Hz per sentence, spk2 (male) 114-150 Hz.
    pitches = [prosody(read_audio(p)[0]).pitch_hz for p in sorted(SPEECH.glob(f"{speaker}_*"))]
    assert len(pitches) == 6
    assert all(low <= p <= high for p in pitches), pitches


@needs_shared
def test_real_speakers_differ_and_lj_is_female() -> None:
    def median(pattern: str) -> float:
        return float(np.median([prosody(read_audio(p)[0]).pitch_hz
                                for p in sorted(SPEECH.glob(pattern))]))

    assert median("spk1_*") > 1.25 * median("spk2_*")
    assert 170 <= median("LJ*") <= 260



def brighter(audio: Int16Array) -> Int16Array:
    """Pre-emphasis (y[n] = x[n] - 0.9 x[n-1]): +6 dB per octave up high, as a pressed voice."""
    x = audio.astype(np.float64)
    y = np.concatenate([x[:1], x[1:] - 0.9 * x[:-1]])
    return np.asarray(np.clip(np.round(y), -32768, 32767), dtype=np.int16)


def test_tilt_does_not_move_with_the_level_and_rises_with_brightness(sentence: Int16Array
                                                                      ) -> None:
    plain = prosody(sentence)
    assert prosody(scaled(sentence, 0.25)).tilt_db == pytest.approx(plain.tilt_db, abs=0.3)
    assert prosody(brighter(sentence)).tilt_db > plain.tilt_db + 6.0


def test_tilt_of_tones() -> None:
    # A 200 Hz sine has nothing above 1 kHz; a sawtooth's harmonic k has power 1/k^2:
    # 1-4 kHz is harmonics 5-19, 0.1-1 kHz harmonics 1-4.
    harmonic = np.arange(1, 20)
    expected = 10 * np.log10((1 / harmonic[4:] ** 2).sum() / (1 / harmonic[:4] ** 2).sum())
    assert prosody(tone(200.0)).tilt_db < -40.0
    assert prosody(tone(200.0, saw=True)).tilt_db == pytest.approx(expected, abs=0.5)


@given(seconds=st.floats(0.0, 2.0), gain=st.floats(0.05, 1.0), seed=st.integers(0, 2**16),
       rate=st.sampled_from([8000, 16000, 24000]))
@settings(max_examples=40, deadline=None)
def test_tilt_of_any_length_is_finite_and_ignores_the_gain(seconds: float, gain: float,
                                                           seed: int, rate: int) -> None:
    rng = np.random.default_rng(seed)
    # Noise shaped to fall off with frequency, a little like a voice.
    noise = np.cumsum(rng.normal(0, 1, int(seconds * rate)))
    if noise.size >= 32:
        noise -= np.convolve(noise, np.ones(32) / 32, mode="same")
    peak = np.abs(noise).max(initial=0.0) + 1e-9
    audio = np.asarray(np.round(noise / peak * 20000), dtype=np.int16)
    full, quiet = prosody(audio, rate=rate), prosody(scaled(audio, gain), rate=rate)
    assert math.isfinite(full.tilt_db) and math.isfinite(quiet.tilt_db)
    if full.speech_s > 0.1 and quiet.speech_s == full.speech_s:
        assert quiet.tilt_db == pytest.approx(full.tilt_db, abs=0.5)
