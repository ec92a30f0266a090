"""``llm.max_reply_s``: a spoken reply ends at a sentence boundary within the limit, on the
real engines (Whisper, the embedded llama.cpp model, Piper)."""

from __future__ import annotations

import re

import pytest

from tests.conftest import make_config
from tests.fakes import Recorder
from tests.test_turn_emotion import spoken
from voice_agent.engines import Engines
from voice_agent.errors import ConfigError
from voice_agent.server.protocol import ReplyText
from voice_agent.turn import TurnRunner

RATE = 16000
QUESTION = "Tell me the whole history of the Roman Empire, in as much detail as you can."


@pytest.mark.slow
@pytest.mark.timeout(240)
async def test_a_long_answer_ends_at_a_sentence_within_max_reply_s(engines: Engines) -> None:
    question = spoken(engines, QUESTION, 0.8)
    free = TurnRunner(engines, make_config(llm={"max_reply_s": 600.0}), output_rate=RATE)
    unlimited = await free.run(1, question, 450, Recorder())
    limit = 8.0
    assert unlimited.audio_samples / RATE > limit + 2, (
        "the question no longer draws a long answer: this test would prove nothing",
        unlimited.reply_text)

    capped = TurnRunner(engines, make_config(llm={"max_reply_s": limit}), output_rate=RATE)
    out = Recorder()
    done = await capped.run(1, question, 450, out)
    assert done.status == "ok", done
    assert 1.0 < done.audio_samples / RATE <= limit + 0.02, (done.audio_samples, done.reply_text)
    assert re.search(r"[.!?][\"')]*$", done.reply_text), done.reply_text
    # What is shown is what is heard, and what the model is told it said next turn.
    assert "".join(e.delta for e in out.events if isinstance(e, ReplyText)) == done.reply_text
    assert capped.conversation.messages("next")[-2].content == done.reply_text


@pytest.mark.parametrize("seconds", [0.0, 0.5, 601.0])
def test_max_reply_s_out_of_range_is_a_config_error(seconds: float) -> None:
    with pytest.raises(ConfigError, match="max_reply_s"):
        make_config(llm={"max_reply_s": seconds})
