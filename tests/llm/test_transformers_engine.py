"""The transformers engine on the embedded SmolLM2 GGUF: streaming, cancel, the converted-weights
cache, errors. The GGUF is dequantized once per run (session fixture); later loads use the
cache."""

from __future__ import annotations

import os
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.conftest import harvard_clips, make_config
from tests.fakes import Recorder
from tests.llm.conftest import TRANSFORMERS_CONFIG, LoadedEngine, VocabGguf
from voice_agent.audio.pcm import read_audio
from voice_agent.engines import Engines
from voice_agent.errors import EngineError, ModelError
from voice_agent.llm.base import ChatMessage
from voice_agent.llm.chain import LlmChain
from voice_agent.llm.transformers_engine import TransformersEngine, _save_cache, gguf_cache_key
from voice_agent.models import Manifest
from voice_agent.turn import TurnRunner

QUESTION = [
    ChatMessage("system", TRANSFORMERS_CONFIG.system_prompt),
    ChatMessage("user", "What is the capital of France?"),
]


def generation_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.endswith("-generate") and t.is_alive()]


def wait_for_no_generation_thread(timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while generation_threads() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not generation_threads()


@pytest.mark.slow
def test_answers_a_chat_on_cpu(transformers_engine: LoadedEngine) -> None:
    engine = transformers_engine.engine
    assert engine.device == "cpu" and engine.dtype == torch.float32
    assert next(engine._model.parameters()).dtype == torch.float32
    assert engine.name == "transformers:SmolLM2-135M-Instruct.Q4_1"
    assert engine.opens_reasoning is False and engine.policy.is_r1 is False
    started = time.perf_counter()
    pieces = list(engine.stream(QUESTION, threading.Event()))
    seconds = time.perf_counter() - started
    text = "".join(pieces)
    assert len(pieces) >= 3, pieces
    assert any(c.isalpha() for c in text), text
    n_tokens = len(engine._tokenizer(text)["input_ids"])
    print(f"\n{n_tokens} tokens in {seconds:.2f}s = {n_tokens / seconds:.1f} tokens/s "
          f"(first load {transformers_engine.first_load_s:.1f}s): {text!r}")
    wait_for_no_generation_thread()


@pytest.mark.slow
async def test_answers_a_spoken_turn_on_cpu(
    transformers_engine: LoadedEngine, engines: Engines
) -> None:
    """Real speech in, the transformers engine as the only LLM, Piper out."""
    config = make_config(llm={"max_tokens": 32, "first_token_timeout_s": 30.0})
    chain = LlmChain([transformers_engine.engine], config.llm)
    runner = TurnRunner(replace(engines, llm=chain), config, output_rate=16000)
    clip = harvard_clips()[0]
    out = Recorder()
    done = await runner.run(1, read_audio(clip.path)[0], 450, out)
    assert done.status == "ok", done
    assert done.engine == transformers_engine.engine.name and done.fallbacks == {}
    assert any(c.isalpha() for c in done.reply_text)
    assert done.audio_samples == len(out.pcm) // 2 > 8000
    print(f"\ntransformers turn: TTFT {done.timings_ms['llm_first_token_ms']} ms, first audio "
          f"{done.timings_ms['first_audio_ms']} ms: {done.reply_text!r}")


@pytest.mark.slow
def test_cancel_after_the_first_piece_stops_within_2s(transformers_engine: LoadedEngine) -> None:
    engine = transformers_engine.engine
    cancel = threading.Event()
    stream = engine.stream([ChatMessage("user", "Tell me a long story about a cat.")], cancel)
    first = next(stream)
    assert first
    cancel.set()
    started = time.perf_counter()
    rest = list(stream)
    assert time.perf_counter() - started < 2.0
    assert rest == []
    wait_for_no_generation_thread(2.0)


@pytest.mark.slow
def test_closing_the_stream_stops_generation(transformers_engine: LoadedEngine) -> None:
    stream = transformers_engine.engine.stream(
        [ChatMessage("user", "Tell me a long story about a dog.")], threading.Event())
    assert next(stream)
    stream.close()  # the consumer went away without cancelling
    wait_for_no_generation_thread(2.0)
    # the lock was released: the engine serves the next turn
    assert list(transformers_engine.engine.stream(QUESTION, threading.Event()))


@pytest.mark.slow
def test_cancelled_before_start_yields_nothing(transformers_engine: LoadedEngine) -> None:
    cancel = threading.Event()
    cancel.set()
    assert list(transformers_engine.engine.stream(QUESTION, cancel)) == []


@pytest.mark.slow
def test_second_load_comes_from_the_cache(transformers_engine: LoadedEngine) -> None:
    first = transformers_engine.engine
    assert first.loaded_from_cache is False
    cache = first.cache_path
    assert cache is not None and cache.parent == transformers_engine.cache_dir
    names = {p.name for p in cache.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json",
            "voice-agent-cache.json"} <= names
    assert [p.name for p in cache.parent.iterdir()] == [cache.name]  # no temp dir left

    path = Manifest.load().resolve("llm", "default").path
    second = TransformersEngine(path, TRANSFORMERS_CONFIG, device="cpu",
                                cache_dir=transformers_engine.cache_dir)
    print(f"\nload: first (dequantize GGUF) {transformers_engine.first_load_s:.1f}s, "
          f"cached {second.load_seconds:.1f}s")
    assert second.loaded_from_cache is True
    assert second.load_seconds < 0.5 * transformers_engine.first_load_s
    assert second.chat_template == first.chat_template
    # Same weights: greedy decoding gives the same reply.
    reply = "".join(first.stream(QUESTION, threading.Event()))
    assert "".join(second.stream(QUESTION, threading.Event())) == reply


@pytest.mark.slow
def test_out_of_memory_is_a_transient_llm_oom(
    transformers_engine: LoadedEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = transformers_engine.engine
    emptied: list[bool] = []

    def out_of_memory(**kwargs: Any) -> None:
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(engine._model, "generate", out_of_memory)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: emptied.append(True))
    with pytest.raises(EngineError) as caught:
        list(engine.stream(QUESTION, threading.Event()))
    assert caught.value.code == "llm_oom" and caught.value.transient
    assert emptied == [True]


@pytest.mark.slow
def test_generation_failure_is_llm_failed(
    transformers_engine: LoadedEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(**kwargs: Any) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(transformers_engine.engine._model, "generate", broken)
    with pytest.raises(EngineError, match="boom") as caught:
        list(transformers_engine.engine.stream(QUESTION, threading.Event()))
    assert caught.value.code == "llm_failed"


@pytest.mark.slow
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_runs_in_bf16(transformers_engine: LoadedEngine) -> None:
    path = Manifest.load().resolve("llm", "default").path
    engine = TransformersEngine(path, TRANSFORMERS_CONFIG, device="auto",
                                cache_dir=transformers_engine.cache_dir)
    expected = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    assert engine.device == "cuda" and engine.dtype == expected
    parameter = next(engine._model.parameters())
    assert parameter.device.type == "cuda" and parameter.dtype == expected
    assert engine.cache_path is not None and engine.cache_path.name.endswith(
        str(expected).removeprefix("torch."))
    text = "".join(engine.stream(QUESTION, threading.Event()))
    assert any(c.isalpha() for c in text)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU error")
def test_cuda_without_a_gpu_is_a_model_error(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="CUDA is not available"):
        TransformersEngine(str(tmp_path), TRANSFORMERS_CONFIG, device="cuda")


def test_missing_model_is_a_model_error(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="not found"):
        TransformersEngine(str(tmp_path / "nope.gguf"), TRANSFORMERS_CONFIG, device="cpu")


def test_cache_key_follows_the_file(tmp_path: Path) -> None:
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"GGUF" + bytes(64))
    key = gguf_cache_key(gguf, "float32")
    assert key.startswith("model-") and key.endswith("-float32")
    assert gguf_cache_key(gguf, "bfloat16") != key
    os.utime(gguf, ns=(1, 1))
    assert gguf_cache_key(gguf, "float32") != key


def test_a_failed_cache_write_leaves_nothing(tmp_path: Path) -> None:
    class HalfSaved:
        def save_pretrained(self, directory: str) -> None:
            (Path(directory) / "model.safetensors").write_bytes(b"partial")
            raise OSError("disk full")

    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"GGUF")
    root = tmp_path / "cache"
    _save_cache(HalfSaved(), HalfSaved(), gguf, root / "entry")
    assert list(root.iterdir()) == []


