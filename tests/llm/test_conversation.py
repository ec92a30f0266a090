"""Bounded per-session conversation history."""

from __future__ import annotations

import threading

import pytest

from tests.llm.test_scheduler import answer
from voice_agent.config import LlmConfig
from voice_agent.errors import EngineError
from voice_agent.llm.base import ChatMessage
from voice_agent.llm.chain import LlmChain
from voice_agent.llm.conversation import (
    MESSAGE_OVERHEAD_TOKENS,
    PROMPT_OVERHEAD_TOKENS,
    Conversation,
    estimate_tokens,
    fit_to_context,
)
from voice_agent.models import Manifest


def test_first_turn_is_system_then_user() -> None:
    conversation = Conversation("Be brief.", max_turns=3)
    assert conversation.messages("Hi") == [
        ChatMessage("system", "Be brief."),
        ChatMessage("user", "Hi"),
    ]
    assert len(conversation) == 0


def test_history_is_in_order_between_system_and_new_user_message() -> None:
    conversation = Conversation("Be brief.", max_turns=3)
    conversation.add("one?", "1")
    conversation.add("two?", "2")
    messages = conversation.messages("three?")
    assert [(m.role, m.content) for m in messages] == [
        ("system", "Be brief."),
        ("user", "one?"),
        ("assistant", "1"),
        ("user", "two?"),
        ("assistant", "2"),
        ("user", "three?"),
    ]


def test_messages_does_not_record_the_question() -> None:
    conversation = Conversation("S", max_turns=3)
    conversation.messages("not answered")
    conversation.messages("not answered either")
    assert len(conversation) == 0
    assert conversation.messages("x")[-1] == ChatMessage("user", "x")
    assert len(conversation.messages("x")) == 2


def test_history_keeps_only_the_last_max_turns_exchanges() -> None:
    conversation = Conversation("S", max_turns=2)
    for i in range(5):
        conversation.add(f"q{i}", f"a{i}")
    assert len(conversation) == 2
    contents = [m.content for m in conversation.messages("q5")]
    assert contents == ["S", "q3", "a3", "q4", "a4", "q5"]
    assert conversation.messages("q5")[0].role == "system"


def test_zero_history_turns_keeps_nothing() -> None:
    conversation = Conversation("S", max_turns=0)
    conversation.add("q", "a")
    assert len(conversation) == 0
    assert [m.role for m in conversation.messages("q2")] == ["system", "user"]


def test_empty_system_prompt_is_left_out() -> None:
    conversation = Conversation("", max_turns=2)
    conversation.add("q", "a")
    assert [m.role for m in conversation.messages("q2")] == ["user", "assistant", "user"]


def test_truncated_reply_is_stored_as_given() -> None:
    conversation = Conversation("S", max_turns=2)
    conversation.add("tell me a story", "Once upon a")
    assert conversation.messages("go on")[2] == ChatMessage("assistant", "Once upon a")


def test_notes_precede_their_user_turn_and_stay_in_history() -> None:
    """The next prompt extends the previous one exactly, so llama.cpp's KV cache holds."""
    conversation = Conversation("S", max_turns=2)
    first = conversation.messages("q1", note="[speaker: label=sad]")
    assert [(m.role, m.content) for m in first] == [
        ("system", "S"), ("system", "[speaker: label=sad]"), ("user", "q1")]
    conversation.add("q1", "a1", note="[speaker: label=sad]")
    second = conversation.messages("q2", note="[speaker: label=happy]")
    assert second[: len(first)] == first
    assert [m.content for m in second[len(first):]] == ["a1", "[speaker: label=happy]", "q2"]
    assert [m.role for m in conversation.messages("q3")] == [
        "system", "system", "user", "assistant", "user"]


def test_an_empty_reply_still_keeps_the_turns_alternating() -> None:
    conversation = Conversation("S", max_turns=2)
    conversation.add("q", "")
    assert [m.role for m in conversation.messages("q2")] == ["system", "user", "assistant", "user"]


# Fitting a prompt into the context ---------------------------------------------------------

def words(text: str) -> int:
    return len(text.split())


def overhead(messages: int) -> int:
    return PROMPT_OVERHEAD_TOKENS + messages * MESSAGE_OVERHEAD_TOKENS


