"""One turn on the real ASR and TTS, with the LLM swapped for fault injection where needed."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from dataclasses import replace

import numpy as np
import pytest

from tests.conftest import harvard_clips, make_config
from tests.fakes import RateRecordingTts, Recorder, ScriptedLlm
from tests.llm.test_openai_http import DONE, FaultServer, Script, event, streams
from tests.test_asr import piper
from voice_agent.audio.pcm import read_audio
from voice_agent.engines import Engines
from voice_agent.llm.chain import LlmChain
from voice_agent.llm.openai_http import OpenAiHttpEngine
from voice_agent.server.protocol import ErrorEvent, ReplyText, TranscriptEvent
from voice_agent.speculation import Speculation
from voice_agent.turn import TurnRunner

pytestmark = pytest.mark.slow


def runner_with(engines: Engines, llm: ScriptedLlm, **llm_config: float) -> TurnRunner:
    config = make_config(llm=llm_config)
    chain = LlmChain([llm], config.llm)
    return TurnRunner(replace(engines, llm=chain), config, output_rate=16000)


@pytest.fixture(scope="module")
def utterance() -> tuple[str, object]:
    clip = harvard_clips()[0]
    return clip.reference, read_audio(clip.path)[0]


async def test_reasoning_is_never_spoken_or_sent(engines: Engines, utterance: tuple) -> None:
    llm = ScriptedLlm(["Let me th", "ink about dogs.</th", "ink>\n\nDogs are ", "loyal friends."],
                      opens_reasoning=True)
    out = Recorder()
    done = await runner_with(engines, llm).run(1, utterance[1], 450, out)
    assert done.status == "ok"
    assert done.reply_text == "Dogs are loyal friends."
    deltas = "".join(e.delta for e in out.events if isinstance(e, ReplyText))
    assert "think" not in deltas.lower() and "<" not in deltas
    assert done.audio_samples == len(out.pcm) // 2 > 16000 // 2
    back = engines.asr.transcribe(np.frombuffer(bytes(out.pcm), "<i2"))
    assert "think" not in back.text.lower()


async def test_llm_that_hangs_is_reported_within_its_budget(
    engines: Engines, utterance: tuple
) -> None:
    llm = ScriptedLlm([], then="hang")
    out = Recorder()
    done = await runner_with(engines, llm, first_token_timeout_s=1.0).run(1, utterance[1], 450, out)
    assert done.status == "error"
    errors = [e for e in out.events if isinstance(e, ErrorEvent)]
    assert [(e.code, e.transient, e.turn_id) for e in errors] == [("engine_timeout", True, 1)]
    # The budget starts when the engine does: Whisper's time before it and the spoken
    # apology after (both slow on a loaded machine) are not the engine's.
    reported_after_s = out.arrived[out.events.index(errors[0])] - llm.called_at[0]
    assert reported_after_s < 1.0 + 1.0, done.timings_ms
    assert llm.stopped.wait(2), "the hung engine was not told to stop"


async def test_llm_that_stalls_mid_reply_is_reported(engines: Engines, utterance: tuple) -> None:
    llm = ScriptedLlm(["Sure. ", "I can"], then="hang")
    out = Recorder()
    done = await runner_with(engines, llm, token_timeout_s=0.5).run(1, utterance[1], 450, out)
    assert done.status == "error"
    assert [e.code for e in out.events if isinstance(e, ErrorEvent)] == ["engine_timeout"]


async def test_llm_that_raises_mid_stream_is_a_coded_error(
    engines: Engines, utterance: tuple
) -> None:
    out = Recorder()
    done = await runner_with(engines, ScriptedLlm(["Hello. "], then="raise")).run(
        1, utterance[1], 450, out)
    assert done.status == "error"
    assert [e.code for e in out.events if isinstance(e, ErrorEvent)] == ["llm_failed"]
    assert any(isinstance(e, TranscriptEvent) and e.text for e in out.events)


class BrokenAsr:
    def transcribe(self, audio: object) -> object:
        raise RuntimeError("a bug, not an engine error")


async def test_unexpected_exception_still_ends_the_turn(
    engines: Engines, utterance: tuple
) -> None:
    runner = TurnRunner(replace(engines, asr=BrokenAsr()), make_config(), output_rate=16000)
    out = Recorder()
    done = await runner.run(1, utterance[1], 450, out)
    assert done.status == "error"
    assert [(e.code, e.transient) for e in out.events if isinstance(e, ErrorEvent)] == [
        ("internal", False)]


async def test_engine_bug_is_an_engine_failure(engines: Engines, utterance: tuple) -> None:
    out = Recorder()
    done = await runner_with(engines, ScriptedLlm([], then="bug")).run(1, utterance[1], 450, out)
    assert done.status == "error"
    assert done.fallbacks == {"scripted": "engine_failed"}
    assert [(e.code, e.transient) for e in out.events if isinstance(e, ErrorEvent)] == [
        ("engine_failed", True)]
    assert done.audio_samples > 0  # the apology is spoken: never silence


async def test_cancelled_reply_keeps_only_spoken_sentences_in_history(
    engines: Engines, utterance: tuple
) -> None:
    # Still generating when the cancel comes, however slow the first sentence's speech is
    # on a loaded machine (8 s of pieces).
    pieces = ["First sentence here. ", "Second one follows. ", "Third never comes. ",
              *(f"Then sentence {n}. " for n in range(17))]
    llm = ScriptedLlm(pieces, delay_s=0.4)
    runner = runner_with(engines, llm)
    out = Recorder()
    task = asyncio.create_task(runner.run(1, utterance[1], 450, out))
    while not out.pcm:
        await asyncio.sleep(0.02)
    await asyncio.sleep(0.3)
    task.cancel()
    done = await task
    assert done.status == "cancelled"
    assert llm.stopped.wait(3), "the engine kept generating after the cancel"
    history = runner.conversation.messages("next")
    assert history[-2].role == "assistant"
    assert "Third" not in history[-2].content
    assert history[-3].content.splitlines()[-1] == done.transcript  # after the emotion tag


# --- DeepSeek-R1 behind an OpenAI-compatible server, cut off by the length limit ----------

THOUGHT = ["Okay, so the user", " wants quokka facts.", " Hmm, marmalade", " and the",
           " xylophone, I think the"]
THOUGHT_WORDS = ("quokka", "marmalade", "xylophone", "hmm")


@pytest.fixture
def scripted_server() -> Iterator[Callable[[Script], FaultServer]]:
    servers: list[FaultServer] = []

    def start(script: Script) -> FaultServer:
        servers.append(FaultServer(script))
        return servers[-1]

    yield start
    for server in servers:
        server.release.set()
        server.shutdown()
        server.server_close()


def r1_runner(engines: Engines, base_url: str, opens_reasoning: bool | None,
              **llm_config: float) -> tuple[TurnRunner, OpenAiHttpEngine]:
    config = make_config(llm=llm_config)
    r1 = OpenAiHttpEngine.from_spec(f"{base_url}#deepseek-r1", config.llm)
    r1.opens_reasoning = opens_reasoning
    chain = LlmChain([r1, engines.llm.primary], config.llm)
    return TurnRunner(replace(engines, llm=chain), config, output_rate=16000), r1


@pytest.mark.timeout(120)
@pytest.mark.parametrize("opens_reasoning", [None, True], ids=["undecided", "template-opened"])
async def test_r1_cut_off_mid_thought_is_never_spoken_and_the_fallback_answers(
    engines: Engines, utterance: tuple, scripted_server: Callable[[Script], FaultServer],
    opens_reasoning: bool | None,
) -> None:
    """The issue's probe: an R1 whose template opened <think> (so no tag in the stream) hits
    the length limit mid-thought. ``None`` is how an R1 named on an HTTP server is run."""
    server = scripted_server(streams(*(event(p) for p in THOUGHT), event(finish="length"),
                                     DONE))
    runner, r1 = r1_runner(engines, server.base_url, opens_reasoning)
    out = Recorder()
    done = await runner.run(1, utterance[1], 450, out)
    assert done.status == "ok", done
    assert done.engine == engines.llm.primary.name
    assert done.fallbacks == {r1.name: "llm_truncated"}
    shown = "".join(e.delta for e in out.events if isinstance(e, ReplyText))
    assert shown == done.reply_text and any(ch.isalpha() for ch in shown)
    back = engines.asr.transcribe(np.frombuffer(bytes(out.pcm), "<i2")).text.lower()
    for word in THOUGHT_WORDS:
        assert word not in shown.lower() and word not in back, (word, shown, back)
    assert done.audio_samples > 8000  # the fallback's answer is heard
    config = make_config().llm
    assert server.requests[0][2]["max_tokens"] == (config.reasoning_budget_tokens
                                                   + config.max_tokens)


@pytest.mark.timeout(120)
async def test_r1_answer_cut_off_mid_sentence_ends_at_its_last_sentence(
    engines: Engines, utterance: tuple, scripted_server: Callable[[Script], FaultServer],
) -> None:
    server = scripted_server(streams(
        event("<think>quokka marmalade</think>"), event("Dogs are loyal"), event(" friends."),
        event(" They also"), event(finish="length"), DONE))
    runner, r1 = r1_runner(engines, server.base_url, None)
    out = Recorder()
    done = await runner.run(1, utterance[1], 450, out)
    assert (done.status, done.engine, done.fallbacks) == ("ok", r1.name, {})
    assert done.reply_text == "Dogs are loyal friends."
    assert "".join(e.delta for e in out.events if isinstance(e, ReplyText)) == done.reply_text
    assert not any(isinstance(e, ErrorEvent) for e in out.events)


@pytest.mark.timeout(120)
async def test_r1_answer_is_capped_at_max_tokens_after_its_reasoning(
    engines: Engines, utterance: tuple, scripted_server: Callable[[Script], FaultServer],
) -> None:
    """The reasoning does not count against the answer's length, and the answer stops at
    ``llm.max_tokens`` pieces even though the engine may generate more."""
    thinking = [event("<think>")] + [event(" quokka") for _ in range(40)] + [event("</think>")]
    answer = [event("One. "), event("Two. "), event("Three. "), event("Four"), event(" more. "),
              event("Five. ")]
    server = scripted_server(streams(*thinking, *answer, event(finish="stop"), DONE))
    # No "let me think" acknowledgement: on a loaded machine the 40 pieces can take its 2 s.
    runner, r1 = r1_runner(engines, server.base_url, None, max_tokens=4, reasoning_ack_s=0.0)
    done = await runner.run(1, utterance[1], 450, Recorder())
    assert (done.status, done.engine) == ("ok", r1.name)
    assert done.reply_text == "One. Two. Three."
    assert server.requests[0][2]["max_tokens"] == make_config().llm.reasoning_budget_tokens + 4


@pytest.mark.parametrize("cancel_after", ["asr", "transcript"])
async def test_a_turn_cancelled_before_its_reply_was_heard_leads_the_next_turn(
    engines: Engines, cancel_after: str
) -> None:
    """The person went on talking before any reply went out (an utterance cut at its maximum
    length, a decision the resume window could not undo): its words are not lost, they
    lead the next turn's transcript and the model is asked about both."""
    first, second = harvard_clips()[0], harvard_clips()[1]
    llm = ScriptedLlm(["Fine."], delay_s=0.5)  # slow: the cancel lands before any audio
    run = runner_with(engines, llm)
    out = Recorder()
    task = asyncio.create_task(run.run(1, read_audio(first.path)[0], 450, out))
    if cancel_after == "asr":
        await asyncio.sleep(0.02)  # the transcription has started, not finished
    else:
        while not [e for e in out.events if isinstance(e, TranscriptEvent)]:
            await asyncio.sleep(0.01)
    task.cancel()
    cancelled = await task
    assert cancelled.status == "cancelled" and cancelled.audio_samples == 0
    done = await run.run(2, read_audio(second.path)[0], 450, Recorder())
    assert done.status == "ok", done
    first_words, second_words = first.reference.split(), second.reference.split()
    heard = done.transcript.lower()
    assert first_words[1].lower() in heard.split()[: len(first_words) + 2], heard
    assert second_words[-1].lower().strip(".") in heard, heard
    assert first_words[1].lower() in llm.prompts[-1][-1].content.lower()
    # Carried once: a third turn starts afresh.
    third = await run.run(3, read_audio(second.path)[0], 450, Recorder())
    assert first_words[1].lower() not in third.transcript.lower().split()[:3], third


