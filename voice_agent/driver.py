"""Carry out a :class:`~voice_agent.session.Session`'s actions against an output.

Shared by the WebSocket connection and the microphone loop: events go to the output, turns
run as tasks (one :class:`~voice_agent.turn.TurnRunner` per session), and ``Close`` is
handed back to the owner.

The driver owns the rule "every ``StartTurn`` ends in exactly one ``TurnDone``", whatever
the ordering: a turn cancelled before its task ran, a turn whose output died mid-reply (send
timeout, client gone), a turn cancelled at shutdown. It never cancels a turn's own task,
only the runner inside it, so the part that records and delivers the terminal event always
runs. Output failures never escape: the turn still ends, is recorded (``on_turn_done``),
its entry removed, and the session told (so a session that sent ``end`` closes).

Speculation (issue 8): a ``Speculate`` starts a turn whose output is held
(:mod:`voice_agent.speculation`); ``CommitTurn`` releases it, ``AbandonTurn`` throws it away
with no ``turn_done`` (the turn goes on: the person is still speaking). An abandoned turn's
model runs are counted and reported in the turn's eventual ``turn_done``
(``discarded_llm_runs``). The session is told when a turn's reply audio first goes out
(it can be heard from then on) and, before its ``turn_done`` is sent, that it has ended.

The reply (issue 9) goes out through one :class:`~voice_agent.reply_pump.ReplyPump` per
session, paced to the loudspeaker; what it sends is the echo canceller's reference
(``Session.reference``). Speech over the reply pauses it (``PauseReply``); a short burst is
transcribed (``CheckBurst``), and a backchannel, a noise or the reply's own echo resumes it
(``ResumeReply``), anything else interrupts it (``CancelTurn``, ``reply_interrupted``).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

from voice_agent.audio.pcm import PIPELINE_RATE, Int16Array, StreamResampler, bytes_to_int16
from voice_agent.barge_in import BurstJudge, BurstWords
from voice_agent.output import ReplyPlayback, TurnOutput
from voice_agent.playback import PlaybackClock
from voice_agent.reply_pump import ReplyPump
from voice_agent.server.protocol import (
    ReplyInterrupted,
    ReplyPaused,
    ReplyResumed,
    ServerEvent,
    TurnDone,
)
from voice_agent.session import (
    AbandonTurn,
    Action,
    CancelTurn,
    CheckBurst,
    Close,
    CommitTurn,
    Emit,
    JudgeTurn,
    PauseReply,
    ResumeReply,
    Session,
    Speculate,
    StartTurn,
    Transcribe,
)
from voice_agent.speculation import Speculation

log = logging.getLogger(__name__)


class Runner(Protocol):
    """Runs one turn (:class:`~voice_agent.turn.TurnRunner`): returns its terminal event,
    also when cancelled; may raise only when the output itself fails."""

    async def run(self, turn_id: int, audio: Int16Array, endpoint_wait_ms: float,
                  out: TurnOutput, *, speculation: Speculation | None = None,
                  playback: ReplyPlayback | None = None, text: str = "",
                  after_reply: bool = False) -> TurnDone: ...

    async def partial_transcript(self, audio: Int16Array) -> str: ...

    async def hear_burst(self, audio: Int16Array, *, trust: bool = False) -> BurstWords: ...

    async def judge_turn_end(self, audio: Int16Array,
                             speculation: Speculation | None = None) -> float: ...


@dataclass
class _Running:
    """One started turn: the driver's task (records and delivers the end) and, once it has
    started, the runner's task (the only one cancellation touches)."""

    speculation: Speculation
    """Every turn has one (a decided turn's holds nothing): its output, through
    :class:`_Audible`, and whether it was committed or abandoned."""
    task: asyncio.Task[None] | None = None
    runner: asyncio.Task[TurnDone] | None = None
    cancel_reason: str | None = None
    abandoned: bool = False
    """Thrown away unheard: it ends with no ``turn_done`` (the turn itself goes on)."""
    ended: bool = False
    """Its ``turn_done`` is on its way: nothing more of it may go out."""


