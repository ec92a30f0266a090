"""The emotion tag inside a turn: event, prompt and speaking rate, on the real ASR and TTS."""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator, Sequence
from dataclasses import replace

import numpy as np
import pytest

from tests.conftest import harvard_clips, make_config
from tests.fakes import RateRecordingTts, Recorder, ScriptedLlm
from tests.voices import raised
from voice_agent.audio.pcm import Int16Array, StreamResampler, read_audio
from voice_agent.emotion import LABELS, EmotionTag
from voice_agent.engines import Engines
from voice_agent.llm.base import ChatMessage
from voice_agent.llm.chain import LlmChain
from voice_agent.llm.conversation import Conversation
from voice_agent.prompt import TAG_NOTE, system_prompt, tag_note
from voice_agent.server.protocol import EmotionEvent, ErrorEvent, ReplyText, TranscriptEvent
from voice_agent.turn import TurnRunner

pytestmark = pytest.mark.slow

TAG_LINE = re.compile(r"^\[tone: (happy|excited|sad|angry|anxious|hesitant)\]$")
REPLY = "I understand. Let me sort that out for you right away."


def spoken(engines: Engines, text: str, gain: float) -> Int16Array:
    """``text`` in the Piper voice at 16 kHz, scaled by ``gain`` (louder or quieter)."""
    pcm = np.concatenate(list(engines.tts.synthesize(text, threading.Event())))
    resampler = StreamResampler(engines.tts.sample_rate, 16000)
    audio = np.concatenate([resampler.process(pcm), resampler.flush()]).astype(np.float64)
    return np.clip(audio * gain, -32768, 32767).astype(np.int16)


def scripted_runner(engines: Engines, llm: ScriptedLlm, **emotion: bool) -> TurnRunner:
    config = make_config(emotion=dict(emotion))
    tts = RateRecordingTts(engines.tts)
    return TurnRunner(replace(engines, llm=LlmChain([llm], config.llm), tts=tts), config,
                      output_rate=16000)


async def test_real_turn_sends_the_tag_and_prompts_with_it(engines: Engines) -> None:
    """Real speech, real llama.cpp: the tag arrives after the transcript and before the
    reply, the model's user turn starts with it, and it is never spoken back."""
    clip = harvard_clips()[0]
    audio = read_audio(clip.path)[0]
    runner = TurnRunner(engines, make_config(), output_rate=16000)
    out = Recorder()
    done = await runner.run(1, audio, 450, out)
    assert done.status == "ok", done
    kinds = [type(e) for e in out.events]
    assert kinds.index(TranscriptEvent) < kinds.index(EmotionEvent) < kinds.index(ReplyText)
    tag = next(e for e in out.events if isinstance(e, EmotionEvent))
    assert tag.label in LABELS and -1 <= tag.valence <= 1 and 0 <= tag.arousal <= 1
    assert tag.cues["speech_s"] > 0.5 and tag.cues["pitch_hz"] > 60
    assert "emotion_ms" in done.timings_ms
    messages = runner.conversation.messages("next")
    assert TAG_NOTE in messages[0].content
    # A neutral or unsure tag gives the wording nothing to go on: no note at all.
    note = tag_note(EmotionTag(label=tag.label, confidence=tag.confidence))
    assert messages[1:-2] == [*([ChatMessage("system", note)] if note else []),
                              ChatMessage("user", done.transcript)], messages
    assert "speaker" not in done.reply_text.lower() and "[" not in done.reply_text


