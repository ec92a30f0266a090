"""The paced reply output (pause, resume, stop, order), and what the conversation keeps of
an interrupted reply on the real engines."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest

from tests.conftest import make_config
from tests.fakes import Recorder
from tests.test_reply_length import QUESTION
from tests.test_turn_emotion import spoken
from voice_agent.audio.frontend import PassthroughFrontend
from voice_agent.audio.vad import make_vad
from voice_agent.driver import SessionDriver
from voice_agent.engines import Engines
from voice_agent.llm.text import ends_sentence
from voice_agent.playback import PlaybackClock
from voice_agent.reply_pump import ReplyPump
from voice_agent.server.protocol import (
    ReplyInterrupted,
    ReplyText,
    ServerEvent,
    TranscriptEvent,
    TurnDone,
)
from voice_agent.session import Session, silence
from voice_agent.turn import TurnRunner

RATE = 16000


def tone(samples: int, value: int = 1000) -> bytes:
    return np.full(samples, value, dtype="<i2").tobytes()


class Timed(Recorder):
    """Notes when each piece of audio went out, and where each event fell in the audio."""

    def __init__(self) -> None:
        super().__init__()
        self.sent_at: list[float] = []
        self.at_sample: list[tuple[int, ServerEvent]] = []

    async def event(self, event: ServerEvent) -> None:
        self.at_sample.append((len(self.pcm) // 2, event))
        await super().event(event)

    async def audio(self, pcm: bytes) -> None:
        self.sent_at.append(time.monotonic())
        await super().audio(pcm)


async def test_the_reply_is_paced_and_keeps_its_order() -> None:
    out = Timed()
    pump = ReplyPump(out, PlaybackClock(RATE, lead_ms=100))
    reply = pump.output(1)
    started = time.monotonic()
    await reply.event(ReplyText(turn_id=1, delta="Hello"))
    await reply.audio(tone(RATE // 2))
    await reply.event(ReplyText(turn_id=1, delta=" there."))
    await reply.audio(tone(RATE // 2, 2000))
    await asyncio.wait_for(reply.finished(), 5)
    # A second of audio never more than 100 ms ahead of real time: it takes about a second.
    assert time.monotonic() - started >= 0.85
    assert out.sent_at[-1] - started >= 0.8
    assert bytes(out.pcm) == tone(RATE // 2) + tone(RATE // 2, 2000)
    assert [(at, e.delta) for at, e in out.at_sample if isinstance(e, ReplyText)] == [
        (0, "Hello"), (RATE // 2, " there.")]
    assert pump.reply_text(1) == "Hello there."


async def test_pause_holds_the_audio_and_resume_sends_again_from_where_it_stopped() -> None:
    out = Timed()
    clock = PlaybackClock(RATE, lead_ms=300)
    pump = ReplyPump(out, clock)
    reply = pump.output(1)
    audio = np.arange(RATE, dtype="<i2").tobytes()  # every sample tells where it was
    await reply.audio(audio)
    await asyncio.sleep(0.2)
    stopped_at = pump.pause(1)
    assert 0.15 * RATE <= stopped_at <= 0.3 * RATE
    sent = len(out.pcm)
    await asyncio.sleep(0.3)
    assert len(out.pcm) == sent, "nothing goes out while paused"
    assert pump.played_samples(1) == stopped_at
    assert pump.resume(1) == stopped_at
    await asyncio.wait_for(reply.finished(), 5)
    again = np.frombuffer(bytes(out.pcm[sent:]), dtype="<i2")
    assert again[0] == stopped_at and again[-1] == RATE - 1
    assert np.all(np.diff(again) == 1)


async def test_a_reply_paused_after_all_of_it_was_sent_is_sent_again_from_there() -> None:
    out = Timed()
    pump = ReplyPump(out, PlaybackClock(RATE, lead_ms=300))
    reply = pump.output(1)
    audio = np.arange(RATE // 5, dtype="<i2").tobytes()  # 200 ms: all sent at once
    await reply.audio(audio)
    await asyncio.sleep(0.05)
    assert len(out.pcm) == len(audio)
    stopped_at = pump.pause(1)
    assert stopped_at < RATE // 5
    pump.resume(1)
    await asyncio.wait_for(reply.finished(), 5)
    assert reply.played_samples() == RATE // 5
    again = np.frombuffer(bytes(out.pcm[len(audio):]), dtype="<i2")
    assert again[0] == stopped_at and again[-1] == RATE // 5 - 1


async def test_stop_drops_the_rest_and_the_turn_hears_it_was_cut() -> None:
    out = Timed()
    pump = ReplyPump(out, PlaybackClock(RATE, lead_ms=200))
    reply = pump.output(1)
    await reply.audio(tone(RATE))
    await reply.event(ReplyText(turn_id=1, delta="never shown"))
    await asyncio.sleep(0.1)
    waiting = asyncio.ensure_future(reply.finished())
    await asyncio.sleep(0.05)
    stopped_at = pump.stop(1)
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(waiting, 5)
    assert reply.played_samples() == stopped_at
    await asyncio.sleep(0.3)
    assert len(out.pcm) // 2 <= stopped_at + 0.2 * RATE + RATE // 10  # the lead at most
    assert not [e for e in out.events if isinstance(e, ReplyText)]
    await reply.audio(tone(100))  # a late write of a stopped reply goes nowhere
    assert pump.reply_text(1) == ""


async def test_a_writer_waits_when_too_much_is_queued() -> None:
    pump = ReplyPump(Timed(), PlaybackClock(RATE, lead_ms=100), max_queued_bytes=RATE)
    reply = pump.output(1)
    await reply.audio(tone(RATE))  # 2 bytes a sample: the queue is full after this
    second = asyncio.ensure_future(reply.audio(tone(RATE)))
    await asyncio.sleep(0.2)
    assert not second.done()
    await asyncio.wait_for(second, 5)  # room again once some has been played
    await pump.close()


# --- on the real engines ---------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(240)
async def test_history_keeps_the_two_sentences_heard(engines: Engines) -> None:
    config = make_config(llm={"max_reply_s": 600.0}, playback={"lead_ms": 300})
    runner = TurnRunner(engines, config, output_rate=RATE)
    session = Session(vad_config=config.vad, frontend=PassthroughFrontend(),
                      vad=make_vad(config.vad), input_rate=RATE)
    out = Timed()

    async def closed(reason: str) -> None:
        return None

    driver = SessionDriver(session, runner, out, closed,
                           clock=PlaybackClock(RATE, lead_ms=300), echo_reference=False)
    question = spoken(engines, QUESTION, 0.8).astype("<i2").tobytes()
    await driver.execute(session.audio(silence(300) + question + silence(1500)))

    # A client that plays as fast as it gets audio (it reports all of it played) until the
    # third sentence begins; then it says where it is, and the person stops the reply.
    sentence_ends, third_at = 0, None
    deadline = time.monotonic() + 180
    while third_at is None and time.monotonic() < deadline:
        for at, event in out.at_sample:
            if isinstance(event, ReplyText) and sentence_ends == 2 and at > 0:
                third_at = at
                break
            if isinstance(event, ReplyText) and ends_sentence(event.delta.strip()):
                sentence_ends += 1
        if third_at is None:
            sentence_ends = 0
            driver.played(1, len(out.pcm) // 2)
            await asyncio.sleep(0.02)
    assert third_at is not None, [e for _, e in out.at_sample]
    driver.played(1, third_at)
    await driver.execute(session.cancel())
    assert await driver.wait_idle(30)

    done = next(e for e in out.events if isinstance(e, TurnDone))
    assert done.status == "cancelled"
    shown = [e.delta for at, e in out.at_sample if isinstance(e, ReplyText) and at < third_at]
    first_two = "".join(shown).strip()
    assert sum(ends_sentence(d.strip()) for d in shown) == 2
    assert done.heard_text == first_two, (done.heard_text, first_two)
    assert len(done.reply_text) > len(first_two)  # the third began to go out
    stopped = next(e for e in out.events if isinstance(e, ReplyInterrupted))
    assert third_at <= stopped.audio_samples <= third_at + RATE // 10
    # What the model is told it said next time: the two sentences heard, nothing more.
    said = runner.conversation.messages("next")[-2]
    assert said.role == "assistant" and said.content == first_two
    heard = next(e for e in out.events if isinstance(e, TranscriptEvent))
    assert runner.conversation.messages("next")[-3].content.endswith(heard.text)
