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
_TOKEN = re.compile(r"\S+")
_EDGES = "\"'()[]{}*_`~#"

_JOINS = frozenset({
    # Conjunctions, relative and question words, prepositions: a phrase starts here, so a
    # cut before one sounds like a breath, not a stumble. (Not "of" or "to": "a cup of
    # tea" and "I'd like to" are units.)
    "and", "but", "or", "nor", "so", "yet", "because", "since", "although", "though", "while",
    "whereas", "unless", "until", "if", "when", "whenever", "where", "wherever", "whether",
    "after", "before", "as", "than", "once", "which", "who", "whom", "whose", "that", "what",
    "how", "why", "at", "in", "on", "for", "with", "from", "by", "about", "into", "onto",
    "over", "under", "through", "during", "without", "within", "between", "among", "around",
    "across", "near", "like", "per", "via",
})
_BINDS = _JOINS | {
    # Words that lean on the next one: a first chunk never ends with one (the voice would
    # drop its pitch on "the" or "is").
    "a", "an", "the", "this", "these", "those", "my", "your", "his", "her", "its", "our",
    "their", "some", "any", "no", "every", "each", "another", "such", "of", "to", "i", "you",
    "we", "they", "he", "she", "it", "there", "is", "are", "was", "were", "be", "been",
    "being", "am", "will", "would", "can", "could", "shall", "should", "may", "might", "must",
    "do", "does", "did", "have", "has", "had", "not", "very", "really", "quite", "just", "too",
    "more", "most", "less", "least", "much", "mr", "mrs", "ms", "dr", "st",
}
_LEANS_BACK = frozenset({
    # Object pronouns lean on the word before them: "I'll call | you" sounds cut off.
    "me", "you", "him", "her", "it", "us", "them",
})
_NUMBER_WORDS = frozenset({
    "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
    "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen",
    "nineteen", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety",
    "hundred", "thousand", "million", "billion", "trillion", "half", "quarter", "point",
})
_UNITS = frozenset({
    # Said as part of the number before them: "five | dollars" splits one amount.
    "percent", "dollars", "dollar", "cents", "euros", "pounds", "am", "pm", "a.m.", "p.m.",
    "o'clock", "degrees", "minutes", "hours", "days", "weeks", "years", "miles", "kilometers",
})
_LEANING_SUFFIXES = ("'s", "'re", "'m", "'ll", "'ve", "'d", "n't", "’s", "’re", "’m", "’ll",
                     "’ve", "’d", "n’t")


def ends_sentence(text: str) -> bool:
    """Whether ``text`` (a chunk) ends a sentence, rather than at a clause break or a cut."""
    return bool(_COMPLETE.search(text))


def clean_for_speech(text: str) -> str:
    """Remove markdown symbols a TTS would read out, collapse whitespace."""
    return " ".join(_MARKUP.sub("", text).split())


def _bare(token: str) -> str:
    return token.strip(_EDGES).lower()


def _numeric(token: str) -> bool:
    bare = _bare(token).strip(",;:!?")
    return any(ch.isdigit() for ch in bare) or bare in _NUMBER_WORDS


def _may_end_first_chunk(last: str, following: str | None) -> bool:
    """Whether a first chunk may end after ``last`` (the word after it is ``following``,
    None if not seen yet): never inside a number or after an abbreviation, never on a word
    that leans on the next one."""
    bare = _bare(last)
    if not any(ch.isalnum() for ch in bare) or bare.endswith(("-", "/")):
        return False
    if bare.endswith(".") or bare in _BINDS or bare.endswith(_LEANING_SUFFIXES):
        return False  # "Dr.", "U.S." (a real sentence end is cut by the sentence rule)
    if following is None:
        return True
    after = _bare(following)
    if _numeric(last) and (_numeric(following) or after in _UNITS or after == "and"):
        return False  # inside a number: "twenty | five", "9 | am", "a hundred | and five"
    if bare in _UNITS and after == "and":
        return False  # "five dollars | and fifty cents"
    return any(ch.isalnum() for ch in following) and after not in _LEANS_BACK


