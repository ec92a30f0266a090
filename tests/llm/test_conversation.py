"""Bounded per-session conversation history."""

from __future__ import annotations

from voice_agent.llm.base import ChatMessage
from voice_agent.llm.conversation import Conversation


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
