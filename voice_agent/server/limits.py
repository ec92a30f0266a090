"""Caps that keep one client from taking the appliance from everyone else.

Pure bookkeeping, no I/O: every time-dependent decision takes ``now`` (seconds on a
monotonic clock) from the caller, so each rule is tested without sockets or sleeps.

- :class:`AddressCounter`: open WebSocket connections per client address (started or not).
- :class:`SessionSlots`: started sessions; a socket that never sends ``start`` never takes one.
- :class:`InputPacer`: audio faster than ``speed`` x real time (after a burst) is refused.
- :class:`TurnRate`: utterances per sliding minute per session.
- :class:`SessionTimer`: the idle timeout and the maximum session length.
"""

from __future__ import annotations

from collections import Counter, deque


class AddressCounter:
    """Open connections per client address, at most ``limit`` each."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._open: Counter[str] = Counter()

    def full(self, address: str) -> bool:
        return self._open[address] >= self.limit

    def acquire(self, address: str) -> bool:
        """Count one more connection from ``address``; False (not counted) when at the cap."""
        if self.full(address):
            return False
        self._open[address] += 1
        return True

    def release(self, address: str) -> None:
        self._open[address] -= 1
        if self._open[address] <= 0:
            del self._open[address]  # the table never grows with addresses that left

    def count(self, address: str) -> int:
        return self._open[address]


class SessionSlots:
    """Started sessions, at most ``limit``."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.active = 0

    def claim(self) -> bool:
        if self.active >= self.limit:
            return False
        self.active += 1
        return True

    def release(self) -> None:
        self.active = max(0, self.active - 1)


class InputPacer:
    """A token bucket over stream time: a client may send audio at ``speed`` times real time,
    plus ``burst_s`` seconds ahead (a file sent fast, network jitter). Audio beyond that is
    refused, so its DSP never runs; refused audio does not use up the allowance.

    ``speed <= 0`` turns the pacer off.
    """

    def __init__(self, speed: float, burst_s: float, now: float) -> None:
        self.speed = speed
        self.burst_s = burst_s
        self._tokens = burst_s
        self._last = now

    def admit(self, seconds: float, now: float) -> bool:
        """May ``seconds`` of audio arriving at ``now`` be processed?"""
        if self.speed <= 0:
            return True
        self._tokens = min(self.burst_s, self._tokens + (now - self._last) * self.speed)
        self._last = now
        if seconds > self._tokens:
            return False
        self._tokens -= seconds
        return True


class TurnRate:
    """At most ``limit`` turns in any ``window_s`` (sliding) per session."""

    def __init__(self, limit: int, window_s: float = 60.0) -> None:
        self.limit = limit
        self.window_s = window_s
        self._starts: deque[float] = deque()

    def allow(self, now: float) -> bool:
        """Record a turn at ``now`` if the window has room; False (not recorded) if not."""
        while self._starts and now - self._starts[0] >= self.window_s:
            self._starts.popleft()
        if len(self._starts) >= self.limit:
            return False
        self._starts.append(now)
        return True


class SessionTimer:
    """When a started session must end: ``idle`` after ``idle_s`` without audio while no turn
    is running, ``max_duration`` after ``max_s`` in all."""

    def __init__(self, idle_s: float, max_s: float, now: float) -> None:
        self.idle_s = idle_s
        self.max_s = max_s
        self._started = now
        self._last_activity = now

    def activity(self, now: float) -> None:
        """Audio arrived, or a turn is still running (a reply is not idleness)."""
        self._last_activity = max(self._last_activity, now)

    def expired(self, now: float) -> str | None:
        if now - self._started >= self.max_s:
            return "max_duration"
        if now - self._last_activity >= self.idle_s:
            return "idle"
        return None

    def wait_s(self, now: float, *, poll_s: float = 1.0) -> float:
        """How long the caller may wait for input before asking :meth:`expired` again. While
        a turn runs the caller polls at least every ``poll_s`` to keep :meth:`activity`
        fresh, so idleness is counted from about the end of the last reply."""
        until = min(self._started + self.max_s, self._last_activity + self.idle_s) - now
        return max(0.0, min(until, poll_s))