async def test_a_thrown_away_speculation_keeps_the_carried_words_for_the_next_turn(
    engines: Engines,
) -> None:
    first, second = harvard_clips()[0], harvard_clips()[1]
    run = runner_with(engines, ScriptedLlm(["Fine."], delay_s=0.5))
    task = asyncio.create_task(run.run(1, read_audio(first.path)[0], 450, Recorder()))
    await asyncio.sleep(0.02)
    task.cancel()
    assert (await task).status == "cancelled"  # its words wait for the next turn
    speculation = Speculation(Recorder())  # a pause in turn 2: prepared, then thrown away
    out = Recorder()
    spec_task = asyncio.create_task(run.run(2, read_audio(second.path)[0], 150, out,
                                            speculation=speculation))
    while not speculation.transcript.done():
        await asyncio.sleep(0.01)
    speculation.abandon()
    spec_task.cancel()
    await asyncio.gather(spec_task, return_exceptions=True)
    assert not out.events  # held, then dropped
    done = await run.run(2, read_audio(second.path)[0], 450, Recorder())
    assert first.reference.split()[1].lower() in done.transcript.lower(), done.transcript


@pytest.mark.parametrize("trust", [False, True])
async def test_a_burst_of_noise_has_no_words_and_a_sentence_keeps_them(
        engines: Engines, utterance: tuple, trust: bool) -> None:
    runner = TurnRunner(engines, make_config(), output_rate=16000)
    noise = np.random.default_rng(3).normal(0, 300, 16000).astype(np.int16)  # 1 s of hiss
    assert (await runner.hear_burst(noise, trust=trust)).text == ""
    reference, audio = utterance
    heard = await runner.hear_burst(audio, trust=trust)
    assert reference.split()[0].lower() in heard.text.lower(), heard


