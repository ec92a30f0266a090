"""The emotion note the model is given, and the sentences about it that are never spoken."""

from __future__ import annotations

import pytest

from voice_agent.emotion import LABELS, MIN_WORDING_CONFIDENCE, EmotionTag
from voice_agent.prompt import mentions_tag, tag_note, tag_rules


@pytest.mark.parametrize("sentence", [
    "This sentence is a mix of both neutral valence (-0.03) and low arousal.",
    "Your arousal is high.",
    "The speaker: label=sad.",
    "[tone: angry]",
    "It has a confidence of 0.81.",
    "With confidence=0.70 I would say so.",
    "This was labeled as neutral.",
    "The happy label fits.",
    "The emotion tag says you are upset.",
    "I see the line in square brackets.",
])
def test_sentences_about_the_tag_are_recognized(sentence: str) -> None:
    assert mentions_tag(sentence)


@pytest.mark.parametrize("sentence", [
    "It opens at nine.",
    "Check the label on the bottle: take two a day.",
    "Confidence comes with practice.",
    "I have full confidence in you.",
    "I'm happy to help, and I'm sorry you feel sad.",
    "Take a neutral stance in the meeting.",
    "The speaker at the event was great.",
])
def test_ordinary_answers_are_not_taken_for_tag_talk(sentence: str) -> None:
    assert not mentions_tag(sentence)


def test_only_a_confident_non_neutral_label_is_sent() -> None:
    sure = MIN_WORDING_CONFIDENCE
    assert tag_note(EmotionTag(label="angry", valence=-0.6, arousal=0.8, confidence=sure)) == (
        "[tone: angry]")
    assert tag_note(EmotionTag(label="angry", confidence=sure - 0.01)) == ""
    assert tag_note(EmotionTag(label="neutral", confidence=1.0)) == ""
    for label in LABELS:
        note = tag_note(EmotionTag(label=label, confidence=1.0))
        assert note in ("", f"[tone: {label}]")
        assert not any(word in note for word in ("valence", "arousal", "confidence"))


def test_every_wording_rule_names_its_label() -> None:
    rules = tag_rules()
    assert all(f"if {label}," in rules for label in LABELS if label != "neutral")
