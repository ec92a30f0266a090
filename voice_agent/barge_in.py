"""What a short burst of sound over the reply was (issue 9): a turn, or not.

Speech over the reply pauses it at once. The burst is transcribed when it pauses or ends, or
once it has gone on for ``barge_in.confirm_ms`` (the echo can go on that long too). It is
*not* a turn when it has no words (a cough, a door, a click), when it is made only of
backchannel words ("yeah", "mm-hm", "right"), or when its words are all (nearly) words of
the reply itself: what got past the echo canceller is the appliance's own voice. Then the
reply resumes where it paused. Anything else is the person taking the turn.
"""

from __future__ import annotations

import re
from difflib import SequenceMatcher

from voice_agent.config import BargeInConfig

_WORD = re.compile(r"[^\W_]+(?:[-'][^\W_]+)*")


def words_of(text: str) -> list[str]:
    """Lower-case words, punctuation dropped ("Mm-hmm." -> ["mm-hmm"])."""
    return _WORD.findall(text.lower())


class BurstJudge:
    def __init__(self, backchannels: list[str] | None = None) -> None:
        phrases = backchannels if backchannels is not None else BargeInConfig().backchannels
        self._backchannels = {tuple(words_of(p)) for p in phrases if words_of(p)}
        self._longest = max((len(p) for p in self._backchannels), default=1)

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


ECHO_SIMILARITY = 0.6
"""How alike a heard word and a reply word must be to count as the same: recognition of
what the canceller leaves of the reply gets words nearly right ("truth" for "true")."""


NUMBER_WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine",
                "ten", "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen",
                "seventeen", "eighteen", "nineteen", "twenty"]
"""The reply says "3", the echo is heard as "three"."""


def is_echo(words: list[str], reply_words: list[str]) -> bool:
    """Whether every heard word is (nearly) a word of the reply: its echo, not a person."""
    vocabulary = set(reply_words) | {NUMBER_WORDS[int(w)] for w in reply_words
                                     if w.isdigit() and int(w) < len(NUMBER_WORDS)}
    return bool(vocabulary) and all(
        word in vocabulary or any(SequenceMatcher(None, word, known).ratio() >= ECHO_SIMILARITY
                                  for known in vocabulary)
        for word in words)