async def test_the_replys_own_end_heard_after_it_is_not_answered_and_a_question_is(
        engines: Engines, utterance: tuple) -> None:
    """Speech begun in a reply's echo tail (``after_reply``): the reply's own last words,
    as the canceller lets them through, end ``backchannel`` unanswered and leave the
    conversation be; a question of the person's is answered."""
    runner = TurnRunner(engines, make_config(), output_rate=16000)
    first = await runner.run(1, utterance[1], 450, Recorder())
    assert first.status == "ok" and first.heard_text, first
    its_end = " ".join(first.heard_text.split()[-5:])
    out = Recorder()
    echo = await runner.run(2, piper(engines, its_end), 450, out, after_reply=True)
    assert (echo.status, echo.reply_text) == ("backchannel", ""), (its_end, echo)
    assert echo.transcript and not out.pcm
    assert not [e for e in out.events if isinstance(e, TranscriptEvent)]
    assert len(runner.conversation) == 1
    question = harvard_clips()[1]
    asked = await runner.run(3, read_audio(question.path)[0], 450, Recorder(), after_reply=True)
    assert asked.status == "ok" and asked.reply_text, asked
    assert question.reference.split()[-1].lower().strip(".") in asked.transcript.lower()


async def test_a_text_only_turn_synthesizes_nothing_and_remembers_its_reply(
    engines: Engines,
) -> None:
    """``voiced=False`` (Wyoming's conversation agent, whose client speaks the text itself):
    the reply comes as text only, no time goes to speech nobody hears, and the conversation
    keeps the whole reply, as it does for a reply that was heard."""
    tts = RateRecordingTts(engines.tts)
    config = make_config()
    llm = ScriptedLlm(["Dogs are loyal", " friends. They", " love long walks."])
    runner = TurnRunner(replace(engines, llm=LlmChain([llm], config.llm), tts=tts), config,
                        output_rate=16000)
    out = Recorder()
    done = await runner.run(1, np.zeros(0, np.int16), 0, out, text="Tell me about dogs.",
                            voiced=False)
    assert (done.status, done.audio_samples, bytes(out.pcm), tts.rates) == ("ok", 0, b"", [])
    assert done.reply_text == "Dogs are loyal friends. They love long walks."
    assert "".join(e.delta for e in out.events if isinstance(e, ReplyText)) == done.reply_text
    assert done.heard_text == done.reply_text
    remembered = runner.conversation.messages("And cats?")
    assert [(m.role, m.content) for m in remembered[-3:-1]] == [
        ("user", "Tell me about dogs."), ("assistant", done.reply_text)]


async def test_a_text_only_reply_keeps_to_the_spoken_length_limit(engines: Engines) -> None:
    """``llm.max_reply_s`` holds for a reply the client will speak itself, on the time it will
    take to say: it ends at a sentence boundary, as a spoken reply does."""
    sentence = "Dogs were the first animals that people kept, many thousands of years ago. "
    config = make_config(llm={"max_reply_s": 10.0})
    llm = ScriptedLlm([sentence] * 8)  # 8 x 4.7 s at 16 characters a second
    runner = TurnRunner(replace(engines, llm=LlmChain([llm], config.llm)), config,
                        output_rate=16000)
    done = await runner.run(1, np.zeros(0, np.int16), 0, Recorder(), text="Tell me about dogs.",
                            voiced=False)
    assert done.status == "ok"
    assert done.reply_text == " ".join([sentence.strip()] * 2)
