"""Word error rate, for tests and benchmarks of recognition quality."""

from __future__ import annotations

import re
from collections.abc import Iterable

_NON_WORD = re.compile(r"[^a-z0-9' ]+")


def normalize(text: str) -> list[str]:
    """Lower-case words without punctuation (apostrophes kept, hyphens split)."""
    cleaned = _NON_WORD.sub(" ", text.lower().replace("-", " "))
    return [w.strip("'") for w in cleaned.split() if w.strip("'")]


def edit_distance(reference: list[str], hypothesis: list[str]) -> int:
    previous = list(range(len(hypothesis) + 1))
    for i, ref_word in enumerate(reference, 1):
        current = [i] + [0] * len(hypothesis)
        for j, hyp_word in enumerate(hypothesis, 1):
            current[j] = min(
                previous[j] + 1,
                current[j - 1] + 1,
                previous[j - 1] + (ref_word != hyp_word),
            )
        previous = current
    return previous[-1]


def word_error_rate(reference: str, hypothesis: str) -> float:
    ref = normalize(reference)
    return edit_distance(ref, normalize(hypothesis)) / max(1, len(ref))


def pooled_word_error_rate(pairs: Iterable[tuple[str, str]]) -> float:
    """Total word edits over total reference words across (reference, hypothesis) pairs."""
    errors = words = 0
    for reference, hypothesis in pairs:
        ref = normalize(reference)
        errors += edit_distance(ref, normalize(hypothesis))
        words += len(ref)
    return errors / max(1, words)
