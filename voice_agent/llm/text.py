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

    A close tag that never comes keeps everything after the open tag out of speech. Tags
    that change nothing are dropped, never spoken: ``<think>`` inside reasoning (a model
    that writes the tag its template already opened) and a stray ``</think>`` outside it.

    ``starts_in_reasoning=None`` is for a stream whose prompt is unknown (an R1 model behind
    an HTTP server: its template may or may not have opened ``<think>``). The text is
    treated as reasoning until a tag decides; a stream that ends without any tag was the
    answer after all, and :meth:`finish` returns it as speech.
    """

    def __init__(self, *, starts_in_reasoning: bool | None = False) -> None:
        self.in_reasoning = starts_in_reasoning is not False
        self._undecided = starts_in_reasoning is None
        self._tentative = ""
        """Text taken for reasoning while undecided: spoken if no tag ever comes."""
        self._held = ""
        self._after_close = False
        """Newlines right after ``</think>`` are dropped, also when they come in later pieces."""

    def feed(self, piece: str) -> Filtered:
        text = self._held + piece
        self._held = ""
        out = Filtered()
        while text:
            if self._after_close:
                text = text.lstrip("\n")
                if not text:
                    break
                self._after_close = False
            found = [(i, tag) for tag in (THINK_OPEN, THINK_CLOSE) if (i := text.find(tag)) >= 0]
            if found:
                index, tag = min(found)
                self._emit(out, text[:index])
                self._undecided = False
                text = text[index + len(tag) :]
                toggles = (tag == THINK_CLOSE) == self.in_reasoning
                if toggles:
                    self.in_reasoning = not self.in_reasoning
                    self._after_close = not self.in_reasoning
                continue
            keep = max(_partial_tag_suffix(text, tag) for tag in (THINK_OPEN, THINK_CLOSE))
            self._emit(out, text[: len(text) - keep])
            self._held = text[len(text) - keep :]
            break
        return out

    def finish(self) -> Filtered:
        out = Filtered()
        if self._undecided:
            out.speech, self._tentative = self._tentative + self._held, ""
            self._undecided = self.in_reasoning = False
        else:
            self._emit(out, self._held)
        self._held = ""
        return out

    def _emit(self, out: Filtered, text: str) -> None:
        if self.in_reasoning:
            out.reasoning += text
            if self._undecided:
                self._tentative += text
        else:
            out.speech += text


class SpanFilter:
    """Drop spans that open with one of ``markers`` (case-insensitive) and end at its
    closer, from streamed text split anywhere.

    For prompt annotations a model echoes back (small models copy an emotion tag line
    into their answer). A span that is never closed ends at the end of its line, or at the
    first character that ``inside`` (a regex character class) does not allow: a model that
    writes ``[speaker: label=sad: I'm sorry…`` loses the tag, not its answer.
    """

    def __init__(self, markers: tuple[tuple[str, str], ...], *, inside: str = r"[^\n]") -> None:
        self._closer_of = {opener.lower(): closer for opener, closer in markers}
        self._openers = re.compile("|".join(re.escape(o) for o, _ in markers), re.IGNORECASE)
        self._outside = re.compile(rf"(?!{inside})(?s:.)")
        self._held = ""
        self._closer: str | None = None
        """The closer of the span being dropped; None outside a span."""

    def feed(self, piece: str) -> str:
        text, self._held = self._held + piece, ""
        out: list[str] = []
        while text:
            if self._closer is not None:
                stop = self._outside.search(text)
                ends = [i for i in (text.find(self._closer), stop.start() if stop else -1,
                                    text.find("\n")) if i >= 0]
                if not ends:
                    break
                end = min(ends)
                closed = text.startswith(self._closer, end)
                text = text[end + (len(self._closer) if closed else 0) :]
                self._closer = None
                continue
            match = self._openers.search(text)
            if match:
                out.append(text[: match.start()])
                text = text[match.end() :]
                self._closer = self._closer_of[match.group().lower()]
                continue
            keep = self._partial_opener(text)
            out.append(text[: len(text) - keep])
            self._held = text[len(text) - keep :]
            break
        return "".join(out)

    def finish(self) -> str:
        held, self._held = self._held, ""
        return held

    def _partial_opener(self, text: str) -> int:
        """Length of the longest suffix of ``text`` that may begin an opener."""
        for length in range(min(len(text), max(map(len, self._closer_of)) - 1), 0, -1):
            tail = text[-length:].lower()
            if any(o.startswith(tail) and len(o) > length for o in self._closer_of):
                return length
        return 0


_ABBREVIATIONS = frozenset(
    {"mr.", "mrs.", "ms.", "dr.", "st.", "vs.", "etc.", "e.g.", "i.e.", "jr.", "sr.", "no."}
)
_SENTENCE_END = re.compile(r"[.!?]+[\"')\]]*\s+|\n+")
_CLAUSE_END = re.compile(r"[,;:]\s+")
_COMPLETE = re.compile(r"[.!?]+[\"')\]]*\s*$")
_MARKUP = re.compile(r"[*#_`~]+")


def ends_sentence(text: str) -> bool:
    """Whether ``text`` (a chunk) ends a sentence, rather than at a clause break or a cut."""
    return bool(_COMPLETE.search(text))


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
        # The buffer always starts a chunk: its leading whitespace is never spoken, and
        # dropping it keeps the length rule independent of how the text was split.
        self._buffer = (self._buffer + text).lstrip()
        chunks: list[str] = []
        while True:
            cut = self._find_cut()
            if cut is None:
                break
            chunk, self._buffer = self._buffer[:cut], self._buffer[cut:].lstrip()
            self._add(chunks, chunk)
        return chunks

    def finish(self) -> list[str]:
        chunks: list[str] = []
        self._add(chunks, self._buffer)
        self._buffer = ""
        return chunks

    def finish_complete(self) -> tuple[list[str], str]:
        """Like :meth:`finish`, for a reply that was cut off (length limit, reply cap): the
        held text becomes a chunk only if it ends a sentence; otherwise it is returned as
        the second item, dropped (a half sentence is never spoken)."""
        held, self._buffer = self._buffer, ""
        if _COMPLETE.search(held):
            chunks: list[str] = []
            self._add(chunks, held)
            return chunks, ""
        return [], held.strip()

    def _add(self, chunks: list[str], chunk: str) -> None:
        cleaned = clean_for_speech(chunk)
        if any(ch.isalnum() for ch in cleaned):
            chunks.append(cleaned)
            self._emitted += 1

    def _find_cut(self) -> int | None:
        """Where the buffer's first chunk ends, or None to wait for more text.

        Each rule fires at the point of the text where streaming would first see it (a
        sentence end once one whitespace follows it, the length rule once the buffer is
        longer than the limit). The earliest wins, sentence over clause over length on a
        tie: the chunks do not depend on how the text was split into pieces.
        """
        candidates: list[tuple[int, int]] = []  # (fires at, cut at)
        for match in _SENTENCE_END.finditer(self._buffer):
            words = self._buffer[: match.start() + 1].split()
            if words and words[-1].lower() in _ABBREVIATIONS:
                continue
            candidates.append((match.start() + len(match.group().rstrip()) + 1, match.end()))
            break
        if self._emitted == 0:
            for match in _CLAUSE_END.finditer(self._buffer):
                if len(self._buffer[: match.start()].split()) >= self._first_min_words:
                    candidates.append((match.start() + 2, match.end()))
                    break
        if len(self._buffer) > self._max_chars:
            space = self._buffer.rfind(" ", 0, self._max_chars)
            candidates.append((self._max_chars + 1, space + 1 if space > 0 else self._max_chars))
        if not candidates:
            return None
        return min(candidates, key=lambda candidate: candidate[0])[1]
