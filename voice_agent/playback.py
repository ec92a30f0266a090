"""Where playback of the reply is, and what of it the person heard (issue 9).

The reply is paced: sent at most ``playback.lead_ms`` ahead of where the loudspeaker is,
so a barge-in leaves little buffered and the server knows what was heard. Playback is where
the client's last ``playback`` report put it, moved on in real time since; a client that
never reports is taken to play what it gets as it gets it (its buffer runs dry when the
reply pauses, and playback restarts with the next audio).

:class:`PlaybackClock` is that bookkeeping with the clock passed in (no I/O);
:func:`heard_text` cuts a reply's text at the played position. The asyncio side, one
ordered, paced output per session, is :mod:`voice_agent.reply_pump`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class SpokenSpan:
    """One chunk of a reply and where its audio lies, in samples of the turn's reply."""

    text: str
    start: int
    end: int


class PlaybackClock:
    """Playback position of the reply being played, in samples at the output rate.

    ``lead_ms = 0``: unpaced; everything sent counts as played at once. Times are seconds of
    a monotonic clock, passed in."""

    def __init__(self, rate: int, *, lead_ms: int) -> None:
        self.rate = rate
        self.lead = rate * lead_ms // 1000
        self.turn_id: int | None = None
        self.sent = 0
        """Samples of the current reply handed to the client."""
        self._anchor_position = 0
        self._anchor_at = 0.0
        self._paused_at: int | None = None

    @property
    def paced(self) -> bool:
        return self.lead > 0

    @property
    def paused(self) -> bool:
        return self._paused_at is not None

    def begin(self, turn_id: int, now: float) -> None:
        """A new reply starts; the previous one's position is forgotten."""
        self.turn_id, self.sent = turn_id, 0
        self._anchor_position, self._anchor_at, self._paused_at = 0, now, None

    def played(self, now: float) -> int:
        if self._paused_at is not None:
            return self._paused_at
        if not self.paced:
            return self.sent
        moved = round((now - self._anchor_at) * self.rate)
        return min(self.sent, self._anchor_position + max(0, moved))

    def on_sent(self, samples: int, now: float) -> int:
        """``samples`` more were handed to the client; returns how many were queued ahead
        of them (so they play that long from now)."""
        played = self.played(now)
        if played >= self.sent and self._paused_at is None:
            # The client's buffer ran dry (or playback has not begun): it starts again as
            # this audio arrives.
            self._anchor_position, self._anchor_at = self.sent, now
            played = self.sent
        ahead = self.sent - played
        self.sent += samples
        return ahead

    def report(self, turn_id: int, samples: int, now: float) -> None:
        """The client says it has played ``samples`` of ``turn_id``'s reply."""
        if turn_id != self.turn_id or self._paused_at is not None:
            return
        self._anchor_position, self._anchor_at = max(0, min(samples, self.sent)), now

    def wait_s(self, samples: int, now: float) -> float:
        """How long to wait before ``samples`` more may be sent (inf while paused)."""
        if self._paused_at is not None:
            return math.inf
        if not self.paced:
            return 0.0
        ahead = self.sent - self.played(now)
        return max(0.0, (ahead + samples - self.lead) / self.rate)

    def remaining_s(self, now: float) -> float:
        """Until what was sent has been played."""
        return (self.sent - self.played(now)) / self.rate

    def pause(self, now: float) -> int:
        """Stop at the played position; returns it."""
        if self._paused_at is None:
            self._paused_at = self.played(now)
        return self._paused_at

    def resume(self, now: float) -> int:
        """Play on from where it paused: what was sent past that point is sent again (the
        client dropped it). Returns the position."""
        if self._paused_at is None:
            return self.played(now)
        position, self._paused_at = self._paused_at, None
        self.sent = position
        self._anchor_position, self._anchor_at = position, now
        return position


def heard_text(spans: list[SpokenSpan], played: int) -> str:
    """The reply's text up to the last word whose sound was played.

    Within a chunk, words are placed by their share of its characters (speech synthesis
    gives no word times): a word counts as heard once the position passed its estimated end.
    """
    words: list[str] = []
    for span in spans:
        if played >= span.end:
            words.extend(span.text.split())
            continue
        if played > span.start and span.end > span.start:
            fraction = (played - span.start) / (span.end - span.start)
            chunk_words = span.text.split()
            total = sum(len(w) + 1 for w in chunk_words)
            done = 0
            for word in chunk_words:
                done += len(word) + 1
                if done / total > fraction:
                    break
                words.append(word)
        break
    return " ".join(words)
