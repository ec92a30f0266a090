"""SessionDriver: exactly one ``turn_done`` per started turn, whatever the ordering.

The I/O-free :class:`Session` (synthetic tones, an energy VAD) drives the real driver
against a recording output. The turn runner here is a timing double: the driver's contract
is about orderings (a turn cancelled before its task ran, an output that dies mid-turn),
which a real engine cannot produce on demand. Real engines over a real socket are in
``tests/server/test_turn_end.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.test_session import make_session, tone
from voice_agent.audio.pcm import Int16Array
from voice_agent.barge_in import BurstWords
from voice_agent.config import BargeInConfig
from voice_agent.driver import SessionDriver
from voice_agent.output import ReplyPlayback
from voice_agent.server.protocol import (
    ReplyText,
    ServerEvent,
    SessionEnd,
    SpeechStarted,
    SpeechStopped,
    TranscriptEvent,
    TurnDone,
)
from voice_agent.session import Action, Session, StartTurn, silence
from voice_agent.speculation import Speculation
from voice_agent.turn import TurnOutput


class ClientGone(Exception):
    """What a WebSocket output raises once its client is gone (any exception will do)."""


class Output:
    """Records what a client would receive; dies (raises ClientGone) after ``dies_after``
    sends, like a WebSocket whose client stopped reading."""

    def __init__(self, dies_after: int | None = None) -> None:
        self.events: list[ServerEvent] = []
        self.audio_frames = 0
        self.dies_after = dies_after
        self.sends = 0

    async def _send(self) -> None:
        self.sends += 1
        if self.dies_after is not None and self.sends > self.dies_after:
            raise ClientGone("gone")
        await asyncio.sleep(0)  # a send is a suspension point, as on a socket

    async def event(self, event: ServerEvent) -> None:
        await self._send()
        self.events.append(event)

    async def audio(self, pcm: bytes) -> None:
        await self._send()
        self.audio_frames += 1


class PacedRunner:
    """Runs a turn like TurnRunner does (events and audio over a few suspension points)
    and keeps its contract: a TurnDone also when cancelled; output errors end the turn
    with status ``error``, or (``leak_output_errors``) escape, as a runner bug would."""

    def __init__(self, steps: int = 3, *, leak_output_errors: bool = False) -> None:
        self.steps = steps
        self.leak = leak_output_errors
        self.started: list[int] = []

    async def run(self, turn_id: int, audio: Int16Array, endpoint_wait_ms: float,
                  out: TurnOutput, *, speculation: Speculation | None = None,
                  playback: ReplyPlayback | None = None, text: str = "",
                  after_reply: bool = False) -> TurnDone:
        self.started.append(turn_id)
        status = "ok"
        if speculation is not None:
            out = speculation.out
        try:
            await out.event(TranscriptEvent(turn_id=turn_id, text="hello", asr_ms=1.0))
            for _ in range(self.steps):
                await asyncio.sleep(0.001)
                await out.event(ReplyText(turn_id=turn_id, delta="hi"))
                await out.audio(b"\x00\x00" * 160)
            if speculation is not None:
                await speculation.decided()
        except asyncio.CancelledError:
            status = "cancelled"
        except ClientGone:
            if self.leak:
                raise
            status = "error"
        return TurnDone(turn_id=turn_id, status=status, transcript="hello", reply_text="hi",
                        engine="paced", audio_samples=0)

    async def partial_transcript(self, audio: Int16Array) -> str:
        await asyncio.sleep(0.001)
        return "hel"

    async def hear_burst(self, audio: Int16Array, *, trust: bool = False) -> BurstWords:
        return BurstWords(await self.partial_transcript(audio))

    async def judge_turn_end(self, audio: Int16Array,
                             speculation: Speculation | None = None) -> float:
        await asyncio.sleep(0.001)
        return 0.9


class RecordingDriver(SessionDriver):
    """Notes every turn started, also by actions the driver gets back from the session
    itself (a burst over the reply judged a turn)."""

    start_turns: list[int]

    async def execute(self, actions: list[Action]) -> None:
        self.start_turns += [a.turn_id for a in actions if isinstance(a, StartTurn)]
        await super().execute(actions)


class Harness:
    def __init__(self, runner: PacedRunner, out: Output, session: Session) -> None:
        self.session = session
        self.out = out
        self.recorded: list[TurnDone] = []
        self.closes: list[str] = []
        self.driver = RecordingDriver(session, runner, out, self._close,
                                      on_turn_done=self.recorded.append)
        self.driver.start_turns = self.start_turns = []

    async def _close(self, reason: str) -> None:
        # Like the WebSocket connection: session_end if the client still takes it.
        self.closes.append(reason)
        with contextlib.suppress(ClientGone):
            await self.out.event(SessionEnd(reason=reason))

    async def execute(self, actions: list[Action]) -> None:
        await self.driver.execute(actions)


def fast_session() -> Session:
    # Speech over a reply is judged after 100 ms (the runner hears words: a turn, with no
    # wait for the paused reply to be quiet).
    return make_session(barge_in_config=BargeInConfig(pause_after_ms=50, confirm_ms=100,
                                                  resume_after_ms=5000, echo_tail_ms=0,
                                                  heard_in_quiet_ms=0),
                        start_speech_ms=30, end_silence_ms=100, pre_roll_ms=50,
                        min_utterance_ms=50, max_utterance_s=1.0)


def utterance(ms: int = 200) -> bytes:
    return tone(ms) + silence(140)


async def feed(h: Harness, pcm: bytes, chunk_ms: int = 20) -> None:
    step = 2 * 16000 * chunk_ms // 1000
    for offset in range(0, len(pcm), step):
        await h.execute(h.session.audio(pcm[offset : offset + step]))


def delivered_turn_dones(out: Output) -> list[int]:
    """Ends of turns: not of a burst over a reply that was no turn (``backchannel``)."""
    return [e.turn_id for e in out.events
            if isinstance(e, TurnDone) and e.status != "backchannel"]


# --- the orderings that lost turn_done --------------------------------------------------


async def test_turn_cancelled_before_its_task_ran_still_ends() -> None:
    # The client's cancel in the same loop iteration that started the turn, before its task
    # ever ran; then speech faster than real time interrupting the next one.
    runner = PacedRunner()
    h = Harness(runner, Output(), fast_session())
    await h.execute(h.session.audio(utterance()) + h.session.cancel())
    assert runner.started == [], "turn 1 was cancelled before it ran"
    await h.execute(h.session.audio(utterance() + utterance()))
    await h.execute(h.session.end())
    await h.driver.wait_idle(5)
    assert h.start_turns == [1, 2, 3]
    assert sorted(delivered_turn_dones(h.out)) == [1, 2, 3]
    assert [d.status for d in sorted(h.recorded, key=lambda d: d.turn_id)] == [
        "cancelled", "cancelled", "ok"]
    assert h.closes == ["end"]


async def test_output_dying_mid_turn_still_ends_records_and_closes() -> None:
    runner = PacedRunner(steps=10, leak_output_errors=True)
    h = Harness(runner, Output(dies_after=6), fast_session())
    await feed(h, utterance())
    await h.execute(h.session.end())
    assert await h.driver.wait_idle(5)
    assert [d.turn_id for d in h.recorded] == [1]
    assert h.driver.active_turns == 0
    # The session sent `end`: it still closes, although nothing reaches the client.
    assert h.closes == ["end"]


async def test_new_turns_after_the_output_died_end_at_once() -> None:
    runner = PacedRunner()
    h = Harness(runner, Output(dies_after=0), fast_session())
    await feed(h, utterance() + utterance())
    assert await h.driver.wait_idle(5)
    assert runner.started == [], "no engine work for a client that is gone"
    assert sorted(d.turn_id for d in h.recorded) == h.start_turns == [1, 2]
    assert {d.status for d in h.recorded} == {"cancelled"}


async def test_stop_ends_every_running_turn_once() -> None:
    runner = PacedRunner(steps=1000)
    h = Harness(runner, Output(), fast_session())
    await feed(h, utterance())
    await asyncio.sleep(0.01)
    assert h.driver.active_turns == 1
    assert not await h.driver.wait_idle(0.01)
    await h.driver.stop()
    assert [(d.turn_id, d.status) for d in h.recorded] == [(1, "cancelled")]
    assert delivered_turn_dones(h.out) == [1]
    await h.driver.stop()  # idempotent
    assert len(h.recorded) == 1


async def test_cancel_after_the_runner_finished_does_not_cut_delivery() -> None:
    # Cancelling only touches the runner: a turn whose end is being delivered keeps it.
    runner = PacedRunner(steps=0)
    h = Harness(runner, Output(), fast_session())
    await feed(h, utterance())
    for _ in range(3):
        await asyncio.sleep(0)
    await h.execute(h.session.cancel())
    assert await h.driver.wait_idle(5)
    assert delivered_turn_dones(h.out) == [1]
    assert len(h.recorded) == 1


# --- any interleaving -------------------------------------------------------------------

ops = st.lists(
    st.one_of(
        st.tuples(st.just("speech"), st.integers(60, 400)),  # an utterance, sent at once
        st.tuples(st.just("burst"), st.integers(1, 4)),  # several utterances in one message
        st.tuples(st.just("silence"), st.integers(20, 300)),
        st.tuples(st.just("cancel"), st.just(0)),
        st.tuples(st.just("yield"), st.integers(0, 5)),  # let turn tasks run a little
        st.tuples(st.just("sleep"), st.integers(1, 10)),  # ms: let some turns finish
    ),
    min_size=1,
    max_size=30,
)


@pytest.mark.timeout(120)
@settings(max_examples=150, deadline=None)
@given(ops=ops, end_at=st.integers(0, 30), steps=st.integers(0, 4),
       dies_after=st.one_of(st.none(), st.integers(0, 40)), leak=st.booleans())
def test_every_start_turn_ends_exactly_once(
    ops: list[tuple[str, int]], end_at: int, steps: int, dies_after: int | None, leak: bool
) -> None:
    asyncio.run(_interleave(ops, end_at, steps, dies_after, leak))


async def _interleave(ops: list[tuple[str, int]], end_at: int, steps: int,
                      dies_after: int | None, leak: bool) -> None:
    runner = PacedRunner(steps, leak_output_errors=leak)
    out = Output(dies_after)
    h = Harness(runner, out, fast_session())
    for index, (op, arg) in enumerate(ops):
        if index == end_at:
            await h.execute(h.session.end())
        if op == "speech":
            await h.execute(h.session.audio(utterance(arg)))
        elif op == "burst":
            await h.execute(h.session.audio(b"".join(utterance() for _ in range(arg))))
        elif op == "silence":
            await h.execute(h.session.audio(silence(arg)))
        elif op == "cancel":
            await h.execute(h.session.cancel())
        elif op == "yield":
            for _ in range(arg):
                await asyncio.sleep(0)
        else:
            await asyncio.sleep(arg / 1000)
    await h.execute(h.session.end())
    assert await h.driver.wait_idle(10), "a turn never ended"

    # Recorded: every started turn exactly once, delivered or not.
    assert Counter(d.turn_id for d in h.recorded
                   if d.status != "backchannel") == Counter(h.start_turns)
    assert len(set(h.start_turns)) == len(h.start_turns)
    assert h.driver.active_turns == 0
    assert h.closes == ["end"], "a session that sent end always closes, once"
    assert not [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    if dies_after is None:
        # Delivered: one turn_done per speech_stopped, each after it, none repeated.
        stopped = [e.turn_id for e in out.events if isinstance(e, SpeechStopped)]
        done = delivered_turn_dones(out)
        # (A burst over a reply may be judged a turn after the next utterance has started.)
        assert sorted(done) == sorted(stopped) == sorted(h.start_turns)
        position = {id(e): i for i, e in enumerate(out.events)}
        for event in out.events:
            if isinstance(event, TurnDone) and event.status != "backchannel":
                stop = next(e for e in out.events
                            if isinstance(e, SpeechStopped) and e.turn_id == event.turn_id)
                assert position[id(stop)] < position[id(event)]
        # Nothing of a turn after its turn_done.
        ended: set[int] = set()
        for event in out.events:
            turn_id = getattr(event, "turn_id", None)
            assert turn_id not in ended, f"{event.type} after turn {turn_id} ended"
            if isinstance(event, TurnDone):
                ended.add(event.turn_id)


# --- speculation (issue 8) ----------------------------------------------------------------


def speculating_session() -> Session:
    from tests.test_session import EnergyVad
    from voice_agent.audio.frontend import PassthroughFrontend
    from voice_agent.config import TurnConfig, VadConfig

    turn = TurnConfig(speculate_after_ms=100, complete_silence_ms=200,
                      incomplete_silence_ms=600, partial_interval_ms=0)
    vad = VadConfig(start_speech_ms=30, pre_roll_ms=50, min_utterance_ms=50)
    return Session(vad_config=vad, frontend=PassthroughFrontend(), vad=EnergyVad(),
                   input_rate=16000, turn_config=turn, judge_pauses=True)


def reply_events(out: Output) -> list[ServerEvent]:
    return [e for e in out.events if not isinstance(e, SpeechStarted | SpeechStopped)]


async def test_a_speculation_abandoned_by_resumed_speech_sends_nothing() -> None:
    out = Output()
    h = Harness(PacedRunner(steps=3), out, speculating_session())
    await feed(h, tone(300) + silence(120))  # a pause: the speculation starts, held
    await asyncio.sleep(0.05)  # it has produced everything it will before the commit
    assert not reply_events(out) and out.audio_frames == 0
    await feed(h, tone(300))  # speech again: thrown away
    await asyncio.sleep(0.05)
    assert not reply_events(out) and out.audio_frames == 0
    await feed(h, silence(700))  # the end: a new speculation, committed
    await asyncio.sleep(0.1)
    types = [type(e).__name__ for e in out.events]
    assert types.count("TranscriptEvent") == 1 and types.count("TurnDone") == 1, types
    done = next(e for e in out.events if isinstance(e, TurnDone))
    assert done.status == "ok" and out.audio_frames == 3
    assert h.driver.active_turns == 0


async def test_a_committed_speculation_releases_its_held_output_in_order() -> None:
    out = Output()
    h = Harness(PacedRunner(steps=2), out, speculating_session())
    await feed(h, tone(300) + silence(120))
    await asyncio.sleep(0.05)
    assert not reply_events(out)
    await feed(h, silence(200))  # judged finished (0.9): ends after 200 ms of silence
    async with asyncio.timeout(5):  # a loaded machine may take more than a few ms
        while not any(isinstance(e, TurnDone) for e in out.events):
            await asyncio.sleep(0.01)
    types = [type(e).__name__ for e in out.events]
    assert types == ["SpeechStarted", "SpeechStopped", "TranscriptEvent", "ReplyText", "ReplyText",
                     "TurnDone"], types
