"""Bounded per-session conversation history."""

from __future__ import annotations

from collections import deque

from voice_agent.llm.base import ChatMessage


class Conversation:
    """The last ``max_turns`` user/assistant exchanges, plus the system prompt."""

    def __init__(self, system_prompt: str, max_turns: int) -> None:
        self.system_prompt = system_prompt
        self._turns: deque[tuple[str, str]] = deque(maxlen=max_turns)

    def messages(self, user_text: str) -> list[ChatMessage]:
        messages = [ChatMessage("system", self.system_prompt)] if self.system_prompt else []
        for user, assistant in self._turns:
            messages.append(ChatMessage("user", user))
            messages.append(ChatMessage("assistant", assistant))
        messages.append(ChatMessage("user", user_text))
        return messages

    def add(self, user_text: str, assistant_text: str) -> None:
        """Record an exchange; ``assistant_text`` is what was actually spoken (a reply cut
        off by barge-in is stored truncated, so the model knows what the user heard)."""
        self._turns.append((user_text, assistant_text))

    def __len__(self) -> int:
        return len(self._turns)