class SentenceChunker:
    """Cut streamed text into sentences for TTS as soon as each one is complete.

    The first chunk is what the person waits for, so it does not wait for a sentence end:
    it may end at a clause break (``,;:``) once it has ``first_chunk_min_words`` words, and
    with no punctuation it is cut at a word boundary after a few words. That cut is made
    before a conjunction, preposition or relative word (``and``, ``at``, ``which``…) when
    one comes after ``first_chunk_min_words`` words, decided once the word after it has
    begun; otherwise at the latest allowed boundary up to ``first_chunk_max_words``, decided
    once two words past that have begun. Either way at least two words of the sentence are
    left, so a short sentence stays whole. It never ends on a number, an abbreviation, or a
    word that leans on the next (``the``, ``is``, ``my``). Such a chunk does not
    :func:`end a sentence <ends_sentence>`: the turn speaks the rest of that sentence too.
    Later chunks are whole sentences (cut at a space only past ``max_chunk_chars``).
    ``first_chunk_max_words=0`` turns the word cut off; :meth:`force_first` is the cut a
    turn's clock may ask for.

    Every rule fires at the point of the text where streaming would first see it, so the
    chunks do not depend on how the text is split into pieces.
    """

    def __init__(self, *, first_chunk_min_words: int = 3, first_chunk_max_words: int = 6,
                 max_chunk_chars: int = 300) -> None:
        self._buffer = ""
        self._emitted = 0
        self._first_min_words = max(1, first_chunk_min_words)
        self._first_max_words = first_chunk_max_words
        self._max_chars = max_chunk_chars

    @property
    def first_pending(self) -> bool:
        """No chunk has been cut yet."""
        return self._emitted == 0

    def feed(self, text: str) -> list[str]:
        # The buffer always starts a chunk: its leading whitespace is never spoken, and
        # dropping it keeps the length rule independent of how the text was split.
        self._buffer = (self._buffer + text).lstrip()
        chunks: list[str] = []
        while True:
            cut = self._find_cut()
            if cut is None:
                break
            self._take(chunks, cut)
        return chunks

    def force_first(self) -> list[str]:
        """Cut the first chunk now from the words complete so far, for a turn whose model is
        slow to write them (a clock the chunker does not have decides when).

        Returns the chunk (a list of one) when no chunk has been cut yet and at least
        ``first_chunk_min_words`` words are complete with an allowed boundary among them
        (the latest one); otherwise nothing, and the text stays buffered."""
        if not self.first_pending:
            return []
        tokens = list(_TOKEN.finditer(self._buffer))
        complete = len(tokens) if self._buffer[-1:].isspace() else len(tokens) - 1
        for k in range(complete, self._first_min_words - 1, -1):
            following = tokens[k].group() if k < len(tokens) else None
            if _may_end_first_chunk(tokens[k - 1].group(), following):
                chunks: list[str] = []
                self._take(chunks, tokens[k - 1].end())
                return chunks
        return []

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

    def _take(self, chunks: list[str], cut: int) -> None:
        chunk, self._buffer = self._buffer[:cut], self._buffer[cut:].lstrip()
        self._add(chunks, chunk)

    def _add(self, chunks: list[str], chunk: str) -> None:
        cleaned = clean_for_speech(chunk)
        if any(ch.isalnum() for ch in cleaned):
            chunks.append(cleaned)
            self._emitted += 1

    def _find_cut(self) -> int | None:
        """Where the buffer's first chunk ends, or None to wait for more text.

        Each rule fires at the point of the text where streaming would first see it (a
        sentence end once one whitespace follows it, a word cut once the first letter of
        the word that decides it, the length rule once the buffer is longer than the
        limit). The earliest wins, sentence over clause over word over length on a tie: the
        chunks do not depend on how the text was split into pieces.
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
            if self._first_max_words > 0:
                candidates.extend(self._word_cut())
        if len(self._buffer) > self._max_chars:
            space = self._buffer.rfind(" ", 0, self._max_chars)
            candidates.append((self._max_chars + 1, space + 1 if space > 0 else self._max_chars))
        if not candidates:
            return None
        return min(candidates, key=lambda candidate: candidate[0])[1]

    def _word_cut(self) -> list[tuple[int, int]]:
        """The first chunk's cuts at a word boundary, for text without punctuation: (fires
        at, cut at) pairs, possibly none yet. A cut ``k`` makes ``words[:k]`` the chunk; a
        word is known complete once the next one has begun."""
        tokens = list(_TOKEN.finditer(self._buffer))
        low, high = self._first_min_words, max(self._first_max_words, self._first_min_words)

        def allowed(k: int) -> bool:
            return _may_end_first_chunk(tokens[k - 1].group(), tokens[k].group())

        def fires(j: int) -> int:
            return tokens[j].start() + 1  # the first character of word j is seen

        candidates: list[tuple[int, int]] = []
        # Before a joining word, decided once the word after it has begun too (a short
        # sentence such as "It opens at nine." stays whole).
        for k in range(low, len(tokens) - 2):
            if _bare(tokens[k].group()) in _JOINS and allowed(k):
                candidates.append((fires(k + 2), tokens[k - 1].end()))
                break
        # Otherwise the latest allowed boundary up to the maximum, once two words past it
        # have begun (the rest of the sentence is never one word); with none allowed there,
        # the first one past the maximum.
        if len(tokens) > high + 1:
            latest = next((k for k in range(high, low - 1, -1) if allowed(k)), None)
            if latest is not None:
                candidates.append((fires(high + 1), tokens[latest - 1].end()))
            else:
                later = next((k for k in range(high + 1, len(tokens) - 1) if allowed(k)), None)
                if later is not None:
                    candidates.append((fires(later + 1), tokens[later - 1].end()))
        return candidates