async def test_upset_speaker_is_tagged_and_answered_slower(engines: Engines) -> None:
    audio = spoken(engines, "I am furious. This is terrible, I hate waiting!", gain=2.0)
    shaped, plain = ScriptedLlm([REPLY]), ScriptedLlm([REPLY])
    shaped_out, plain_out = Recorder(), Recorder()
    shaped_runner = scripted_runner(engines, shaped)
    plain_runner = scripted_runner(engines, plain, shape_speech=False, tag_prompt=False)
    await shaped_runner.run(1, audio, 450, shaped_out)
    await plain_runner.run(1, audio, 450, plain_out)

    tag = next(e for e in shaped_out.events if isinstance(e, EmotionEvent))
    assert tag.label in ("angry", "anxious", "sad") and tag.valence <= -0.25
    assert tag.length_scale > 1.05
    system, note, user = shaped.prompts[0]
    assert note.role == "system" and TAG_LINE.match(note.content)
    assert note.content == f"[tone: {tag.label}]"
    assert "calmly" in system.content  # the wording rules, fixed
    assert [m.role for m in plain.prompts[0]] == ["system", "user"]  # no tag
    assert plain.prompts[0][-1] == user and "calmly" not in plain.prompts[0][0].content
    # Every sentence of the reply is spoken at the tag's rate (Piper's own duration noise
    # makes one reply's length too noisy to compare; tests/tts checks the rate itself).
    assert isinstance(shaped_runner._engines.tts, RateRecordingTts)
    assert isinstance(plain_runner._engines.tts, RateRecordingTts)
    assert shaped_runner._engines.tts.rates == [tag.length_scale] * 2
    assert plain_runner._engines.tts.rates == [1.0] * 2
    plain_tag = next(e for e in plain_out.events if isinstance(e, EmotionEvent))
    assert plain_tag.length_scale == 1.0


async def test_system_prompt_is_the_same_whatever_the_tag(engines: Engines) -> None:
    """So llama.cpp's KV cache of it stays valid from turn to turn."""
    llm = ScriptedLlm([REPLY])
    runner = scripted_runner(engines, llm)
    await runner.run(1, spoken(engines, "What time does the pharmacy open?", 0.7), 450,
                     Recorder())
    await runner.run(2, spoken(engines, "I am furious, this is terrible!", 2.0), 450,
                     Recorder())
    first, second = llm.prompts
    assert first[0].content == system_prompt(make_config())
    assert second[: len(first)] == first  # the new prompt extends the last one exactly
    assert second[len(first)] == ChatMessage("assistant", REPLY)
    assert TAG_LINE.match(second[-2].content)  # the furious one is tagged


async def test_disabled_emotion_sends_nothing_and_prompts_plainly(engines: Engines) -> None:
    llm = ScriptedLlm([REPLY])
    audio = spoken(engines, "What time does the pharmacy open tomorrow?", gain=0.7)
    out = Recorder()
    runner = scripted_runner(engines, llm, enabled=False)
    await runner.run(1, audio, 450, out)
    assert not any(isinstance(e, EmotionEvent) for e in out.events)
    assert TAG_NOTE not in llm.prompts[0][0].content
    assert llm.prompts[0][-1].content.lower().startswith("what time")


async def test_a_failing_analysis_costs_the_tag_not_the_answer(
    engines: Engines, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: object, **kwargs: object) -> None:
        raise FloatingPointError("injected")

    monkeypatch.setattr("voice_agent.turn.analyze", broken)
    llm = ScriptedLlm([REPLY])
    out = Recorder()
    done = await scripted_runner(engines, llm).run(
        1, spoken(engines, "Hello there.", gain=1.0), 450, out)
    assert done.status == "ok" and done.reply_text == REPLY
    assert not any(isinstance(e, EmotionEvent) for e in out.events)


async def test_an_echoed_tag_is_neither_shown_nor_spoken(engines: Engines) -> None:
    llm = ScriptedLlm(["[spea", "ker: label=neutral valence=0.00 ", "arousal=0.50 confidence=0.6",
                       "0]\n", "It opens at nine."])
    out = Recorder()
    done = await scripted_runner(engines, llm).run(
        1, spoken(engines, "When does the pharmacy open?", gain=0.7), 450, out)
    assert done.reply_text == "It opens at nine."
    assert "".join(e.delta for e in out.events if isinstance(e, ReplyText)) == done.reply_text
    back = engines.asr.transcribe(np.frombuffer(bytes(out.pcm), "<i2")).text.lower()
    assert "opens" in back and "speaker" not in back and "label" not in back


