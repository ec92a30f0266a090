"""What a short burst of sound over the reply was (issue 9): a turn, or not.

Speech over the reply pauses it at once. A burst that ends before ``barge_in.confirm_ms`` is
transcribed, and it is *not* a turn when it has no words (a cough, a door, a click), when it
is made only of backchannel words ("yeah", "mm-hm", "right"), or when its words are all in
the reply itself: what got past the echo canceller is the appliance's own voice. Then the
reply resumes where it paused. Anything else is the person taking the turn.
"""

from __future__ import annotations

import re

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
        return not set(words) <= set(words_of(reply_text))  # all in the reply: its echo
