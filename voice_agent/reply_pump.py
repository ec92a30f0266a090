"""One session's reply output: each turn's events and audio go out in order, the audio paced
to the loudspeaker by a :class:`~voice_agent.playback.PlaybackClock` (issue 9).

A turn writes to :meth:`ReplyPump.output` as fast as it can (up to ``max_queued_bytes`` of
audio not yet sent, then it waits); one task sends. An event waits behind the audio queued
before it, so reply text goes out as its audio does. The driver pauses, resumes or interrupts
a turn's reply; a turn awaits :meth:`ReplyPlayback.finished` until its last sample has been
played, and reads :meth:`ReplyPlayback.played_samples` for what was heard.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from voice_agent.aio import wait_within
from voice_agent.output import TurnOutput
from voice_agent.playback import PlaybackClock
from voice_agent.server.protocol import ReplyText, ServerEvent

log = logging.getLogger(__name__)

MAX_QUEUED_BYTES = 4 << 20
"""Reply audio queued and not yet sent, for all turns: far more than a held speculation
(1 MiB) so that releasing one never waits."""

PIECE_MS = 100
"""Paced audio goes out in pieces of at most this long."""

OnSent = Callable[[int, bytes, float], None]
"""Told ``(turn_id, pcm, delay_s)`` for each piece sent: it plays ``delay_s`` from now."""


@dataclass
class _Reply:
    turn_id: int
    audio: bytearray = field(default_factory=bytearray)
    """All of the turn's reply audio queued so far (kept for a resume, which sends again
    what the client dropped)."""
    text: list[str] = field(default_factory=list)
    """Reply text sent so far."""
    paused: bool = False
    stopped: bool = False
    queued_items: int = 0


class ReplyPump:
    def __init__(self, out: TurnOutput, clock: PlaybackClock, *, on_sent: OnSent | None = None,
                 max_queued_bytes: int = MAX_QUEUED_BYTES) -> None:
        self._out = out
        self.clock = clock
        self._on_sent = on_sent
        self._max_queued_bytes = max_queued_bytes
        self._items: collections.deque[tuple[_Reply, ServerEvent | int]] = collections.deque()
        """Events, and "audio up to this byte of the reply" marks, in order."""
        self._replies: dict[int, _Reply] = {}
        self._current: _Reply | None = None
        """The reply the clock follows: the last one whose audio began to go out."""
        self._changed = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        self._task: asyncio.Task[None] | None = None
        self.failed: BaseException | None = None
        """Set once the output raised: the client is gone; later writes raise it too."""

    def _now(self) -> float:
        return self._loop.time()

    def _notify(self) -> None:
        self._changed.set()

    async def _wait_changed(self, timeout_s: float | None = None) -> None:
        self._changed.clear()
        with contextlib.suppress(TimeoutError):
            await wait_within(self._changed.wait(), timeout_s)

    # --- the turn's side -------------------------------------------------------------

    def output(self, turn_id: int) -> ReplyOutput:
        reply = self._replies.setdefault(turn_id, _Reply(turn_id))
        return ReplyOutput(self, reply)

    async def _put(self, reply: _Reply, item: ServerEvent | bytes) -> None:
        if self.failed is not None:
            raise self.failed
        if reply.stopped:
            return
        if isinstance(item, bytes):
            while self._backlog() > self._max_queued_bytes and not reply.stopped:
                await self._wait_changed(1.0)
            reply.audio += item
            self._items.append((reply, len(reply.audio)))
        else:
            self._items.append((reply, item))
        reply.queued_items += 1
        self._notify()
        self._start()

    def _start(self) -> None:
        if self._task is None or self._task.done():  # it ends whenever the queue is empty
            self._task = asyncio.create_task(self._run(), name="reply-pump")

    def _backlog(self) -> int:
        return sum(len(r.audio) - 2 * (self.clock.sent if r is self._current else 0)
                   for r in self._replies.values() if not r.stopped)

    def _playing(self, turn_id: int) -> bool:
        reply = self._replies.get(turn_id)
        return reply is not None and reply is self._current

    # --- the driver's side -----------------------------------------------------------

    def played_samples(self, turn_id: int) -> int:
        reply = self._replies.get(turn_id)
        return self._played_of(reply) if reply is not None else 0

    def _played_of(self, reply: _Reply) -> int:
        return self.clock.played(self._now()) if reply is self._current else 0

    def report(self, turn_id: int, samples: int) -> None:
        """The client has played ``samples`` of the turn's reply (``playback``)."""
        if self._playing(turn_id):
            self.clock.report(turn_id, samples, self._now())
            self._notify()

    def reply_text(self, turn_id: int) -> str:
        reply = self._replies.get(turn_id)
        return "".join(reply.text) if reply else ""

    def audible(self, turn_id: int) -> bool:
        """Whether any of the turn's reply audio went out."""
        return self._playing(turn_id) and self.clock.sent > 0

    def pause(self, turn_id: int) -> int:
        """Hold the turn's reply where it is; returns the sample it stops at."""
        reply = self._replies.get(turn_id)
        if reply is None:
            return 0
        reply.paused = True
        self._notify()
        if not self._playing(turn_id):
            return 0
        return self.clock.pause(self._now())

    def resume(self, turn_id: int) -> int:
        reply = self._replies.get(turn_id)
        if reply is None or not reply.paused:
            return self.played_samples(turn_id)
        reply.paused = False
        self._notify()
        if not self._playing(turn_id):
            return 0
        position = self.clock.resume(self._now())
        if not any(r is reply and isinstance(item, int) for r, item in self._items):
            # All of it had been sent: what the client dropped must be queued again.
            self._items.appendleft((reply, len(reply.audio)))
            reply.queued_items += 1
            self._start()
        return position

    def stop(self, turn_id: int) -> int:
        """Drop the turn's reply from where it was played; returns that sample."""
        reply = self._replies.get(turn_id)
        if reply is not None and not reply.stopped:
            reply.stopped = True
            if reply is self._current:
                self.clock.pause(self._now())  # frozen where it stopped
            self._notify()
        return self.played_samples(turn_id)

    def forget(self, turn_id: int) -> None:
        """The turn has ended: its reply is no longer needed."""
        reply = self._replies.pop(turn_id, None)
        if reply is not None:
            reply.stopped = True
            self._notify()

    async def finished(self, turn_id: int) -> bool:
        """Wait until everything the turn queued has been sent and played, or it was
        stopped; True when it was all played."""
        reply = self._replies.get(turn_id)
        return await self._finished(reply) if reply is not None else True

    async def _finished(self, reply: _Reply) -> bool:
        while not reply.stopped:
            if self.failed is not None:
                raise self.failed
            if not reply.queued_items and not reply.paused:
                if reply is not self._current:
                    return True  # no audio: the events went out
                remaining = self.clock.remaining_s(self._now())
                if remaining <= 0:
                    return True
                await self._wait_changed(remaining)
            else:
                await self._wait_changed(1.0)
        return False

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    # --- sending ---------------------------------------------------------------------

    async def _run(self) -> None:
        try:
            while self._items:
                reply, item = self._items[0]
                if not reply.stopped and isinstance(item, int):
                    if not await self._play(reply, item):
                        continue  # paused: look again when something changes
                elif not reply.stopped and not isinstance(item, int):
                    await self._out.event(item)
                    if isinstance(item, ReplyText):
                        reply.text.append(item.delta)
                self._items.popleft()
                reply.queued_items -= 1
                self._notify()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the output is gone: every writer and waiter hears it
            self.failed = exc
            log.debug("reply output failed: %r", exc)
            self._notify()

    async def _play(self, reply: _Reply, until_byte: int) -> bool:
        """Send the reply's audio up to ``until_byte``, paced; False if it paused first."""
        clock = self.clock
        if reply is not self._current:
            self._current = reply
            clock.begin(reply.turn_id, self._now())
        piece = 2 * max(1, clock.rate * PIECE_MS // 1000)
        while 2 * clock.sent < until_byte:
            if reply.stopped:
                return True
            if reply.paused:
                await self._wait_changed()
                return False
            start = 2 * clock.sent
            pcm = bytes(reply.audio[start : min(until_byte, start + piece)])
            wait = clock.wait_s(len(pcm) // 2, self._now())
            if wait > 0:
                await self._wait_changed(wait)
                continue
            await self._out.audio(pcm)
            ahead = clock.on_sent(len(pcm) // 2, self._now())
            if self._on_sent is not None:
                self._on_sent(reply.turn_id, pcm, ahead / clock.rate)
        return True


class ReplyOutput:
    """A turn's :class:`~voice_agent.output.TurnOutput` into the pump, and its playback."""

    def __init__(self, pump: ReplyPump, reply: _Reply) -> None:
        self._pump = pump
        self._reply = reply

    async def event(self, event: ServerEvent) -> None:
        await self._pump._put(self._reply, event)

    async def audio(self, pcm: bytes) -> None:
        await self._pump._put(self._reply, pcm)

    def played_samples(self) -> int:
        """Samples of this reply the person has heard."""
        return self._pump._played_of(self._reply)

    async def finished(self) -> None:
        """Until the whole reply has been played. Raises CancelledError when it was stopped
        first (interrupted): the turn is being cancelled, and a cancel that raced the wake-up
        must not let it end as if it had been heard whole."""
        if not await self._pump._finished(self._reply):
            raise asyncio.CancelledError
