"""The repetition-loop checks on their own (pure functions)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from voice_agent.repetition import (
    collapse_repeats,
    compression_ratio,
    longest_repeat_run,
    looks_like_loop,
)


def loop(text: str, tokens: list[int] | None = None, *, capped: bool = False) -> str | None:
    return looks_like_loop(text, tokens or [], max_repeats=4, compression_threshold=2.4,
                           hit_length_cap=capped)


@pytest.mark.parametrize(
    ("items", "run"),
    [
        ([], (0, 0)),
        (["a"], (1, 1)),
        (["a", "b", "c"], (1, 1)),
        (["a", "a", "a", "b"], (1, 3)),
        (["a", "b", "a", "b", "a", "b", "c"], (2, 3)),
        (["x", "a", "b", "c", "a", "b", "c"], (3, 2)),
        ([5, 5, 5, 5, 5], (1, 5)),
    ],
)
def test_longest_repeat_run(items: list[object], run: tuple[int, int]) -> None:
    assert longest_repeat_run(items) == run  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "text",
    [
        "5 5 5 5 5 5 5 5 5 5 5 5 5 5 5 5",  # what "five five" came back as
        "5, 5, 5, 5, 5, 5, 5, 5,",
        "the cat the cat the cat the cat the cat sat",
        "I'm going to go I'm going to go I'm going to go I'm going to go I'm going to go",
    ],
)
def test_loops_are_caught(text: str) -> None:
    assert loop(text) is not None


@pytest.mark.parametrize(
    "text",
    [
        "",
        "5 5",
        "555",
        "five five five five",  # four in a row is allowed
        "The child almost hurt the small dog.",
        "Kids are talking by the door.",
        "Hey guys! Hey guys! Hey guys!",
        "I really, really, really want to go.",
        "And it is worth mention in passing that, as an example of fine typography,",
    ],
)
def test_speech_is_not_a_loop(text: str) -> None:
    assert loop(text) is None


def test_long_phrase_loop_is_caught_by_compression() -> None:
    phrase = "thank you very much for watching this video today "
    text = phrase * 6  # a 9-word phrase: longer than the n-gram check looks
    assert compression_ratio(text) > 2.4
    assert loop(text) == "compression_ratio"
    assert compression_ratio("") == 0.0


def test_token_runs_and_length_cap() -> None:
    assert loop("fine", [20, 20, 20, 20, 20]) == "repeated_tokens:1x5"
    assert loop("fine", [20, 21, 20, 21]) is None
    assert loop("fine", [20], capped=True) == "length_cap"


def test_collapse_keeps_one_copy_of_a_runaway_run() -> None:
    assert collapse_repeats("5 5 5 5 5 5 5 5", 4) == "5"
    runaway = "Call me, call me, call me, call me, call me now."
    assert collapse_repeats(runaway, 4) == "Call me, now."
    assert collapse_repeats("five five five five", 4) == "five five five five"
    assert collapse_repeats("The child almost hurt the small dog.", 4) == (
        "The child almost hurt the small dog.")
    assert collapse_repeats("", 4) == ""


@given(st.lists(st.sampled_from(["a", "b", "c", "d", "e"]), max_size=30))
def test_collapse_leaves_no_loop_and_only_removes(words: list[str]) -> None:
    text = " ".join(words)
    collapsed = collapse_repeats(text, 4)
    assert longest_repeat_run(collapsed.split())[1] <= 4
    assert set(collapsed.split()) <= set(words)
    if longest_repeat_run(words)[1] <= 4:
        assert collapsed == text
