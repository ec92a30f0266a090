"""What a short burst of sound over the reply was (issue 9): a turn, or not.

Speech over the reply pauses it at once. The burst is transcribed when it pauses or ends, or
once it has gone on for ``barge_in.confirm_ms`` (the echo can go on that long too). It is
*not* a turn when it has no words (a cough, a door, a click), when it is made only of
backchannel words ("yeah", "mm-hm", "right"), or when its words are all (nearly) words of
the reply itself: what got past the echo canceller is the appliance's own voice. Then the
reply resumes where it paused. Anything else is the person taking the turn.

Speech that starts as the reply ends, while the room still rings with it
(``barge_in.echo_tail_ms``), is judged the same way once it is transcribed
(:meth:`BurstJudge.is_turn_after_reply`), but for one thing: after a reply that ended in a
question, "yes" or "okay" is an answer.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from difflib import SequenceMatcher

from voice_agent.config import BargeInConfig


@dataclass(frozen=True)
class BurstWords:
    """What Whisper heard in a burst over the reply."""

    text: str
    """The words, "" when there were none or Whisper made them up (from a cough, or from
    what is left of the echo)."""
    doubted: str = ""
    """Words Whisper doubts (a low log probability) while believing there was speech: a
    person the canceller's suppressor mangled sounds like this, and so does the echo."""


_WORD = re.compile(r"[^\W_]+(?:[-'][^\W_]+)*")


def words_of(text: str) -> list[str]:
    """Lower-case words, punctuation dropped ("Mm-hmm." -> ["mm-hmm"])."""
    return _WORD.findall(text.lower())


class BurstJudge:
    def __init__(self, backchannels: list[str] | None = None,
                 stop_phrases: list[str] | None = None) -> None:
        phrases = backchannels if backchannels is not None else BargeInConfig().backchannels
        self._backchannels = {tuple(words_of(p)) for p in phrases if words_of(p)}
        self._longest = max((len(p) for p in self._backchannels), default=1)
        stops = stop_phrases if stop_phrases is not None else BargeInConfig().stop_phrases
        self._stops = [tuple(words_of(p)) for p in stops if words_of(p)]

    @classmethod
    def configured(cls, config: BargeInConfig) -> BurstJudge:
        return cls(config.backchannels, config.stop_phrases)

    def is_stop(self, text: str) -> bool:
        """Whether the words hold a stop phrase ("oh wait", "stop please")."""
        words = tuple(words_of(text))
        return any(words[i:i + len(stop)] == stop
                   for stop in self._stops for i in range(len(words) - len(stop) + 1))

    def is_backchannel(self, words: list[str]) -> bool:
        """Whether ``words`` split entirely into backchannel phrases ("yeah yeah okay")."""
        if not words:
            return False
        reachable = [True] + [False] * len(words)
        for end in range(1, len(words) + 1):
            reachable[end] = any(
                reachable[end - size] and tuple(words[end - size:end]) in self._backchannels
                for size in range(1, min(self._longest, end) + 1))
        return reachable[-1]

    def is_turn(self, burst_text: str, reply_text: str) -> bool:
        """Whether the burst heard over the reply is the person taking the turn."""
        words = words_of(burst_text)
        if not words or self.is_backchannel(words):
            return False
        return not is_echo(words, words_of(reply_text))

    def is_turn_after_reply(self, text: str, reply_heard: str) -> bool:
        """Whether speech begun in the echo tail of a reply (``reply_heard``: what was
        played of it) is the person's turn rather than what is left of that reply."""
        words = words_of(text)
        if not words or is_echo(words, words_of(reply_heard)):
            return False
        return not self.is_backchannel(words) or reply_heard.rstrip().endswith("?")


ECHO_SIMILARITY = 0.6
"""How alike a heard word and a reply word must be to count as the same: recognition of
what the canceller leaves of the reply gets words nearly right ("truth" for "true")."""


NUMBER_WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine",
                "ten", "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen",
                "seventeen", "eighteen", "nineteen", "twenty"]
"""The reply says "3", the echo is heard as "three"."""


ECHO_RUN_SHARE = 0.7
"""Three or more heard words of which this share run, in order, as in the reply are its
echo even when the rest were misheard ("almost hurt the small bug" for "...almost hurt the
small dog", "I'm here just report for you and" for "I'm here to support you, and"): a
person's own sentence rarely repeats the reply's words in its order. Three words must all
be the reply's, four need three."""


def is_echo(words: list[str], reply_words: list[str]) -> bool:
    """Whether the heard words are the reply's own: every one (nearly) a word of it, or,
    from three words on, most of them a run of it in order (:data:`ECHO_RUN_SHARE`)."""
    vocabulary = set(reply_words) | {NUMBER_WORDS[int(w)] for w in reply_words
                                     if w.isdigit() and int(w) < len(NUMBER_WORDS)}
    if not vocabulary:
        return False
    as_reply = [_nearest(word, vocabulary) for word in words]
    if None not in as_reply:
        return True
    if len(words) < 3:
        return False
    spoken = [NUMBER_WORDS[int(w)] if w.isdigit() and int(w) < len(NUMBER_WORDS) else w
              for w in reply_words]
    blocks = SequenceMatcher(None, as_reply, spoken, autojunk=False).get_matching_blocks()
    return sum(block.size for block in blocks) >= ECHO_RUN_SHARE * len(words)


def _nearest(word: str, vocabulary: set[str]) -> str | None:
    """The reply word ``word`` was (nearly) heard as, if any: the likest (a tie goes to
    the word last in alphabetical order, so the answer never hangs on the set's
    hash-seeded order)."""
    if word in vocabulary:
        return word
    ratio, likest = max((SequenceMatcher(None, word, known).ratio(), known)
                        for known in vocabulary)
    return likest if ratio >= ECHO_SIMILARITY else None