class TagCopier(ScriptedLlm):
    """Answers a tagged turn with nothing but a copy of its tag (what the embedded model
    does in about 2% of tagged turns); answers an untagged one properly."""

    def stream(self, messages: Sequence[ChatMessage], cancel: threading.Event) -> Iterator[str]:
        self.calls += 1
        self.prompts.append(list(messages))
        note = messages[-2].content
        yield note if note.startswith("[tone:") else "It opens at nine."


async def test_a_reply_that_is_only_a_copied_tag_is_asked_again_without_it(
    engines: Engines,
) -> None:
    llm = TagCopier([])
    out = Recorder()
    done = await scripted_runner(engines, llm).run(
        1, spoken(engines, "I am furious, when does the pharmacy open?", gain=2.0), 450, out)
    assert done.status == "ok" and done.reply_text == "It opens at nine."
    assert done.fallbacks == {} and llm.calls == 2
    assert [m.role for m in llm.prompts[1]] == ["system", "user"]
    assert not any(isinstance(e, ErrorEvent) for e in out.events)


async def test_a_sentence_about_the_tag_is_neither_shown_nor_spoken(engines: Engines) -> None:
    llm = ScriptedLlm(["This sounds neutral, with a valence", " of 0.00 and arousal 0.50. ",
                       "It opens at nine."])
    out = Recorder()
    done = await scripted_runner(engines, llm).run(
        1, spoken(engines, "When does the pharmacy open?", gain=0.7), 450, out)
    assert done.status == "ok" and done.reply_text == "It opens at nine."
    assert "".join(e.delta for e in out.events if isinstance(e, ReplyText)) == done.reply_text
    back = engines.asr.transcribe(np.frombuffer(bytes(out.pcm), "<i2")).text.lower()
    assert "opens" in back and "valence" not in back and "arousal" not in back


class TagTalker(ScriptedLlm):
    """Answers a tagged turn by discussing its tag (what the embedded model did to "a
    neutral sentence"); answers an untagged one properly."""

    def stream(self, messages: Sequence[ChatMessage], cancel: threading.Event) -> Iterator[str]:
        self.calls += 1
        self.prompts.append(list(messages))
        tagged = messages[-2].content.startswith("[tone:")
        yield ("This sentence is a mix of both neutral valence (-0.03) and low arousal."
               if tagged else "It opens at nine.")


async def test_a_reply_that_only_discusses_the_tag_is_asked_again_without_it(
    engines: Engines,
) -> None:
    llm = TagTalker([])
    out = Recorder()
    done = await scripted_runner(engines, llm).run(
        1, spoken(engines, "I am furious, when does the pharmacy open?", gain=2.0), 450, out)
    assert llm.prompts[0][-2].content.startswith("[tone:"), "this turn must have been tagged"
    assert done.status == "ok" and done.reply_text == "It opens at nine."
    assert llm.calls == 2 and [m.role for m in llm.prompts[1]] == ["system", "user"]
    assert not any(isinstance(e, ErrorEvent) for e in out.events)


TAG_TALK = re.compile(r"valence|arousal|confidence|speaker|\btags?\b|\blabel|\bneutral\b|"
                      r"\btone:|\[", re.IGNORECASE)
"""The tag's words (as benchmarks/tag_mentions.py counts them)."""


