"""The LLM engine interface."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

Role = Literal["system", "user", "assistant"]


@dataclass(frozen=True)
class ChatMessage:
    role: Role
    content: str


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
