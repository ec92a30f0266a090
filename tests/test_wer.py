"""Word error rate: normalisation, edit distance, pooled rate."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from voice_agent.wer import edit_distance, normalize, pooled_word_error_rate, word_error_rate


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("Hello, World!", ["hello", "world"]),
        ("It's a well-known fact.", ["it's", "a", "well", "known", "fact"]),
        ("  'quoted'  words ", ["quoted", "words"]),
        ("Room 101: 3.5 m²", ["room", "101", "3", "5", "m"]),
        ("— ... !!!", []),
        ("", []),
    ],
)
def test_normalize(text: str, words: list[str]) -> None:
    assert normalize(text) == words


def test_edit_distance_counts_each_kind_of_error() -> None:
    assert edit_distance([], []) == 0
    assert edit_distance(["a", "b"], ["a", "b"]) == 0
    assert edit_distance(["a", "b", "c"], ["a", "x", "c"]) == 1  # substitution
    assert edit_distance(["a", "b"], ["a", "x", "b"]) == 1  # insertion
    assert edit_distance(["a", "b", "c"], ["a", "c"]) == 1  # deletion
    assert edit_distance(["a", "b"], []) == 2
    assert edit_distance([], ["a", "b", "c"]) == 3
    assert edit_distance(list("kitten"), list("sitting")) == 3


def test_word_error_rate_ignores_case_and_punctuation() -> None:
    assert word_error_rate("The child almost hurt the small dog.",
                           "the child, almost hurt the small dog") == 0.0


@pytest.mark.parametrize(
    ("reference", "hypothesis", "rate"),
    [
        ("one two three four", "one too three four", 0.25),  # 1 substitution
        ("one two three four", "one two three four five six", 0.5),  # 2 insertions
        ("one two three four", "one four", 0.5),  # 2 deletions
        ("one two three four", "", 1.0),
        ("one two", "three four five six", 2.0),  # more errors than words
        ("", "", 0.0),
        ("", "hallucinated words", 2.0),  # no reference words: errors over 1
    ],
)
def test_word_error_rate_examples(reference: str, hypothesis: str, rate: float) -> None:
    assert word_error_rate(reference, hypothesis) == pytest.approx(rate)


def test_pooled_rate_weights_by_reference_length() -> None:
    pairs = [
        ("one", "two"),  # 1 error in 1 word
        ("a b c d e f g h i", "a b c d e f g h i"),  # 0 errors in 9 words
    ]
    assert pooled_word_error_rate(pairs) == pytest.approx(0.1)
    # The mean of per-utterance rates would be 0.5: pooling is not averaging.
    assert pooled_word_error_rate([]) == 0.0
    assert pooled_word_error_rate(iter(pairs)) == pytest.approx(0.1)


words = st.lists(st.sampled_from(["a", "b", "c", "d"]), max_size=8)


@given(words, words)
def test_edit_distance_is_a_symmetric_bounded_metric(x: list[str], y: list[str]) -> None:
    distance = edit_distance(x, y)
    assert distance == edit_distance(y, x)
    assert abs(len(x) - len(y)) <= distance <= max(len(x), len(y))
    assert (distance == 0) == (x == y)