@pytest.mark.slow
def test_r1_tokenizer_keeps_think_tags_and_renders_like_llama_cpp(r1_vocab_gguf: VocabGguf) -> None:
    """The real R1 tokenizer through transformers' GGUF support (~17 s to convert): the
    engine's streamer decodes with ``skip_special_tokens=True``, and ``<think>``/``</think>``
    must survive it or reasoning would reach the voice; the prompt must be the one llama.cpp
    builds from the same template."""
    from transformers import AutoTokenizer

    from voice_agent.llm.r1 import adapt_messages, render_prompt, template_keeps_system

    path = r1_vocab_gguf.path
    tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name,
                                              local_files_only=True)
    reply = "<think>\nThe user greets me.\n</think>\n\nHello!"
    ids = tokenizer(reply, add_special_tokens=False)["input_ids"]
    assert ids[0] == 151648 and 151649 in ids
    assert tokenizer.decode(ids, skip_special_tokens=True) == reply

    template = str(tokenizer.chat_template)
    # As llama.cpp renders it: bare text after BOS (R1 folds it anyway).
    assert template_keeps_system(template, tokenizer.bos_token, tokenizer.eos_token) is True
    messages = adapt_messages(QUESTION, keeps_system=False)
    payload = [{"role": m.role, "content": m.content} for m in messages]
    rendered = tokenizer.apply_chat_template(payload, add_generation_prompt=True, tokenize=False)
    assert rendered == render_prompt(template, messages, tokenizer.bos_token, tokenizer.eos_token)
    assert rendered.endswith("What is the capital of France?<｜Assistant｜>")


@pytest.mark.slow
def test_a_generate_that_outlives_its_stream_keeps_the_model(
    transformers_engine: LoadedEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two ``generate`` calls never run on one model at once, even when a closed stream's
    wait for its generation thread runs out (a long prefill does not check the stop flag)."""
    import voice_agent.llm.transformers_engine as module

    engine = transformers_engine.engine
    monkeypatch.setattr(module, "_JOIN_S", 0.05)
    real = engine._model.generate
    guard = threading.Lock()
    active, most = [0], [0]

    def generate(**kwargs: Any) -> Any:
        with guard:
            active[0] += 1
            most[0] = max(most[0], active[0])
        try:
            return real(**kwargs)
        finally:
            time.sleep(0.5)  # fault injection: generation ends well after the stop flag
            with guard:
                active[0] -= 1

    monkeypatch.setattr(engine._model, "generate", generate)
    first = engine.stream([ChatMessage("user", "Tell me a long story about a fox.")],
                          threading.Event())
    assert next(first)
    closer = threading.Thread(target=first.close)  # the consumer went away
    closer.start()
    time.sleep(0.1)
    second = list(engine.stream(QUESTION, threading.Event()))
    closer.join(10)
    assert second
    assert most[0] == 1, "a second generate ran beside one that had not ended"
    wait_for_no_generation_thread()
