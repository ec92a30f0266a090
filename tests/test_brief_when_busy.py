"""``llm.brief_when_busy``: while other turns wait for the engine, a reply ends at its first
complete sentence; alone, it is not shortened. Real engines (Whisper, the embedded llama.cpp
model, Piper); the waiter is a real queued call on the engine's lane."""

from __future__ import annotations

import asyncio
import re

import pytest

from tests.conftest import make_config
from tests.fakes import Recorder
from tests.test_turn_emotion import spoken
from voice_agent.engines import Engines
from voice_agent.turn import TurnRunner

RATE = 16000
QUESTION = "Tell me the whole history of the Roman Empire, in as much detail as you can."
SENTENCE_END = re.compile(r"[.!?][\"')]*(?:\s|$)")

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]


def sentences(text: str) -> int:
    return len(SENTENCE_END.findall(text))


async def test_a_reply_ends_at_its_first_sentence_while_others_wait(engines: Engines) -> None:
    question = spoken(engines, QUESTION, 0.8)
    config = make_config(llm={"max_reply_s": 600.0})
    alone = await TurnRunner(engines, config, output_rate=RATE).run(1, question, 450, Recorder())
    assert sentences(alone.reply_text) >= 3, (
        "the question no longer draws a long answer: this test would prove nothing",
        alone.reply_text)

    lane = engines.llm.links[0].lane
    runner = TurnRunner(engines, config, output_rate=RATE)
    turn = asyncio.create_task(runner.run(1, question, 450, Recorder()))
    while not lane.busy:  # the turn holds the engine (ASR first)
        await asyncio.sleep(0.01)
    waiter = asyncio.create_task(lane.acquire())  # someone else's turn, queued behind it
    done = await turn
    await waiter
    lane.release()
    assert done.status == "ok", done
    assert sentences(done.reply_text) == 1, done.reply_text
    assert done.reply_text.endswith((".", "!", "?")), done.reply_text
    assert runner.conversation.messages("next")[-2].content == done.reply_text


async def test_off_the_reply_is_not_shortened(engines: Engines) -> None:
    question = spoken(engines, QUESTION, 0.8)
    config = make_config(llm={"max_reply_s": 600.0, "brief_when_busy": False})
    lane = engines.llm.links[0].lane
    turn = asyncio.create_task(
        TurnRunner(engines, config, output_rate=RATE).run(1, question, 450, Recorder()))
    while not lane.busy:
        await asyncio.sleep(0.01)
    waiter = asyncio.create_task(lane.acquire())
    done = await turn
    await waiter
    lane.release()
    assert sentences(done.reply_text) >= 3, done.reply_text
