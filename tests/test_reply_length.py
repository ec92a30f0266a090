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
from voice_agent.llm.text import ends_sentence
from voice_agent.server.protocol import ReplyText, ServerEvent
from voice_agent.turn import TurnRunner

RATE = 16000
QUESTION = "Tell me the whole history of the Roman Empire, in as much detail as you can."


class SentenceClock(Recorder):
    """Notes where in the reply audio each piece of reply text starts (a piece is shown as it
    starts being spoken), to tell where its sentences end."""

    def __init__(self) -> None:
        super().__init__()
        self.pieces: list[tuple[int, str]] = []

    async def event(self, event: ServerEvent) -> None:
        if isinstance(event, ReplyText):
            self.pieces.append((len(self.pcm) // 2, event.delta))
        await super().event(event)

    def sentence_ends_s(self) -> list[float]:
        """Seconds into the reply at which each sentence ends (a first piece may end at a
        clause break: the sentence goes on in the next one)."""
        ends = [*(start for start, _ in self.pieces[1:]), len(self.pcm) // 2]
        return [end / RATE for end, (_, text) in zip(ends, self.pieces, strict=True)
                if ends_sentence(text.strip())]


@pytest.mark.slow
@pytest.mark.timeout(240)
async def test_a_long_answer_ends_at_a_sentence_within_max_reply_s(engines: Engines) -> None:
    question = spoken(engines, QUESTION, 0.8)
    free = TurnRunner(engines, make_config(llm={"max_reply_s": 600.0}), output_rate=RATE)
    clock = SentenceClock()
    await free.run(1, question, 450, clock)
    # The limit falls between two sentence ends of what this machine's model says (its words
    # differ between CPUs), after at least two seconds: the first sentence always streams whole.
    ends = clock.sentence_ends_s()
    later = [i for i, end in enumerate(ends[:-1]) if end >= 2.0]
    assert later, ("the question no longer draws a long answer: this test would prove nothing",
                   ends)
    limit = round((ends[later[0]] + ends[later[0] + 1]) / 2, 2)

    capped = TurnRunner(engines, make_config(llm={"max_reply_s": limit}), output_rate=RATE)
    out = SentenceClock()
    done = await capped.run(1, question, 450, out)
    assert done.status == "ok", done
    # The model need not say the same words again (its prompt state may come from the cache),
    # so the bound is checked on this reply's own sentences: it stops within the limit, unless
    # its first sentence alone runs past it (a first sentence is always spoken whole).
    seconds, own_ends = done.audio_samples / RATE, out.sentence_ends_s()
    assert 1.0 < seconds < len(clock.pcm) / 2 / RATE, (seconds, ends, done.reply_text)
    assert seconds <= limit + 0.02 or seconds == pytest.approx(own_ends[0], abs=0.02), (
        seconds, limit, own_ends, done.reply_text)
    assert re.search(r"[.!?][\"')]*$", done.reply_text), done.reply_text
    # What is shown is what is heard, and what the model is told it said next turn.
    assert "".join(e.delta for e in out.events if isinstance(e, ReplyText)) == done.reply_text
    assert capped.conversation.messages("next")[-2].content == done.reply_text


@pytest.mark.parametrize("seconds", [0.0, 0.5, 601.0])
def test_max_reply_s_out_of_range_is_a_config_error(seconds: float) -> None:
    with pytest.raises(ConfigError, match="max_reply_s"):
        make_config(llm={"max_reply_s": seconds})