def long_history(turns: int, note: str = "") -> Conversation:
    conversation = Conversation("sys", max_turns=100)
    for i in range(turns):
        conversation.add(f"q{i} " + "w " * 9, f"a{i} " + "w " * 9, note=note)
    return conversation


def test_a_prompt_that_fits_is_unchanged() -> None:
    messages = long_history(3).messages("now")
    assert fit_to_context(messages, 10_000, words) == messages


def test_oldest_exchanges_go_first_and_the_ends_stay() -> None:
    messages = long_history(6).messages("now what")
    # System (1 word) + current (2 words) + two exchanges (40 words), with overheads.
    budget = overhead(2 + 4) + 1 + 2 + 40
    fitted = fit_to_context(messages, budget, words)
    assert [m.content.split()[0] for m in fitted] == ["sys", "q4", "a4", "q5", "a5", "now"]
    assert fit_to_context(messages, budget - 1, words)[1].content.startswith("q5")


def test_a_note_goes_with_its_exchange_and_the_current_note_stays() -> None:
    conversation = long_history(4, note="[tag]")
    messages = conversation.messages("now", note="[tag now]")
    budget = overhead(3 + 3) + 1 + 21 + 2 + 1  # system, one exchange, current note and turn
    fitted = fit_to_context(messages, budget, words)
    assert [(m.role, m.content.split()[0]) for m in fitted] == [
        ("system", "sys"), ("system", "[tag]"), ("user", "q3"), ("assistant", "a3"),
        ("system", "[tag"), ("user", "now")]


def test_an_over_long_user_turn_is_cut_to_its_end() -> None:
    conversation = long_history(2)
    text = " ".join(f"w{i}" for i in range(500)) + " so what is the answer?"
    fitted = fit_to_context(conversation.messages(text), overhead(2) + 1 + 50, words)
    assert [m.role for m in fitted] == ["system", "user"]
    assert fitted[-1].content.endswith("so what is the answer?")
    assert 40 <= words(fitted[-1].content) <= 50


def test_estimate_over_counts_english_and_counts_cjk() -> None:
    assert estimate_tokens("The pharmacy opens at nine tomorrow morning.") >= 9
    assert estimate_tokens("明天药店几点开门") >= 8


@pytest.mark.slow
@pytest.mark.timeout(240)
async def test_many_long_turns_in_a_small_context_never_fail_the_real_engine() -> None:
    """The embedded model with n_ctx 512: the unfitted history would overflow the context
    (an engine error); fitted, every turn answers and the oldest exchanges are gone."""
    from voice_agent.llm.llama_cpp import LlamaCppEngine

    config = LlmConfig(n_ctx=512, max_tokens=24, seed=1234, temperature=0.0,
                       first_token_timeout_s=30.0, token_timeout_s=30.0)
    path = Manifest.load().resolve("llm", "default").path
    engine = LlamaCppEngine.load(path, config, name="llama_cpp:small-context")
    chain = LlmChain([engine], config)
    conversation = Conversation("You are brief.", max_turns=100)
    question = ("I was reading about how bridges are designed to carry heavy loads across "
                "wide rivers, and about the steel cables and concrete towers, and now I "
                "wonder about something. My uncle builds them, and he told me once that "
                "every bridge moves a little, even the stiffest ones, when trucks cross it "
                "or when the temperature changes between day and night, which surprised "
                "me. Question number {i}: why do they sway in wind?")
    try:
        for i in range(5):
            messages = conversation.messages(question.format(i=i))
            reply = await answer(chain.stream(engine, messages))
            conversation.add(question.format(i=i), reply.strip() or "I am not sure.")
        messages = conversation.messages("And one more thing: what about rain?")
        total = sum(engine.count_tokens(m.content) for m in messages)
        assert total > config.n_ctx  # the whole history no longer fits
        with pytest.raises(EngineError):  # which is what the engine would get unfitted
            list(engine.stream(messages, threading.Event()))
        fitted = chain.fit(engine, messages)
        assert fitted[0] == messages[0] and fitted[-1] == messages[-1]
        assert "number 0" not in " ".join(m.content for m in fitted)  # oldest went first
        assert "number 4" in " ".join(m.content for m in fitted)
        assert (await answer(chain.stream(engine, messages))).strip()
        # A single user turn longer than the whole context is cut, not an engine error.
        assert (await answer(chain.stream(engine, conversation.messages(question * 40)))).strip()
    finally:
        chain.close()
