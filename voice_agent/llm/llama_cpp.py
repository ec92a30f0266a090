"""llama.cpp engine (llama-cpp-python) on a GGUF file, with the GGUF's own chat template.

KV cache reuse: llama-cpp-python keeps the evaluated tokens of the last call and, on the
next one, evaluates only what follows the longest common prefix. Every conversation starts
with the same system prompt, and a session's next turn extends its previous prompt, so the
unchanged prefix is not processed again. Measured here with a 740-token system prompt on
SmolLM2-135M: first turn 3.9 s to the first token, following turns 75 ms. :meth:`prefill`
pays that first cost at start-up instead of in the first person's turn. With several
sessions, each one's evaluated state is kept in RAM (``llm.session_cache_mb``) and restored
when it speaks again, so people taking turns do not evict each other's conversations.

Prompting follows the model: a DeepSeek-R1 GGUF gets R1's sampling and its system prompt
folded into the user turn, and the reasoning filter starts inside ``<think>`` only when
the template opens it (:class:`~voice_agent.llm.r1.PromptPolicy`).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator, Sequence
from typing import Any

from voice_agent.config import LlmConfig
from voice_agent.errors import EngineError, EngineTruncated, ModelError
from voice_agent.llm.base import ChatMessage
from voice_agent.llm.r1 import PromptPolicy


class LlamaCppEngine:
    """One loaded GGUF model shared by every session.

    A llama.cpp context is not safe for concurrent use, so calls are serialized by a lock:
    a second session's turn waits for the first reply to finish streaming.
    """

    def __init__(self, llama: Any, config: LlmConfig, *, name: str = "llama_cpp") -> None:
        """Wrap a loaded ``llama_cpp.Llama``; :meth:`load` opens a GGUF file."""
        self.name = name
        self._config = config
        self._llama = llama
        template = str(llama.metadata.get("tokenizer.chat_template", ""))
        model_name = f"{llama.metadata.get('general.name', '')} {name}"
        self.policy = PromptPolicy.for_template(
            template, model_name, config,
            bos_token=_special_text(llama, llama.token_bos()),
            eos_token=_special_text(llama, llama.token_eos()))
        self.opens_reasoning = self.policy.opens_reasoning
        self._lock = threading.Lock()

    @classmethod
    def load(cls, model_path: str, config: LlmConfig, *, name: str = "llama_cpp"
             ) -> LlamaCppEngine:
        from llama_cpp import Llama
        from llama_cpp.llama_cache import LlamaRAMCache

        try:
            llama = Llama(
                model_path=model_path,
                n_ctx=config.n_ctx,
                n_threads=config.n_threads or None,
                seed=config.seed if config.seed >= 0 else 0xFFFFFFFF,
                verbose=False,
            )
        except Exception as exc:
            raise ModelError(f"cannot load GGUF model {model_path}: {exc}") from exc
        if config.session_cache_mb:
            # Each session's evaluated prompt survives the other sessions' turns (see
            # LlmConfig.session_cache_mb): llama-cpp-python saves the state after every
            # completion and restores the longest-matching one before the next.
            llama.set_cache(LlamaRAMCache(capacity_bytes=config.session_cache_mb << 20))
        return cls(llama, config, name=name)

    def prefill(self, system_prompt: str) -> None:
        """Evaluate the system prompt once so the first real turn reuses it from the cache."""
        if not system_prompt:
            return
        messages = [ChatMessage("system", system_prompt), ChatMessage("user", "Hello")]
        with contextlib.suppress(EngineTruncated):  # one token is all it asks for
            for _ in self.stream(messages, threading.Event(), max_tokens=1):
                pass

    def count_tokens(self, text: str) -> int:
        """Tokens in ``text`` by this model's tokenizer; the chain budgets the history with
        it. Reads only the vocabulary, so it is safe beside a running generation."""
        return len(self._llama.tokenize(text.encode("utf-8"), add_bos=False, special=True))

    def stream(
        self,
        messages: Sequence[ChatMessage],
        cancel: threading.Event,
        *,
        max_tokens: int | None = None,
    ) -> Iterator[str]:
        payload: list[Any] = self.policy.payload(messages)
        with self._lock:
            if cancel.is_set():
                return
            try:
                chunks = self._llama.create_chat_completion(
                    messages=payload,
                    stream=True,
                    max_tokens=max_tokens or self.policy.generation_limit(self._config),
                    temperature=self.policy.temperature,
                    top_p=self.policy.top_p,
                )
                finish = None
                for chunk in chunks:
                    if cancel.is_set():
                        break
                    choice: Any = chunk["choices"][0]  # type: ignore[index]
                    finish = choice.get("finish_reason") or finish
                    piece = choice["delta"].get("content")
                    if piece:
                        yield str(piece)
            except Exception as exc:
                raise EngineError(f"{self.name} failed: {exc}", code="llm_failed") from exc
            if finish == "length" and not cancel.is_set():
                raise EngineTruncated(f"{self.name}: the reply reached the generation limit")


def _special_text(llama: Any, token: int) -> str:
    if token < 0:
        return ""
    return bytes(llama.detokenize([token], special=True)).decode("utf-8", errors="replace")
