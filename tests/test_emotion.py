"""Emotion cues on audio whose properties are known: tones of known pitch, one sentence at two
levels and two speeds, espeak-ng at two rates, and real speech from ../shared/audio."""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from voice_agent import emotion as emotion_module
from voice_agent.asr import Word
from voice_agent.audio.pcm import Int16Array, read_audio
from voice_agent.emotion import (
    LABELS,
    SILENCE_DBFS,
    EmotionTag,
    EmotionTracker,
    analyze,
    fillers,
    prompt_tag,
    prosody,
    reply_length_scale,
    sentiment,
    warm_up,
)

RATE = 16000
REPO = Path(__file__).resolve().parents[1]
SPEECH = Path(__file__).resolve().parents[2] / "shared" / "audio" / "speech"
needs_shared = pytest.mark.skipif(not SPEECH.is_dir(), reason="../shared/audio is absent")
needs_espeak = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="no espeak-ng")


def tone(freq: float | np.ndarray, seconds: float = 1.0, *, saw: bool = False,
         amp: float = 0.3) -> Int16Array:
    """A tone; ``freq`` may be a per-sample array (a glide), integrated to a phase."""
    n = int(seconds * RATE)
    f = np.broadcast_to(np.asarray(freq, dtype=np.float64), (n,))
    cycles = np.cumsum(f) / RATE
    wave = 2 * (cycles - np.floor(cycles + 0.5)) if saw else np.sin(2 * np.pi * cycles)
    return np.asarray(np.round(amp * 32767 * wave), dtype=np.int16)


def scaled(audio: Int16Array, gain: float) -> Int16Array:
    return np.asarray(np.clip(np.round(audio * gain), -32768, 32767), dtype=np.int16)


def espeak(tmp_path: Path, text: str, *args: str) -> Int16Array:
    out = tmp_path / f"say{len(list(tmp_path.iterdir()))}.wav"
    subprocess.run(["espeak-ng", "-w", str(out), *args, text], check=True, capture_output=True)
    return read_audio(out)[0]


@pytest.fixture(scope="module")
def sentence() -> Int16Array:
    """A real spoken sentence: a human one when ../shared is here, else a project fixture."""
    path = SPEECH / "spk2_snt1.wav"
    return read_audio(path if path.is_file() else REPO / "fixtures" / "utt01.wav")[0]


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


def test_fillers() -> None:
    assert fillers("um I uh think, er, hmm") == 4
    assert fillers("umbrella under her mummy's ermine") == 0
    assert fillers("Ummm, MM, erm... uhh") == 4
    assert fillers("uh-huh, sure") == 0
    assert fillers("嗯，我觉得啊") == 2
    assert fillers("嗯嗯，呃，好的", language="zh") == 2
    assert fillers("wo juede a", language="zh") == 0


def test_sentiment() -> None:
    assert sentiment("I love this, it is wonderful, thank you!") > 0.3
    assert sentiment("This is terrible, I am furious, nothing works!") < -0.3
    assert sentiment("") == 0.0
    assert -1 <= sentiment("ok") <= 1


@needs_espeak
def test_angry_speech_against_calm_speech(tmp_path: Path) -> None:
    angry_text = "This is terrible, I am furious, nothing works!"
    calm_text = "The meeting is at three o'clock in the small room."
    angry = analyze(espeak(tmp_path, angry_text, "-s", "230", "-a", "200", "-p", "70"),
                    angry_text)
    calm = analyze(espeak(tmp_path, calm_text, "-s", "130", "-a", "40", "-p", "40"), calm_text)
    assert angry.label == "angry"
    assert angry.valence < -0.3
    assert calm.label == "neutral"
    assert abs(calm.valence) < 0.25
    assert angry.arousal > calm.arousal + 0.15
    assert angry.prosody.loudness_dbfs > calm.prosody.loudness_dbfs + 10
    assert reply_length_scale(angry) > 1.05
    assert reply_length_scale(calm) == reply_length_scale(EmotionTag()) == 1.0