class SessionDriver:
    def __init__(
        self,
        session: Session,
        runner: Runner,
        out: TurnOutput,
        on_close: Callable[[str], Awaitable[None]],
        *,
        on_turn_done: Callable[[TurnDone], None] | None = None,
        clock: PlaybackClock | None = None,
        echo_reference: bool = True,
        burst_judge: BurstJudge | None = None,
    ) -> None:
        """``on_turn_done`` is told every turn's terminal event exactly once, whether or not
        the output could still take it (metrics and the audit log record it there).
        ``clock``: the reply's pacing (default: unpaced). ``echo_reference``: the audio sent
        is the session's echo reference (off where the sound device gives it: ``--mic``).
        ``burst_judge``: what a short burst over the reply is (default: the built-in
        backchannel words)."""
        self.session = session
        self._on_turn_done = on_turn_done
        self.runner = runner
        self._out = out
        self._on_close = on_close
        self.clock = clock or PlaybackClock(PIPELINE_RATE, lead_ms=0)
        self.pump = ReplyPump(out, self.clock, on_sent=self._on_sent)
        self._reference = (StreamResampler(self.clock.rate, PIPELINE_RATE)
                           if echo_reference else None)
        self._burst_judge = burst_judge or BurstJudge()
        self._burst: asyncio.Task[None] | None = None
        self._burst_over: int | None = None
        """The turn whose paused reply the burst being checked is over."""
        self._turns: dict[int, _Running] = {}
        self._discarded: dict[int, int] = {}
        """Speculative model runs thrown away, by turn, until the turn's end reports them."""
        self._partial: asyncio.Task[None] | None = None
        self._judge: asyncio.Task[None] | None = None
        self._output_failed = False
        """Set when the output raised once: it is gone, so new turns end at once."""
        self._idle = asyncio.Event()
        self._idle.set()

    @property
    def active_turns(self) -> int:
        return len(self._turns)

    async def execute(self, actions: list[Action]) -> None:
        """Carry out ``actions`` in order. Never raises for a failing output: the remaining
        actions still run (a ``StartTurn`` after a failed send still ends and is recorded)."""
        for action in actions:
            if isinstance(action, Emit):
                if isinstance(action.event, TurnDone):
                    self._record(action.event)  # a turn the session refused (rate_limited)
                await self._emit(action.event)
            elif isinstance(action, StartTurn | Speculate):
                self._start(action)
            elif isinstance(action, CommitTurn):
                await self._commit(action)
            elif isinstance(action, AbandonTurn):
                self._abandon(action.turn_id)
            elif isinstance(action, Transcribe):
                self._transcribe(action)
            elif isinstance(action, JudgeTurn):
                if self._judge is not None:
                    self._judge.cancel()  # its pause is over: a late answer is ignored anyway
                self._judge = asyncio.create_task(self._judge_turn(action),
                                                  name=f"judge-{action.turn_id}")
            elif isinstance(action, CancelTurn):
                await self._cancel(action.turn_id, action.reason)
            elif isinstance(action, PauseReply | ResumeReply):
                running = self._turns.get(action.turn_id)
                if running is not None and not running.ended:  # not one ended meanwhile
                    await self._pause_or_resume(action)
            elif isinstance(action, CheckBurst):
                if self._burst is not None:
                    self._burst.cancel()
                self._burst_over = action.paused_turn
                self._burst = asyncio.create_task(self._check_burst(action),
                                                  name=f"burst-{action.turn_id}")
            elif isinstance(action, Close):
                for helper in (self._judge, self._partial, self._burst):
                    if helper is not None and helper is not asyncio.current_task():
                        helper.cancel()  # nothing they could answer matters any more
                await self._on_close(action.reason)

    async def _emit(self, event: ServerEvent) -> None:
        try:
            await self._out.event(event)
        except Exception as exc:  # the output is gone (client disconnected or not reading)
            self._output_failed = True
            log.debug("could not deliver %s: %r", event.type, exc)

    def _start(self, action: StartTurn | Speculate) -> None:
        if action.turn_id in self._turns:  # a session bug; never two ends for one turn
            log.error("turn %d started twice; ignored", action.turn_id)
            return
        # A decided turn gets one too (holding nothing): it may still be abandoned unheard.
        running = _Running(Speculation(self.pump.output(action.turn_id),
                                       decided=not isinstance(action, Speculate)))
        self._turns[action.turn_id] = running
        self._idle.clear()
        running.task = asyncio.create_task(self._turn(action, running),
                                           name=f"turn-{action.turn_id}")

    async def _commit(self, action: CommitTurn) -> None:
        running = self._turns.get(action.turn_id)
        if running is None or running.speculation.committed.is_set():
            log.error("turn %d committed without a speculation; ignored", action.turn_id)
            return
        if running.speculation.commit(action.endpoint_wait_ms):
            try:
                await running.speculation.out.release()
            except Exception as exc:  # the output is gone; the turn ends on its own
                self._output_failed = True
                log.debug("could not deliver turn %d's held output: %r", action.turn_id, exc)

    def _abandon(self, turn_id: int) -> None:
        """Throw the turn's running work away unheard; the same turn id starts again later."""
        running = self._turns.pop(turn_id, None)
        if running is None:
            return
        running.abandoned = True
        running.speculation.abandon()
        self.pump.forget(turn_id)  # the client drops it too (speech_resumed)
        self._discarded[turn_id] = self._discarded.get(turn_id, 0) + running.speculation.llm_runs
        if running.runner is not None:
            running.runner.cancel()
        if not self._turns:
            self._idle.set()

    def _transcribe(self, action: Transcribe) -> None:
        """A partial transcript, unless the last one is still being made (they are a preview:
        skipping one costs nothing, queueing them would delay the answer's ASR)."""
        if self._partial is not None and not self._partial.done():
            return
        self._partial = asyncio.create_task(self._partial_transcript(action),
                                            name=f"partial-{action.turn_id}")

    async def _judge_turn(self, action: JudgeTurn) -> None:
        running = self._turns.get(action.turn_id)
        speculation = running.speculation if running is not None else None
        try:
            probability = await self.runner.judge_turn_end(action.audio, speculation)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the long silence decides, as without a model
            log.warning("end-of-turn model failed: %r", exc)
            return
        log.debug("turn %d, pause at %d ms: finished with probability %.2f",
                  action.turn_id, action.pause_at_ms, probability)
        await self._carry_out(self.session.judged(action.turn_id, action.pause_at_ms,
                                                  probability))

    async def _partial_transcript(self, action: Transcribe) -> None:
        try:
            text = await self.runner.partial_transcript(action.audio)
        except Exception as exc:  # a preview that failed is just not shown
            log.debug("partial transcript failed: %r", exc)
            return
        await self._carry_out(self.session.partial(action.turn_id, text, action.audio_ms))

    async def _cancel(self, turn_id: int, reason: str) -> None:
        running = self._turns.get(turn_id)
        if running is None or running.cancel_reason is not None or running.ended:
            return
        running.cancel_reason = reason
        if (self._burst is not None and self._burst_over == turn_id
                and self._burst is not asyncio.current_task()):
            self._burst.cancel()  # nothing is paused any more: what the burst was is moot
        audible = self.pump.audible(turn_id)
        stopped_at = self.pump.stop(turn_id)  # no more of it goes out, from now
        if running.runner is not None:
            running.runner.cancel()
        # Not started yet: _turn sees cancel_reason and ends the turn without running it.
        if audible and reason != "stop":
            self.session.reference_dropped()  # the client drops what it has buffered
            await self._emit(ReplyInterrupted(turn_id=turn_id, audio_samples=stopped_at,
                                              reason=reason))

    async def _pause_or_resume(self, action: PauseReply | ResumeReply) -> None:
        turn_id = action.turn_id
        if isinstance(action, PauseReply):
            await self._emit(ReplyPaused(turn_id=turn_id, audio_samples=self.pump.pause(turn_id)))
            self.session.reference_dropped()
            return
        await self._emit(ReplyResumed(turn_id=turn_id,
                                      audio_samples=self.pump.played_samples(turn_id)))
        self.pump.resume(turn_id)

    def played(self, turn_id: int, samples: int) -> None:
        """The client's ``playback`` report: it has played ``samples`` of the turn's reply."""
        self.pump.report(turn_id, samples)

    def _on_sent(self, turn_id: int, pcm: bytes, delay_s: float) -> None:
        """Reply audio went out: from now it can be heard, and it is what the echo
        canceller must expect back in the microphone."""
        self.session.reply_audible(turn_id)
        if self._reference is not None:
            samples = self._reference.process(bytes_to_int16(pcm))
            self.session.reference(samples, round(delay_s * 1000), follows=delay_s > 0)

    async def _check_burst(self, action: CheckBurst) -> None:
        """Transcribe a short burst over the paused reply and tell the session what it was."""
        try:
            heard: BurstWords | None = await self.runner.hear_burst(action.audio,
                                                                    trust=action.long)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # unknown: speech it was, so the person gets the turn
            log.warning("transcribing a burst over the reply failed: %r", exc)
            heard = None
        reply = self.pump.reply_text(action.paused_turn)
        real = heard is None or self._burst_judge.is_turn(heard.text, reply)
        # Doubted words that would be a turn if sure: a mangled person, or the echo.
        unsure = heard is not None and not real and self._burst_judge.is_turn(heard.doubted,
                                                                              reply)
        text = heard.text if heard is not None else ""
        stop = real and self._burst_judge.is_stop(text)
        log.debug("burst over turn %d's reply: %r -> %s", action.paused_turn, heard,
                  "stop" if stop else "a turn's words" if real
                  else "unsure" if unsure else "not a turn")
        await self._carry_out(self.session.burst_heard(action.turn_id, real, text,
                                                       unsure=unsure, stop=stop))

    async def _carry_out(self, actions: list[Action]) -> None:
        """Actions a helper task got from the session: the session has already moved on (a
        turn it started must run and end), so cancelling the helper must not cut them off."""
        await asyncio.shield(self.execute(actions))

    async def _turn(self, action: StartTurn | Speculate, running: _Running) -> None:
        turn_id = action.turn_id
        done: TurnDone | None = None
        try:
            if (running.cancel_reason is None and not running.abandoned
                    and not self._output_failed):
                text = action.text if isinstance(action, StartTurn) else ""
                running.runner = asyncio.create_task(self.runner.run(
                    turn_id, action.audio, action.endpoint_wait_ms, running.speculation.out,
                    speculation=running.speculation, playback=self.pump.output(turn_id),
                    text=text, after_reply=action.after_reply))
                done = await self._result(turn_id, running.runner)
            if running.abandoned:
                return  # no end: the person went on speaking, and the turn with them
            await running.speculation.out.settled()
            with contextlib.suppress(Exception):  # a failed output: the end goes anyway
                await self.pump.finished(turn_id)  # the end comes after the reply
        except asyncio.CancelledError:
            # Someone cancelled the driver's own task (the loop is shutting down): stop the
            # engines' work and record the end; there is no time left to deliver it.
            if running.runner is not None:
                running.runner.cancel()
            if not running.abandoned:
                self._record(done or TurnDone.unrun(turn_id, "cancelled"))
            self._forget(turn_id, running)
            raise
        discarded = self._discarded.pop(turn_id, 0) + running.speculation.preempted_runs
        done = dataclasses.replace(done or TurnDone.unrun(turn_id, "cancelled"),
                                   discarded_llm_runs=discarded)
        self._record(done)
        try:
            # The session first, so that speech from now on is a new turn, never a
            # continuation of one whose end is on its way.
            running.ended = True
            finished = self.session.turn_finished(turn_id)
            if self._burst is not None and self._burst_over == turn_id:
                self._burst.cancel()  # its reply has ended: what the burst was is moot
            await self._emit(done)
            await self.execute(finished)
        except Exception:  # the owner's close failed; the turn has ended all the same
            log.exception("turn %d: closing after its end failed", turn_id)
        finally:
            self._forget(turn_id, running)

    async def _result(self, turn_id: int, runner: asyncio.Task[TurnDone]) -> TurnDone:
        """The runner's TurnDone; a synthetic one when it could not produce one."""
        try:
            return await asyncio.shield(runner)
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise  # the driver's task itself is being cancelled
            # The runner was cancelled before its coroutine ran: it never got to say so.
            return TurnDone.unrun(turn_id, "cancelled")
        except Exception as exc:  # TurnRunner.run catches everything; this is a backstop
            log.warning("turn %d: runner failed: %r", turn_id, exc)
            return TurnDone.unrun(turn_id, "error")

    def _record(self, done: TurnDone) -> None:
        if self._on_turn_done is None:
            return
        try:
            self._on_turn_done(done)
        except Exception:  # recording must never cost the person the turn's end
            log.exception("turn %d: recording its end failed", done.turn_id)

    def _forget(self, turn_id: int, running: _Running) -> None:
        if self._turns.get(turn_id) is running:  # not a later run of the same turn
            del self._turns[turn_id]
            self.pump.forget(turn_id)
        if not self._turns:
            self._idle.set()

    async def wait_idle(self, timeout_s: float) -> bool:
        """Wait up to ``timeout_s`` for every running turn to end; True if they did. A turn
        that starts as the last one ends (a speculation run again) is waited for too."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                while self._turns:
                    await self._idle.wait()
        return not self._turns

    async def stop(self) -> None:
        """Cancel every running turn and wait until each has ended (and reported its
        ``turn_done``, if the output still takes it): connection gone, or shutdown."""
        for helper in (self._judge, self._partial, self._burst):
            if helper is not None:
                helper.cancel()
        running = list(self._turns.items())
        for turn_id, _ in running:
            await self._cancel(turn_id, "stop")
        tasks = [entry.task for _, entry in running if entry.task is not None]
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        await self.pump.close()