@pytest.mark.timeout(240)
async def test_the_embedded_model_never_discusses_the_tag(engines: Engines) -> None:
    """Real turns on the embedded model with a fixed seed, over sentences in several moods."""
    # No tag word in what the person says: a reply may repeat the person's own words (a CI
    # run answered "This is a neutral sentence." with "This is the neutral sentence.").
    sentences = [("The meeting is at three in the afternoon.", 0.7),
                 ("I am furious. This is terrible, I hate waiting!", 2.0),
                 ("I feel so sad and alone today.", 0.5),
                 ("Wow, that is wonderful news, thank you so much!", 1.5),
                 ("Um, I, uh, I am not sure what to ask.", 0.7)]
    runner = TurnRunner(engines, make_config(), output_rate=16000)
    replies = []
    for turn_id, (sentence, gain) in enumerate(sentences, 1):
        runner.conversation = Conversation(runner.conversation.system_prompt, 0)
        done = await runner.run(turn_id, spoken(engines, sentence, gain), 450, Recorder())
        assert done.status == "ok", done
        replies.append(done.reply_text)
    assert not [r for r in replies if TAG_TALK.search(r)], replies


async def test_a_shouted_neutral_question_is_answered_calmly_and_slower(engines: Engines
                                                                       ) -> None:
    """The words are neutral; the voice is not: after two turns in the speaker's usual
    voice, the same kind of question shouted (higher, 16 dB louder, pressed) is tagged
    ``angry`` by the voice, and the reply's wording and pace change with it."""
    llm = ScriptedLlm([REPLY] * 3)
    runner = scripted_runner(engines, llm)
    usual = [raised(spoken(engines, text, 1.0), level_dbfs=-36)
             for text in ("What time does the pharmacy open?", "Where is the car park?")]
    for turn_id, audio in enumerate(usual, 1):
        calm_out = Recorder()
        await runner.run(turn_id, audio, 450, calm_out)
        calm = next(e for e in calm_out.events if isinstance(e, EmotionEvent))
        assert calm.label == "neutral", calm
    shouted = raised(spoken(engines, "Where is my car?", 1.0), semitones=4, level_dbfs=-20,
                     bright=True)
    out = Recorder()
    done = await runner.run(3, shouted, 450, out)
    tag = next(e for e in out.events if isinstance(e, EmotionEvent))
    assert (tag.label, tag.decided_by, tag.baseline_turns) == ("angry", "voice", 2), tag.basis
    assert tag.basis["loudness"]["score"] > 1.5 and tag.length_scale > 1.05
    assert llm.prompts[2][-2].content == "[tone: angry]"  # right before the words
    assert isinstance(runner._engines.tts, RateRecordingTts)
    assert runner._engines.tts.rates[-1] == tag.length_scale
    assert done.status == "ok"


async def test_a_tagged_first_sentence_longer_than_the_limit_is_heard_as_untagged(
    engines: Engines,
) -> None:
    """A small model may run its first sentence past ``llm.max_tokens``. Untagged, its first
    chunk is spoken before the cut; tagged, that chunk is held to judge it with its sentence,
    and the cut must not drop it: the same words are heard, with no apology."""
    run_on = ["As", " an", " example", " of", " fine", " typography", " the", " printers",
              " of", " that", " age", " used", " many", " kinds", " of", " type", " and",
              " the", " pages", " they", " made", " were", " often", " very", " beautiful"]
    audio = spoken(engines, "I am furious, when does the pharmacy open?", gain=2.0)
    replies = {}
    for tagged in (True, False):
        config = make_config(llm={"max_tokens": 12}, emotion={"tag_prompt": tagged})
        llm = ScriptedLlm(run_on)
        runner = TurnRunner(replace(engines, llm=LlmChain([llm], config.llm)), config,
                            output_rate=16000)
        out = Recorder()
        done = await runner.run(1, audio, 450, out)
        assert (done.status, done.fallbacks) == ("ok", {}), done
        assert not any(isinstance(e, ErrorEvent) for e in out.events)
        assert bool(TAG_LINE.match(llm.prompts[0][-2].content)) == tagged
        assert "".join(e.delta for e in out.events if isinstance(e, ReplyText)) == done.reply_text
        assert done.audio_samples > 8000
        replies[tagged] = done.reply_text
    assert replies[True] == replies[False] != ""
    assert replies[True].startswith("As an example")
