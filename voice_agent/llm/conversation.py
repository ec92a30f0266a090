"""Bounded per-session conversation history."""

from __future__ import annotations

from collections import deque
from typing import NamedTuple

from voice_agent.llm.base import ChatMessage


class Exchange(NamedTuple):
    user: str
    assistant: str
    note: str = ""
    """A system note sent right before the user's words (the emotion tag), kept so the
    next turn's prompt extends this one token for token (llama.cpp reuses its KV cache)."""


class Conversation:
    """The last ``max_turns`` user/assistant exchanges, plus the system prompt."""

    def __init__(self, system_prompt: str, max_turns: int) -> None:
        self.system_prompt = system_prompt
        self._turns: deque[Exchange] = deque(maxlen=max_turns)

    def messages(self, user_text: str, note: str = "") -> list[ChatMessage]:
        """The prompt for a new user turn; ``note`` goes right before it as a system message."""
        messages = [ChatMessage("system", self.system_prompt)] if self.system_prompt else []
        for turn in self._turns:
            messages += [*self._asked(turn.user, turn.note),
                         ChatMessage("assistant", turn.assistant)]
        return messages + self._asked(user_text, note)

    @staticmethod
    def _asked(user_text: str, note: str) -> list[ChatMessage]:
        note_message = [ChatMessage("system", note)] if note else []
        return [*note_message, ChatMessage("user", user_text)]

    def add(self, user_text: str, assistant_text: str, note: str = "") -> None:
        """Record an exchange; ``assistant_text`` is what was actually spoken (a reply cut
        off by barge-in is stored truncated, so the model knows what the user heard)."""
        self._turns.append(Exchange(user_text, assistant_text, note))

    def __len__(self) -> int:
        return len(self._turns)
