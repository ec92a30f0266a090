"""Hugging Face transformers engine (torch): a local model directory, or a GGUF file.

The full-precision primary on a GPU appliance: on CUDA the model runs in bfloat16 (float16
where the GPU has no bf16), on CPU in float32. A GGUF file is dequantized by transformers'
``gguf_file`` support, which is slow (tens of seconds even for a 135M model: most of it is
parsing the GGUF's vocabulary in Python), so the converted weights and tokenizer are saved
once with ``save_pretrained`` to a cache directory and loaded from there afterwards.

Nothing is ever downloaded: every load is ``local_files_only`` with ``HF_HUB_OFFLINE`` set.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from voice_agent.config import LlmConfig
from voice_agent.errors import EngineError, EngineTruncated, ModelError
from voice_agent.llm.base import ChatMessage
from voice_agent.llm.r1 import PromptPolicy

log = logging.getLogger(__name__)

CACHE_ENV = "VOICE_AGENT_CACHE_DIR"
_COMPLETE = "voice-agent-cache.json"
"""Written last into a cache entry; an entry without it is ignored."""
_JOIN_S = 10.0
"""A stream that ended waits for its generation thread to end, saying so in the log after
every this many seconds of waiting."""


def default_cache_dir() -> Path:
    """``$VOICE_AGENT_CACHE_DIR/transformers``, else ``~/.cache/voice-agent/transformers``."""
    root = os.environ.get(CACHE_ENV)
    if root:
        return Path(root).expanduser() / "transformers"
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "voice-agent" / "transformers"


def gguf_cache_key(path: Path, dtype_name: str) -> str:
    """Cache entry name for a GGUF file converted to ``dtype_name``.

    Keyed by the resolved path, size and mtime rather than a sha256 of the contents: the
    manifest already verifies the checksum before loading, and hashing a 7B file again would
    cost as much as the conversion it saves. A replaced file changes size or mtime.
    """
    stat = path.stat()
    ident = f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"
    digest = hashlib.sha256(ident.encode("utf-8")).hexdigest()[:16]
    return f"{path.stem}-{digest}-{dtype_name}"


class TransformersEngine:
    """One loaded transformers causal LM shared by every session; calls are serialized."""

    cold_start = True
    """The first ``generate`` pays one-off warm-up costs (CUDA kernels and allocator, lazy
    torch initialisation), so the engine's queue gives it ``llm.first_call_timeout_s``."""

    def __init__(
        self,
        model_ref: str,
        config: LlmConfig,
        *,
        device: str = "auto",
        cache_dir: Path | None = None,
        name: str | None = None,
    ) -> None:
        os.environ["HF_HUB_OFFLINE"] = "1"
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        try:
            import torch
            import transformers
        except ImportError as exc:
            raise ModelError(
                f"the transformers engine needs torch and transformers "
                f"(pip install 'voice-agent[transformers]'): {exc}"
            ) from exc
        transformers.utils.logging.disable_progress_bar()
        self._torch = torch
        self._config = config
        if config.n_threads > 0:
            torch.set_num_threads(config.n_threads)
        if config.seed >= 0:
            torch.manual_seed(config.seed)
        self.device = _pick_device(torch, device)
        self.dtype = _pick_dtype(torch, self.device)
        path = Path(model_ref).expanduser()
        self.name = name or f"transformers:{path.stem if path.is_file() else path.name}"
        self.cache_path: Path | None = None
        """Where a GGUF's converted weights are cached (``None`` for a model directory)."""
        self.loaded_from_cache = False
        started = time.perf_counter()
        if path.is_file():
            root = cache_dir if cache_dir is not None else default_cache_dir()
            self.cache_path = root / gguf_cache_key(path, str(self.dtype).removeprefix("torch."))
            self._model, self._tokenizer = self._load_gguf(path, self.cache_path)
        elif path.is_dir():
            self._model, self._tokenizer = self._load_dir(path)
        else:
            raise ModelError(f"transformers model not found: {path}")
        self._model.eval()
        self.load_seconds = time.perf_counter() - started
        log.info("%s loaded on %s (%s) in %.1fs%s", self.name, self.device, self.dtype,
                 self.load_seconds, " from cache" if self.loaded_from_cache else "")

        template = str(getattr(self._tokenizer, "chat_template", None) or "")
        if not template:
            raise ModelError(f"{path} has no chat template")
        self.chat_template = template
        self.policy = PromptPolicy.for_template(
            template, f"{path.name} {self.name}", config,
            bos_token=str(self._tokenizer.bos_token or ""),
            eos_token=str(self._tokenizer.eos_token or ""))
        self.opens_reasoning = self.policy.opens_reasoning
        self._lock = threading.Lock()

    # Loading ---------------------------------------------------------------------------

    def _load_kwargs(self) -> dict[str, Any]:
        import transformers
        from packaging.version import Version

        key = "dtype" if Version(transformers.__version__) >= Version("4.56") else "torch_dtype"
        return {key: self.dtype, "local_files_only": True}

    def _load_dir(self, directory: Path) -> tuple[Any, Any]:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        kwargs = self._load_kwargs()
        if self.device != "cpu":
            kwargs["device_map"] = self.device
        try:
            tokenizer = AutoTokenizer.from_pretrained(str(directory), local_files_only=True)
            model = AutoModelForCausalLM.from_pretrained(str(directory), **kwargs)
        except Exception as exc:
            raise ModelError(f"cannot load transformers model {directory}: {exc}") from exc
        if self.device == "cpu":
            model = model.to("cpu")
        return model, tokenizer

    def _load_gguf(self, gguf: Path, cache: Path) -> tuple[Any, Any]:
        if (cache / _COMPLETE).is_file():
            try:
                loaded = self._load_dir(cache)
            except ModelError as exc:
                log.warning("ignoring unreadable cache %s: %s", cache, exc)
            else:
                self.loaded_from_cache = True
                return loaded
        from transformers import AutoModelForCausalLM, AutoTokenizer

        kwargs = self._load_kwargs()
        try:
            from transformers import GgufConfig

            # Newer transformers keep GGUF blocks packed unless told to unpack them, and a
            # packed model cannot be saved; the cache wants plain dense weights.
            kwargs["quantization_config"] = GgufConfig(dequantize=True)
        except ImportError:
            pass
        started = time.perf_counter()
        try:
            tokenizer = AutoTokenizer.from_pretrained(
                str(gguf.parent), gguf_file=gguf.name, local_files_only=True)
            model = AutoModelForCausalLM.from_pretrained(
                str(gguf.parent), gguf_file=gguf.name, **kwargs)
        except Exception as exc:
            raise ModelError(f"cannot load GGUF {gguf} with transformers: {exc}") from exc
        quantizer = getattr(model, "hf_quantizer", None)
        if quantizer is not None:  # the weights are dense (dequantize=True); drop the marker
            quantizer.remove_quantization_config(model)
        log.info("dequantized %s in %.1fs", gguf.name, time.perf_counter() - started)
        _save_cache(model, tokenizer, gguf, cache)
        if self.device != "cpu":
            model = model.to(self.device)
        return model, tokenizer

    # Generation ------------------------------------------------------------------------

    def count_tokens(self, text: str) -> int:
        """Tokens in ``text`` by this model's tokenizer; the chain budgets the history with
        it."""
        return len(self._tokenizer.encode(text, add_special_tokens=False))

    def stream(self, messages: Sequence[ChatMessage], cancel: threading.Event) -> Iterator[str]:
        from transformers import StoppingCriteria, StoppingCriteriaList, TextIteratorStreamer

        torch = self._torch
        stop = threading.Event()
        """Set when the consumer goes away (closed generator, error) so generation ends."""
        lengths = [0]
        """Sequence length after each generated token (prompt included)."""

        class _Cancelled(StoppingCriteria):  # type: ignore[misc]
            def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
                lengths.append(int(input_ids.shape[-1]))
                done = cancel.is_set() or stop.is_set()
                return torch.full((input_ids.shape[0],), done, dtype=torch.bool,
                                  device=input_ids.device)

        payload = self.policy.payload(messages)
        with self._lock:
            if cancel.is_set():
                return
            try:
                inputs = self._tokenizer.apply_chat_template(
                    payload, add_generation_prompt=True, return_tensors="pt", return_dict=True
                ).to(self._model.device)
            except torch.cuda.OutOfMemoryError as exc:
                raise self._oom(exc) from exc
            except Exception as exc:
                raise EngineError(f"{self.name} failed: {exc}", code="llm_failed") from exc
            prompt_length = int(inputs["input_ids"].shape[-1])
            streamer = TextIteratorStreamer(
                self._tokenizer, skip_prompt=True, skip_special_tokens=True)
            generate_kwargs = dict(
                inputs,
                streamer=streamer,
                stopping_criteria=StoppingCriteriaList([_Cancelled()]),
                **self._sampling(),
            )
            failure: list[BaseException] = []

            def generate() -> None:
                try:
                    with torch.inference_mode():
                        self._model.generate(**generate_kwargs)
                except BaseException as exc:
                    failure.append(exc)
                    streamer.end()  # unblock the consumer

            worker = threading.Thread(target=generate, name=f"{self.name}-generate", daemon=True)
            worker.start()
            try:
                for piece in streamer:
                    if cancel.is_set():
                        break
                    if piece:
                        yield piece
            finally:
                stop.set()
                # The lock stays held until generation really ends: two ``generate`` calls
                # must never run on one model. A long prefill does not check the stop flag,
                # so this may take a while; the engine's queue counts it as wedged meanwhile.
                waited = 0.0
                worker.join(_JOIN_S)
                while worker.is_alive():
                    waited += _JOIN_S
                    log.warning("%s: generation still running %.0fs after its stream ended",
                                self.name, waited)
                    worker.join(_JOIN_S)
            # transformers reports no finish reason: the sequence length says it.
            if (not failure and not cancel.is_set()
                    and lengths[-1] - prompt_length >= generate_kwargs["max_new_tokens"]):
                raise EngineTruncated(f"{self.name}: the reply reached the generation limit")
            if failure:
                error = failure[0]
                if isinstance(error, torch.cuda.OutOfMemoryError):
                    raise self._oom(error) from error
                raise EngineError(f"{self.name} failed: {error}", code="llm_failed") from error

    def _sampling(self) -> dict[str, Any]:
        eos = self._model.generation_config.eos_token_id
        if eos is None:
            eos = self._tokenizer.eos_token_id
        pad = self._tokenizer.pad_token_id
        if pad is None:
            pad = eos[0] if isinstance(eos, list) else eos
        options: dict[str, Any] = {
            "max_new_tokens": self.policy.generation_limit(self._config),
            "eos_token_id": eos,
            "pad_token_id": pad,
        }
        if self.policy.temperature > 0:
            options.update(do_sample=True, temperature=self.policy.temperature,
                           top_p=self.policy.top_p)
        else:
            options.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        return options

    def _oom(self, exc: BaseException) -> EngineError:
        """Out of GPU memory is transient (a shorter prompt or a later turn may fit)."""
        self._torch.cuda.empty_cache()
        return EngineError(f"{self.name}: out of GPU memory: {exc}", code="llm_oom")


def _pick_device(torch: Any, device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ModelError(f"transformers device {device!r} asked for, but CUDA is not available")
    return device


def _pick_dtype(torch: Any, device: str) -> Any:
    if device.startswith("cuda"):
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


def _save_cache(model: Any, tokenizer: Any, gguf: Path, cache: Path) -> None:
    """Write the converted model next to ``cache`` and rename it into place atomically, so a
    crash leaves no half-written entry. A cache that cannot be written only costs time."""
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{cache.name}.", dir=cache.parent))
    except OSError as exc:
        log.warning("cannot cache the converted %s in %s: %s", gguf.name, cache.parent, exc)
        return
    try:
        model.save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))
        stamp = {"gguf": str(gguf.resolve()), "size": gguf.stat().st_size}
        (tmp / _COMPLETE).write_text(json.dumps(stamp) + "\n", encoding="utf-8")
        if cache.exists():  # another process finished first, or a stale incomplete entry
            shutil.rmtree(cache, ignore_errors=True)
        os.replace(tmp, cache)
    except Exception as exc:
        log.warning("cannot cache the converted %s in %s: %s", gguf.name, cache, exc)
        shutil.rmtree(tmp, ignore_errors=True)
