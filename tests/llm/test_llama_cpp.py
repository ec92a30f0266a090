"""The llama.cpp engine on the embedded GGUF."""

from __future__ import annotations

import contextlib
import threading
from typing import Any

import pytest

from voice_agent.config import LlmConfig
from voice_agent.errors import EngineTruncated
from voice_agent.llm.base import ChatMessage
from voice_agent.llm.llama_cpp import LlamaCppEngine
from voice_agent.models import Manifest

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def engine() -> LlamaCppEngine:
    config = LlmConfig(seed=7, max_tokens=24)
    return LlamaCppEngine.load(Manifest.load().resolve("llm", "default").path, config)


def test_streams_an_answer_in_pieces(engine: LlamaCppEngine) -> None:
    pieces = list(engine.stream([ChatMessage("user", "Name a colour.")], threading.Event()))
    assert len(pieces) > 1 and any(c.isalpha() for c in "".join(pieces))
    assert engine.opens_reasoning is False  # SmolLM2's template does not open <think>


def test_cancel_stops_the_stream(engine: LlamaCppEngine) -> None:
    cancel = threading.Event()
    stream = engine.stream([ChatMessage("user", "Count from one to fifty.")], cancel)
    next(stream)
    cancel.set()
    assert len(list(stream)) <= 1


def test_prefill_leaves_the_system_prompt_in_the_kv_cache(engine: LlamaCppEngine) -> None:
    system = "You are the voice of a hospital kiosk. Speak calmly."
    engine.prefill(system)
    cached = list(engine._llama._input_ids[: engine._llama.n_tokens])
    prompt = engine._llama.tokenize(f"<|im_start|>system\n{system}".encode(), special=True)
    assert cached[: len(prompt)] == list(prompt)


def test_smollm2_keeps_its_system_prompt_and_configured_sampling(engine: LlamaCppEngine) -> None:
    assert engine.policy.is_r1 is False and engine.policy.fold_system is False
    assert engine.policy.fold_late_system is False  # ChatML renders a system note in place
    assert (engine.policy.temperature, engine.policy.top_p) == (0.3, 0.95)


def test_an_r1_gguf_gets_r1_prompting(r1_llama: Any) -> None:
    """On the real R1 header (vocab-only): R1 sampling, system folded into the user turn,
    and the stream does not start inside <think> since this template does not open it."""
    engine = LlamaCppEngine(r1_llama, LlmConfig(temperature=0.3, top_p=0.8), name="llama_cpp:r1")
    policy = engine.policy
    assert policy.is_r1 and policy.fold_system
    assert (policy.temperature, policy.top_p) == (0.6, 0.95)
    assert engine.opens_reasoning is False
    assert policy.fold_late_system  # the template keeps only the last system message
    folded = policy.messages([
        ChatMessage("system", "Be brief."), ChatMessage("user", "Hi"),
        ChatMessage("assistant", "Hello."), ChatMessage("system", "[speaker: label=sad]"),
        ChatMessage("user", "I lost my keys.")])
    assert folded == [ChatMessage("user", "Be brief.\n\nHi"), ChatMessage("assistant", "Hello."),
                      ChatMessage("user", "[speaker: label=sad]\n\nI lost my keys.")]


@pytest.mark.parametrize("cache_mb", [256, 0])
def test_conversations_taking_turns_resume_from_their_own_state(cache_mb: int) -> None:
    """Two people alternate: with the session cache, a person's next turn evaluates only its
    new tokens, not the whole conversation the other person's turn evicted."""
    config = LlmConfig(seed=7, max_tokens=16, session_cache_mb=cache_mb)
    engine = LlamaCppEngine.load(Manifest.load().resolve("llm", "default").path, config)
    llama = engine._llama
    evaluated: list[int] = []
    real_eval = llama.eval

    def counting_eval(tokens: Any) -> None:
        evaluated.append(len(tokens))
        real_eval(tokens)

    llama.eval = counting_eval
    system = ChatMessage("system", "You are a helpful voice assistant. " * 8)
    talks: dict[str, list[ChatMessage]] = {"ann": [system], "bob": [system]}

    def turn(who: str, text: str) -> int:
        evaluated.clear()
        talks[who].append(ChatMessage("user", text))
        pieces: list[str] = []
        with contextlib.suppress(EngineTruncated):  # 16 tokens: a cut reply is fine here
            pieces.extend(engine.stream(talks[who], threading.Event()))
        reply = "".join(pieces)
        talks[who].append(ChatMessage("assistant", reply))
        return evaluated[0]  # the prompt's evaluation; then one token at a time

    turn("ann", "Where is the train station, and when does the next train leave?")
    turn("bob", "What is the weather like in the mountains this weekend?")
    resumed = turn("ann", "Thanks. And is there a bus as well?")
    if cache_mb:
        assert resumed < 40, f"re-read {resumed} tokens of the conversation"  # 21 here
    else:
        assert resumed >= 40  # the evicted conversation is read again (50 here)
