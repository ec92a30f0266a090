"""Emotion tags on audio whose properties are known: espeak-ng angry and calm, one real
sentence said higher, louder, brighter or quieter, and tones (the acted clips of
../shared/audio/emotion are in test_bench_emotion.py)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.voices import espeak, needs_espeak, raised, scaled, tone
from voice_agent import emotion as emotion_module
from voice_agent.audio.pcm import Int16Array
from voice_agent.emotion import (
    LABELS,
    EmotionTag,
    EmotionTracker,
    analyze,
    fillers,
    prompt_tag,
    reply_length_scale,
    sentiment,
    warm_up,
)
from voice_agent.prosody import prosody


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


def test_warm_up_loads_the_lexicon(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(emotion_module, "_analyzer", None)
    warm_up()
    assert emotion_module._analyzer is not None


NEUTRAL_WORDS = "The bus leaves from the corner at nine."


def said(sentence: Int16Array, *, semitones: float = 0.0, gain_db: float = 0.0,
         bright: bool = False) -> Int16Array:
    """The sentence in a speaker's usual voice (-38 dBFS), or higher, louder, brighter."""
    return raised(sentence, semitones=semitones, level_dbfs=-38 + gain_db, bright=bright)


@pytest.fixture
def known_speaker(sentence: Int16Array) -> EmotionTracker:
    """A speaker heard saying neutral words five times in their usual voice (-38 dBFS)."""
    tracker = EmotionTracker()
    for _ in range(5):
        analyze(said(sentence), NEUTRAL_WORDS, tracker=tracker)
    return tracker


def test_the_voice_decides_when_the_words_are_neutral(sentence: Int16Array,
                                                      known_speaker: EmotionTracker) -> None:
    usual = analyze(said(sentence), NEUTRAL_WORDS, tracker=known_speaker)
    assert (usual.label, usual.decided_by) == ("neutral", "voice")
    assert usual.arousal == pytest.approx(0.5, abs=0.1)
    shouted = analyze(said(sentence, semitones=4, gain_db=12, bright=True), NEUTRAL_WORDS,
                      tracker=known_speaker)
    assert (shouted.label, shouted.decided_by) == ("angry", "voice"), shouted.cues
    assert shouted.arousal > 0.75 and reply_length_scale(shouted) > 1.05
    lively = analyze(said(sentence, semitones=4, gain_db=4), NEUTRAL_WORDS,
                     tracker=known_speaker)
    assert lively.label == "excited" and reply_length_scale(lively) < 1.0, lively.cues
    subdued = analyze(said(sentence, semitones=3, gain_db=-10), NEUTRAL_WORDS,
                      tracker=known_speaker)
    assert subdued.label == "sad" and subdued.arousal < 0.5, subdued.cues
    assert reply_length_scale(subdued) > 1.05


def test_clear_words_still_decide(sentence: Int16Array, known_speaker: EmotionTracker) -> None:
    thanks = "This is wonderful, thank you so much!"
    shouted = analyze(said(sentence, semitones=4, gain_db=12, bright=True), thanks,
                      tracker=known_speaker)
    assert (shouted.label, shouted.decided_by) == ("excited", "words")


def test_the_tag_shows_each_cue_against_the_baseline(sentence: Int16Array,
                                                     known_speaker: EmotionTracker) -> None:
    tag = analyze(said(sentence, gain_db=10), NEUTRAL_WORDS, tracker=known_speaker)
    basis = tag.as_dict()["basis"]
    assert {"loudness", "pitch", "pitch_range", "tilt", "rate", "text"} <= basis.keys()
    loudness = basis["loudness"]
    assert loudness["value"] == pytest.approx(-28.0, abs=0.5)
    # Five turns at -38 dBFS against two turns' worth of the typical -26.
    assert loudness["baseline"] == pytest.approx(-26.0 + 5 / 7 * (-38.0 + 26.0), abs=0.5)
    assert loudness["score"] == pytest.approx((loudness["value"] - loudness["baseline"]) / 5,
                                              abs=0.01)
    assert tag.baseline_turns == 5 and tag.as_dict()["decided_by"] == "voice"
