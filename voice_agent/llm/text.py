"""Between the token stream and the voice: drop ``<think>`` reasoning, cut sentences.

Both are incremental and work on arbitrary splits of the text (tags or sentence ends split
across tokens), so they are tested by feeding every split of the same text.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"


@dataclass
class Filtered:
    speech: str = ""
    reasoning: str = ""


def _partial_tag_suffix(text: str, tag: str) -> int:
    """Length of the longest suffix of ``text`` that is a proper prefix of ``tag``."""
    for length in range(min(len(text), len(tag) - 1), 0, -1):
        if text.endswith(tag[:length]):
            return length
    return 0


class ReasoningFilter:
    """Split a streamed reply into speakable text and ``<think>…</think>`` reasoning.

    A close tag that never comes keeps everything after the open tag out of speech.
    """

    def __init__(self, *, starts_in_reasoning: bool = False) -> None:
        self.in_reasoning = starts_in_reasoning
        self._held = ""

    def feed(self, piece: str) -> Filtered:
        text = self._held + piece
        self._held = ""
        out = Filtered()
        while text:
            tag = THINK_CLOSE if self.in_reasoning else THINK_OPEN
            index = text.find(tag)
            if index >= 0:
                self._emit(out, text[:index])
                text = text[index + len(tag) :]
                self.in_reasoning = not self.in_reasoning
                if not self.in_reasoning:
                    text = text.lstrip("\n")
                continue
            keep = _partial_tag_suffix(text, tag)
            self._emit(out, text[: len(text) - keep])
            self._held = text[len(text) - keep :]
            break
        return out

    def finish(self) -> Filtered:
        out = Filtered()
        self._emit(out, self._held)
        self._held = ""
        return out

    def _emit(self, out: Filtered, text: str) -> None:
        if self.in_reasoning:
            out.reasoning += text
        else:
            out.speech += text


_ABBREVIATIONS = frozenset(
    {"mr.", "mrs.", "ms.", "dr.", "st.", "vs.", "etc.", "e.g.", "i.e.", "jr.", "sr.", "no."}
)
_SENTENCE_END = re.compile(r"[.!?]+[\"')\]]*\s+|\n+")
_CLAUSE_END = re.compile(r"[,;:]\s+")
_MARKUP = re.compile(r"[*#_`~]+")


def clean_for_speech(text: str) -> str:
    """Remove markdown symbols a TTS would read out, collapse whitespace."""
    return " ".join(_MARKUP.sub("", text).split())


class SentenceChunker:
    """Cut streamed text into sentences for TTS as soon as each one is complete.

    The first chunk may also end at a clause break (``,;:``) once it has
    ``first_chunk_min_words`` words, so speech starts sooner on long first sentences.
    """

    def __init__(self, *, first_chunk_min_words: int = 6, max_chunk_chars: int = 300) -> None:
        self._buffer = ""
        self._emitted = 0
        self._first_min_words = first_chunk_min_words
        self._max_chars = max_chunk_chars

    def feed(self, text: str) -> list[str]:
        self._buffer += text
        chunks: list[str] = []
        while True:
            cut = self._find_cut()
            if cut is None:
                break
            chunk, self._buffer = self._buffer[:cut], self._buffer[cut:]
            self._add(chunks, chunk)
        return chunks

    def finish(self) -> list[str]:
        chunks: list[str] = []
        self._add(chunks, self._buffer)
        self._buffer = ""
        return chunks

    def _add(self, chunks: list[str], chunk: str) -> None:
        cleaned = clean_for_speech(chunk)
        if any(ch.isalnum() for ch in cleaned):
            chunks.append(cleaned)
            self._emitted += 1

    def _find_cut(self) -> int | None:
        for match in _SENTENCE_END.finditer(self._buffer):
            words = self._buffer[: match.start() + 1].split()
            if words and words[-1].lower() in _ABBREVIATIONS:
                continue
            return match.end()
        if self._emitted == 0:
            for match in _CLAUSE_END.finditer(self._buffer):
                if len(self._buffer[: match.start()].split()) >= self._first_min_words:
                    return match.end()
        if len(self._buffer) > self._max_chars:
            space = self._buffer.rfind(" ", 0, self._max_chars)
            return space + 1 if space > 0 else self._max_chars
        return None