def test_hesitant_and_chinese() -> None:
    hesitant = analyze(tone(150.0, 2.0), "um I uh think it is, er, the blue one")
    assert hesitant.label == "hesitant" and hesitant.fillers == 3
    chinese = analyze(tone(150.0, 2.0), "嗯，我觉得啊，这个还可以", language="zh")
    assert chinese.fillers == 2
    english = analyze(tone(150.0, 2.0), "I think this one is fine for me")
    assert chinese.confidence < english.confidence  # VADER cannot read Chinese


def test_tracker_scores_a_loud_turn_against_a_quiet_speaker(sentence: Int16Array) -> None:
    text = "We are sure that one war is enough."
    level = prosody(sentence).loudness_dbfs
    quiet = scaled(sentence, 10 ** ((-38 - level) / 20))  # this speaker's habit: -38 dBFS
    loud = scaled(sentence, 10 ** ((-26 - level) / 20))  # typical level, 12 dB over the habit
    quiet_speaker, loud_speaker = EmotionTracker(), EmotionTracker()
    first = analyze(quiet, text, tracker=quiet_speaker)
    for _ in range(7):
        analyze(quiet, text, tracker=quiet_speaker)
        analyze(loud, text, tracker=loud_speaker)
    assert quiet_speaker.turns == 8
    assert first.prosody.loudness_dbfs == pytest.approx(-38, abs=0.5)
    habitual = analyze(quiet, text, tracker=quiet_speaker)
    assert habitual.arousal == pytest.approx(0.5, abs=0.05)  # the speaker's normal is typical
    shouted = analyze(loud, text, tracker=quiet_speaker)
    assert shouted.arousal > habitual.arousal + 0.15
    assert shouted.arousal > analyze(loud, text, tracker=loud_speaker).arousal + 0.1
    assert shouted.arousal > 0.6


TAG = re.compile(r"^\[speaker: label=([a-z]+) valence=(-?\d\.\d\d) arousal=(\d\.\d\d)"
                 r" confidence=(\d\.\d\d)\]$")


def test_prompt_tag_format() -> None:
    tag = EmotionTag(label="angry", valence=-0.6234, arousal=0.806, confidence=0.7)
    assert prompt_tag(tag) == "[speaker: label=angry valence=-0.62 arousal=0.81 confidence=0.70]"
    assert prompt_tag(EmotionTag(valence=-0.001)).endswith("valence=0.00 arousal=0.50"
                                                          " confidence=0.00]")
    assert TAG.match(prompt_tag(analyze(tone(150.0), "Thanks, that is great!")))


@given(
    label=st.sampled_from([*LABELS, "bogus"]),
    valence=st.floats(allow_nan=True, allow_infinity=True),
    arousal=st.floats(allow_nan=True, allow_infinity=True),
    confidence=st.floats(allow_nan=True, allow_infinity=True),
)
def test_reply_rate_and_tag_bounds(label: str, valence: float, arousal: float,
                                    confidence: float) -> None:
    tag = EmotionTag(label=label, valence=valence, arousal=arousal, confidence=confidence)
    scale = reply_length_scale(tag)
    assert 0.85 <= scale <= 1.2
    if label in ("neutral", "bogus"):
        assert scale == 1.0
    match = TAG.match(prompt_tag(tag))
    assert match is not None and match.group(1) in LABELS
    assert -1 <= float(match.group(2)) <= 1 and 0 <= float(match.group(4)) <= 1


def test_a_weak_guess_moves_the_rate_half_as_far() -> None:
    sure = reply_length_scale(EmotionTag(label="angry", confidence=1.0))
    guess = reply_length_scale(EmotionTag(label="angry", confidence=0.0))
    assert sure == pytest.approx(1.12) and guess == pytest.approx(1.06)
    assert reply_length_scale(EmotionTag(label="excited", confidence=1.0)) < 1.0


def test_prosody_of_5_seconds_takes_under_20_ms(sentence: Int16Array) -> None:
    clip = np.resize(sentence, 5 * RATE)
    prosody(clip)
    best = math.inf
    for _ in range(10):
        started = time.perf_counter()
        prosody(clip, word_count=20)
        best = min(best, time.perf_counter() - started)
    assert best < 0.020


def test_warm_up_loads_the_lexicon(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(emotion_module, "_analyzer", None)
    warm_up()
    assert emotion_module._analyzer is not None
