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
