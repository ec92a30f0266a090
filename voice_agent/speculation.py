"""Work started before a turn is decided: its output held until it commits.

At a pause the session starts answering what it has heard so far (issue 8). Everything the
turn produces (transcript, emotion, reply text, reply audio) goes to a :class:`HeldOutput`
and reaches the client only when the turn commits; if the person goes on speaking it is
thrown away unseen. The held audio is bounded (``max_held_bytes``): past it the turn simply
waits, which stops its speech synthesis and, through the sentence queue, its model.
"""

from __future__ import annotations

import asyncio

from voice_agent.output import TurnOutput
from voice_agent.server.protocol import ServerEvent

MAX_HELD_BYTES = 1 << 20
"""About 20 s of 24 kHz reply audio: far more than a pause lasts."""


class HeldOutput:
    """A :class:`TurnOutput` that keeps everything until :meth:`release`, then passes on."""

    def __init__(self, out: TurnOutput, *, max_held_bytes: int = MAX_HELD_BYTES,
                 released: bool = False) -> None:
        self._out = out
        self._max_held_bytes = max_held_bytes
        self._items: list[ServerEvent | bytes] = []
        self._held_bytes = 0
        self._lock = asyncio.Lock()
        """Held items and passed-through ones go out in order, never interleaved."""
        self._released = asyncio.Event()
        if released:
            self._released.set()
        self._releasing = False
        self._discarded = False

    @property
    def released(self) -> bool:
        return self._released.is_set()

    async def event(self, event: ServerEvent) -> None:
        async with self._lock:
            if self.released:
                await self._out.event(event)
            else:
                self._items.append(event)

    async def audio(self, pcm: bytes) -> None:
        while True:
            async with self._lock:
                if self._discarded:
                    raise asyncio.CancelledError  # thrown away: its writer must stop
                if self.released:
                    await self._out.audio(pcm)
                    return
                if self._held_bytes + len(pcm) <= self._max_held_bytes:
                    self._items.append(pcm)
                    self._held_bytes += len(pcm)
                    return
            await self._released.wait()

    def discard(self) -> None:
        """Throw everything held away; a writer waiting for room stops (cancelled)."""
        self._discarded = True
        self._items, self._held_bytes = [], 0
        self._released.set()  # wakes a writer waiting for room, which then stops

    def mark(self) -> int:
        """A point to :meth:`rollback` to."""
        return len(self._items)

    def rollback(self, mark: int) -> None:
        """Forget what was held after ``mark`` (only before release)."""
        if self.released:
            raise RuntimeError("released output cannot be rolled back")
        del self._items[mark:]
        self._held_bytes = sum(len(item) for item in self._items if isinstance(item, bytes))

    async def release(self) -> None:
        """Send everything held, in order; from then on everything passes straight on."""
        self._releasing = True
        async with self._lock:
            if self.released:
                return
            items, self._items, self._held_bytes = self._items, [], 0
            try:
                for item in items:
                    if isinstance(item, bytes):
                        await self._out.audio(item)
                    else:
                        await self._out.event(item)
            finally:
                self._released.set()


    async def settled(self) -> None:
        """Wait until a release under way has sent everything (the turn's end must come
        after its output). Returns at once when nothing is being released."""
        if self._releasing:
            async with self._lock:
                pass


class Speculation:
    """One speculative run of a turn: its held output and its commitment.

    A turn decided before it started (``decided=True``: fixed silence, no speculation) holds
    nothing, and can still be abandoned when the person resumes before hearing its reply.

    Implements what the LLM scheduler asks of speculative work
    (:class:`voice_agent.llm.scheduler.Speculation`)."""

    def __init__(self, out: TurnOutput, *, max_held_bytes: int = MAX_HELD_BYTES,
                 decided: bool = False) -> None:
        self.out = HeldOutput(out, max_held_bytes=max_held_bytes, released=decided)
        self.committed = asyncio.Event()
        self._decided = asyncio.Event()
        self.preempted = False
        """The model was taken from it by a committed turn; the turn re-asks once committed."""
        self.abandoned = False
        """Thrown away (speech resumed): nothing it did may be kept, not even in history."""
        self.llm_runs = 0
        """Model calls started while speculative (each is wasted if it is thrown away)."""
        self.preempted_runs = 0
        """Of those, calls a committed turn took the model from (wasted too)."""
        self.endpoint_wait_ms: float | None = None
        """Silence from the last speech to the commit decision."""
        self.transcript: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        if decided:
            self.committed.set()
            self._decided.set()
        """What the speculative ASR heard (the end-of-turn judgement reads its words)."""

    def heard(self, text: str) -> None:
        if not self.transcript.done():
            self.transcript.set_result(text)

    @property
    def speculative(self) -> bool:
        return not self.committed.is_set()

    def abandon(self) -> None:
        """Thrown away: the held output is dropped and a run waiting to be decided stops."""
        self.abandoned = True
        self.out.discard()
        self._decided.set()

    async def decided(self) -> None:
        """Wait until the turn is committed; raises CancelledError if it is abandoned
        instead (a run whose cancellation was lost must not wait forever)."""
        await self._decided.wait()
        if self.abandoned:
            raise asyncio.CancelledError

    def try_preempt(self) -> bool:
        if self.committed.is_set():
            return False
        self.preempted = True
        return True

    def commit(self, endpoint_wait_ms: float) -> bool:
        """The turn is decided. True when the held output can go out now; False when the
        model was pre-empted and the turn must answer again first (it releases then)."""
        self.endpoint_wait_ms = endpoint_wait_ms
        self.committed.set()
        self._decided.set()
        return not self.preempted
