"""Checks that tell a Whisper repetition loop from a transcript (pure functions, no I/O).

Whisper, tiny.en above all, sometimes falls into a loop on short clips and writes the same
word or phrase until its length cap ("5 5 5 5 5 5 5 5 5 5 5" for a spoken "five five").
Three signs, any of which trips :func:`looks_like_loop`:

- the text compresses too well (zlib ratio over a threshold, as openai-whisper and
  faster-whisper judge a decode; it only works for longer texts: a short loop has too few
  bytes for zlib to win on);
- an n-gram of words or of token ids repeats back to back more times than people say one;
- the decode ran into its length cap instead of ending by itself.
"""

from __future__ import annotations

import zlib
from collections.abc import Hashable, Sequence

from voice_agent.wer import normalize

MAX_NGRAM = 4
"""Longest repeated phrase looked for, in words or tokens: loops are short phrases."""


def compression_ratio(text: str) -> float:
    """Bytes of ``text`` over bytes of it zlib-compressed (faster-whisper's measure)."""
    data = text.encode("utf-8")
    if not data:
        return 0.0
    return len(data) / len(zlib.compress(data))


def longest_repeat_run(items: Sequence[Hashable], max_n: int = MAX_NGRAM) -> tuple[int, int]:
    """(n, count) of the n-gram (n ≤ ``max_n``) repeated back to back the most times.

    "a b a b a b c" → (2, 3). Ties go to the shorter n-gram. (0, 0) for an empty sequence.
    """
    best = (0, 0)
    for n in range(1, max_n + 1):
        for start in range(n):
            run, previous = 1, None
            for i in range(start, len(items) - n + 1, n):
                gram = tuple(items[i : i + n])
                run = run + 1 if gram == previous else 1
                previous = gram
                if run > best[1]:
                    best = (n, run)
    return best


def looks_like_loop(
    text: str,
    tokens: Sequence[int] = (),
    *,
    max_repeats: int,
    compression_threshold: float,
    hit_length_cap: bool = False,
) -> str | None:
    """Why the decode looks like a repetition loop, or None when it looks like speech.

    ``max_repeats``: how many times in a row one n-gram may appear ("five five five five"
    is 4); more is a loop.
    """
    if hit_length_cap:
        return "length_cap"
    if compression_ratio(text) > compression_threshold:
        return "compression_ratio"
    for name, items in (("words", normalize(text)), ("tokens", list(tokens))):
        n, count = longest_repeat_run(items)
        if count > max_repeats:
            return f"repeated_{name}:{n}x{count}"
    return None


def collapse_repeats(text: str, max_repeats: int) -> str:
    """``text`` with every back-to-back run of a repeated word n-gram longer than
    ``max_repeats`` cut to one occurrence: the last resort when even the fallback decode
    loops. Works on whitespace words, so the punctuation of the kept words stays. Repeated
    until nothing changes: cutting one run can make its neighbours a new one."""
    while True:
        collapsed = _collapse_once(text, max_repeats)
        if collapsed == text:
            return text
        text = collapsed


def _collapse_once(text: str, max_repeats: int) -> str:
    words = text.split()
    keys = [" ".join(normalize(w)) for w in words]
    out: list[str] = []
    i = 0
    while i < len(words):
        for n in range(1, MAX_NGRAM + 1):
            gram = keys[i : i + n]
            if len(gram) < n or not any(gram):
                continue
            count = 1
            while keys[i + count * n : i + (count + 1) * n] == gram:
                count += 1
            if count > max_repeats:
                out += words[i : i + n]
                i += count * n
                break
        else:
            out.append(words[i])
            i += 1
    return " ".join(out)
