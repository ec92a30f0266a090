"""Bounded per-session conversation history, and fitting a prompt into a context window.

History is bounded twice: by exchanges (``llm.history_turns``, per session) and by tokens
against the engine's context (:func:`fit_to_context`, per engine, since each counts tokens
its own way). A prompt that does not fit loses its oldest exchanges first; the system prompt
and the current user turn always stay, and a user turn too long on its own is cut to its
end (the question usually comes last), so an overflow never reaches the engine as an error.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from typing import NamedTuple

from voice_agent.llm.base import ChatMessage

MESSAGE_OVERHEAD_TOKENS = 8
"""Tokens a chat template adds around each message (role markers, separators: ChatML uses
5); counted on top of the content, so the budget errs on the safe side."""
PROMPT_OVERHEAD_TOKENS = 16
"""Tokens added once per prompt (BOS, the generation prompt that opens the reply)."""

TokenCounter = Callable[[str], int]
"""Tokens in one message's text, as the engine's tokenizer counts them."""


def estimate_tokens(text: str) -> int:
    """A conservative count for an engine without a tokenizer at hand (an HTTP server):
    English runs about 4 bytes per token, so 3 bytes per token over-counts; CJK runs about
    3 bytes per character and a character per token."""
    return len(text.encode("utf-8")) // 3 + 1


def fit_to_context(
    messages: Sequence[ChatMessage], budget_tokens: int, count: TokenCounter
) -> list[ChatMessage]:
    """``messages`` (as :meth:`Conversation.messages` builds them: leading system prompt,
    exchanges, then the current turn) trimmed to at most ``budget_tokens`` prompt tokens.

    Whole exchanges go, oldest first (a note goes with its exchange); then the current user
    text is cut from the start. The system prompt and the current turn's note stay.
    """
    messages = list(messages)
    # The system prompt. (Without one, a first exchange's note would be taken for it and
    # kept: harmless, and Conversation always has one in the service.)
    pinned = 1 if len(messages) > 1 and messages[0].role == "system" else 0
    # The current turn: the last user message and the system notes right before it.
    current = len(messages) - 1
    while current > pinned and messages[current - 1].role == "system":
        current -= 1
    head, history, tail = messages[:pinned], messages[pinned:current], messages[current:]
    exchanges: list[list[ChatMessage]] = []
    for message in history:
        if not exchanges or exchanges[-1][-1].role == "assistant":
            exchanges.append([])
        exchanges[-1].append(message)

    def cost(group: Sequence[ChatMessage]) -> int:
        return sum(count(m.content) + MESSAGE_OVERHEAD_TOKENS for m in group)

    fixed = PROMPT_OVERHEAD_TOKENS + cost(head) + cost(tail)
    costs = [cost(group) for group in exchanges]
    total = fixed + sum(costs)
    dropped = 0
    while total > budget_tokens and dropped < len(exchanges):
        total -= costs[dropped]
        dropped += 1
    kept = [m for group in exchanges[dropped:] for m in group]
    if total > budget_tokens and tail and tail[-1].role == "user":
        allowed = budget_tokens - (fixed - cost(tail[-1:])) - MESSAGE_OVERHEAD_TOKENS
        tail[-1] = ChatMessage("user", _keep_end(tail[-1].content, allowed, count))
    return head + kept + tail


def _keep_end(text: str, allowed_tokens: int, count: TokenCounter) -> str:
    """The longest end of ``text`` (cut at a space where it can be) within the allowance."""
    if allowed_tokens <= 0:
        return ""
    while text and count(text) > allowed_tokens:
        # Shrink in proportion, and by at least a tenth, so this takes a few counts.
        keep = min(len(text) * allowed_tokens // max(count(text), 1), len(text) * 9 // 10)
        text = text[len(text) - keep:]
        space = text.find(" ")
        if 0 <= space < len(text) - 1:
            text = text[space + 1:]
    return text


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
