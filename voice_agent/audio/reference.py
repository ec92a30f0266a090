"""The echo reference on the microphone's timeline.

What the appliance plays is known ahead of time (a reply is sent a little ahead of the
playback position); the echo canceller needs it frame by frame, in step with the captured
frame whose echo it is. :class:`EchoTimeline` holds the playing audio indexed by input
stream sample: the session :meth:`~EchoTimeline.place`\\ s a piece of reply at the input
sample where it will start playing and :meth:`~EchoTimeline.take`\\ s, before each capture
frame, what plays during it (zeros when nothing does).

Pure numpy, no clock: sample numbers are the clock. Memory is bounded by
``max_ahead_samples`` (a ring buffer of that size); audio placed further ahead than that,
or before what was already taken, is cut and counted, never stored.

Overlapping places **overwrite**: there is one voice to play, so a second placement of the
same span is a correction (re-timed after a client's playback report, or a resumed reply
replacing what was dropped), and adding the two would double the reference the canceller
matches against. The span a place does not cover keeps what it had.
"""

from __future__ import annotations

import numpy as np

from voice_agent.audio.pcm import Int16Array


class EchoTimeline:
    """Reference audio placed on the input stream's sample timeline (16 kHz int16)."""

    def __init__(self, max_ahead_samples: int) -> None:
        if max_ahead_samples <= 0:
            raise ValueError(f"max_ahead_samples must be positive, got {max_ahead_samples}")
        self.max_ahead_samples = max_ahead_samples
        self._ring = np.zeros(max_ahead_samples, dtype=np.int16)
        self._cursor = 0
        """Input sample of the oldest audio still held: everything before it is freed."""
        self._placed_until = 0
        """One past the last sample placed (never less than the cursor)."""
        self.cut_ahead_samples = 0
        """Samples placed beyond ``max_ahead_samples`` ahead of the cursor: dropped."""
        self.cut_late_samples = 0
        """Samples placed before the cursor (their time has passed): dropped."""

    @property
    def cursor(self) -> int:
        """The first input sample still held (the start of the last :meth:`take`)."""
        return self._cursor

    @property
    def placed_until(self) -> int:
        """One past the last placed sample still ahead; equal to :attr:`cursor` when
        nothing more is to be played."""
        return max(self._placed_until, self._cursor)

    def place(self, start_sample: int, samples: Int16Array) -> None:
        """Audio that starts playing at input sample ``start_sample`` (overwrites)."""
        samples = np.asarray(samples, dtype=np.int16).reshape(-1)
        end = start_sample + samples.size
        lo = max(start_sample, self._cursor)
        hi = min(end, self._cursor + self.max_ahead_samples)
        self.cut_late_samples += max(0, min(end, self._cursor) - start_sample)
        self.cut_ahead_samples += max(0, end - max(start_sample, hi))
        if hi <= lo:
            return
        self._write(lo, samples[lo - start_sample: hi - start_sample])
        self._placed_until = max(self._placed_until, hi)

    def take(self, start_sample: int, n: int) -> Int16Array:
        """What plays over input samples ``[start_sample, start_sample + n)``; frees all
        before ``start_sample``. Zeros where nothing was placed or it was already freed."""
        if n < 0:
            raise ValueError(f"n must not be negative, got {n}")
        out = np.zeros(n, dtype=np.int16)
        if start_sample > self._cursor:
            self._advance(start_sample)
        lo = max(start_sample, self._cursor)
        hi = min(start_sample + n, self._cursor + self.max_ahead_samples, self.placed_until)
        if hi > lo:
            out[lo - start_sample: hi - start_sample] = self._read(lo, hi - lo)
        return out

    def clear_from(self, start_sample: int) -> None:
        """Nothing plays from ``start_sample`` on (a reply stopped, its buffered rest
        dropped by the client)."""
        lo = max(start_sample, self._cursor)
        if lo < self._placed_until:
            self._write(lo, np.zeros(self._placed_until - lo, dtype=np.int16))
            self._placed_until = lo

    def _advance(self, new_cursor: int) -> None:
        # Zero what is freed so a later place into that ring slot starts from silence.
        freed_until = min(new_cursor, self._placed_until)
        if freed_until > self._cursor:
            self._write(self._cursor, np.zeros(freed_until - self._cursor, dtype=np.int16))
        self._cursor = new_cursor

    def _write(self, start: int, data: Int16Array) -> None:
        size = self.max_ahead_samples
        at = start % size
        first = min(data.size, size - at)
        self._ring[at: at + first] = data[:first]
        self._ring[: data.size - first] = data[first:]

    def _read(self, start: int, n: int) -> Int16Array:
        size = self.max_ahead_samples
        at = start % size
        first = min(n, size - at)
        return np.concatenate([self._ring[at: at + first], self._ring[: n - first]])


class InputGaps:
    """Where a client stopped sending: audio that arrives later than real time allows.

    A client on an open microphone streams all the time, so its input timeline keeps step
    with the loudspeaker's. A half-duplex client (push-to-talk, a page that stops its
    microphone while the reply plays, a script) sends nothing for the length of a reply, and
    on the input timeline that reply would still be waiting to be cancelled out of the next
    thing the person says. :meth:`arrived` tells how long the input was missing, so the
    session moves the echo timeline past what played meanwhile.

    Lateness below ``max_late_s`` is jitter (a network burst) and is let through; a slow
    drift (a client a little under real time) is absorbed at half of it, so it never adds
    up to a gap. Times are seconds of a monotonic clock, passed in."""

    def __init__(self, rate: int, *, max_late_s: float) -> None:
        if rate <= 0 or max_late_s <= 0:
            raise ValueError("rate and max_late_s must be positive")
        self.rate = rate
        self.max_late_s = max_late_s
        self._due: float | None = None
        """When the last sample received would have been captured by a continuous stream."""

    def arrived(self, samples: int, now: float) -> int:
        """``samples`` (at ``rate``) arrived at ``now``; returns how many samples of real
        time went by with no input before them (0 when the stream was continuous)."""
        duration = samples / self.rate
        if self._due is None:
            self._due = now
            return 0
        late = now - duration - self._due
        if late > self.max_late_s:
            self._due = now
            return round(late * self.rate)
        # Ahead of real time (a file sent fast) is held to the jitter allowance, so a pause
        # after it is still seen; a little behind is drift, absorbed.
        self._due = min(max(self._due + duration, now - self.max_late_s / 2),
                        now + self.max_late_s)
        return 0
