"""The speaker's baseline: typical values by gender range first, then their own, learned fast
and robust to a few agitated turns."""

from __future__ import annotations

import pytest

from voice_agent.prosody import Prosody
from voice_agent.voice_baseline import TYPICAL, EmotionTracker, typical_pitch_hz


def turn(loudness: float = -30.0, pitch: float = 120.0, tilt: float = -8.0,
         rate: float = 3.0) -> Prosody:
    return Prosody(pitch_hz=pitch, pitch_range_semitones=6.0, loudness_dbfs=loudness,
                   speaking_rate_wps=rate, speech_s=2.0, tilt_db=tilt)


def test_typical_pitch_by_gender_range() -> None:
    assert typical_pitch_hz(0.0) == 0.0
    assert typical_pitch_hz(100.0) == typical_pitch_hz(150.0) == 120.0
    assert typical_pitch_hz(180.0) == typical_pitch_hz(260.0) == 205.0


def test_before_any_turn_the_reference_is_typical() -> None:
    tracker = EmotionTracker()
    low, high = tracker.reference(pitch_hz=110.0), tracker.reference(pitch_hz=230.0)
    assert (low.pitch_hz, high.pitch_hz) == (120.0, 205.0)
    assert low.loudness_dbfs == TYPICAL.loudness_dbfs and low.tilt_db == TYPICAL.tilt_db
    assert low.turns == 0 and low.own_weight == 0.0
    assert tracker.reference().pitch_hz == 0.0  # no pitch heard: none to compare with


def test_the_baseline_is_learned_in_a_few_turns() -> None:
    tracker = EmotionTracker(prior_turns=2.0)
    for _ in range(2):
        tracker.update(turn(loudness=-44.0))
    reference = tracker.reference(pitch_hz=120.0)
    assert reference.turns == 2 and reference.own_weight == pytest.approx(0.5)
    assert reference.loudness_dbfs == pytest.approx((TYPICAL.loudness_dbfs - 44.0) / 2)
    for _ in range(18):
        tracker.update(turn(loudness=-44.0))
    assert tracker.reference().loudness_dbfs == pytest.approx(-44.0, abs=2.0)


def test_a_few_shouted_turns_barely_move_it() -> None:
    tracker = EmotionTracker()
    for index in range(12):
        tracker.update(turn(loudness=-25.0 if index % 4 == 0 else -40.0, pitch=115.0))
    # A running mean would sit near -36 dB; the resting voice is -40.
    reference = tracker.reference(pitch_hz=115.0)
    assert reference.loudness_dbfs == pytest.approx(-40.0 + 2 / 14 * (-26.0 + 40.0), abs=0.5)


def test_a_mans_raised_voice_is_judged_by_his_own_range() -> None:
    tracker = EmotionTracker()
    tracker.update(turn(pitch=110.0))
    # 210 Hz alone would pass for a woman's calm voice; after his 110 Hz turn it is not.
    reference = tracker.reference(pitch_hz=210.0)
    assert reference.pitch_hz < 120.0


def test_old_turns_are_forgotten_and_silent_ones_ignored() -> None:
    tracker = EmotionTracker(history=5, prior_turns=0.0)
    for _ in range(5):
        tracker.update(turn(loudness=-30.0))
    for _ in range(5):
        tracker.update(turn(loudness=-45.0))
    tracker.update(Prosody())  # nothing active: no turn of the baseline
    assert tracker.turns == 5
    assert tracker.reference().loudness_dbfs == pytest.approx(-45.0)


def test_a_turn_without_pitch_or_words_keeps_what_it_has() -> None:
    tracker = EmotionTracker(prior_turns=0.0)
    tracker.update(turn(loudness=-35.0, pitch=0.0, rate=0.0))  # a whisper, no transcript
    reference = tracker.reference(pitch_hz=120.0)
    assert reference.loudness_dbfs == pytest.approx(-35.0)
    assert reference.pitch_hz == 120.0 and reference.speaking_rate_wps == TYPICAL.speaking_rate_wps


@pytest.mark.parametrize("kwargs", [{"history": 0}, {"prior_turns": -1.0}, {"quantile": 1.5}])
def test_bad_settings_are_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="history"):
        EmotionTracker(**kwargs)  # type: ignore[arg-type]
