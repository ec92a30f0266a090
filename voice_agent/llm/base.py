"""The LLM engine interface."""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

Role = Literal["system", "user", "assistant"]


@dataclass(frozen=True)
class ChatMessage:
    role: Role
    content: str


def as_payload(messages: Iterable[ChatMessage]) -> list[dict[str, str]]:
    """The messages as the chat APIs (llama.cpp, transformers, OpenAI) take them."""
    return [{"role": m.role, "content": m.content} for m in messages]


class LlmEngine(Protocol):
    name: str
    """Reported with every turn so clients and logs know which engine answered."""
    @property
    def opens_reasoning(self) -> bool | None:
        """True when the chat template already opens ``<think>`` (DeepSeek-R1), so the
        stream starts inside the reasoning block; None when that cannot be known (an R1
        model behind a server): the stream decides (see ``ReasoningFilter``)."""
        ...

    def stream(self, messages: Sequence[ChatMessage], cancel: threading.Event) -> Iterator[str]:
        """Yield text pieces of the reply. Blocking: iterate it in an executor thread.
        Stops early once ``cancel`` is set."""
        ...
