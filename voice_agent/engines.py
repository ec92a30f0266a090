"""Load the engines once per process; every session shares them."""

from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from voice_agent.aio import call_in_thread
from voice_agent.asr import Transcriber, Transcript, WhisperAsr
from voice_agent.audio.pcm import Int16Array
from voice_agent.audio.turn_end import TurnEndModel, load_turn_end_model
from voice_agent.audio.vad import SILERO_MODELS, SILERO_PER_SESSION
from voice_agent.config import Config
from voice_agent.errors import ConfigError
from voice_agent.llm.base import LlmEngine
from voice_agent.llm.chain import LlmChain
from voice_agent.models import Manifest
from voice_agent.offline import enforce_offline
from voice_agent.prompt import system_prompt
from voice_agent.tts.base import TtsEngine
from voice_agent.tts.piper import PiperTts

log = logging.getLogger(__name__)
PRELOADED_SILERO = 2 * SILERO_PER_SESSION
"""Silero models loaded with the engines, so the first sessions start without loading one."""


@dataclass
class Engines:
    asr: Transcriber
    llm: LlmChain
    tts: TtsEngine
    # One thread per stage: a stage's engine serializes its calls anyway, and separate
    # pools let LLM decoding and TTS of the previous sentence overlap. Each LLM engine has
    # its own queue and thread in the chain (``llm.scheduler``), so a hung primary's thread
    # never blocks the fallback.
    asr_executor: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(1, thread_name_prefix="asr")
    )
    tts_executor: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(1, thread_name_prefix="tts")
    )
    load_seconds: dict[str, float] = field(default_factory=dict)
    turn_end: TurnEndModel | None = None
    """The end-of-turn model (``turn.endpoint = "smart"``); None: fixed silence decides."""
    turn_end_executor: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(1, thread_name_prefix="turn-end")
    )

    async def recognize(self, audio: Int16Array, *, timeout_s: float) -> Transcript:
        """Whisper on ``audio``, in the ASR thread, within ``timeout_s`` (else
        ``engine_timeout``)."""
        return await call_in_thread(lambda: self.asr.transcribe(audio), self.asr_executor,
                                    timeout_s=timeout_s, what="speech recognition")

    def close(self) -> None:
        for pool in (self.asr_executor, self.tts_executor, self.turn_end_executor):
            pool.shutdown(wait=False, cancel_futures=True)
        self.llm.close()


def load_asr(config: Config, manifest: Manifest) -> WhisperAsr:
    name = config.asr.model
    # Besides manifest names and directories, Whisper takes size names ("small.en") that
    # are already in the local model cache; WhisperAsr reports those it cannot find.
    if manifest.find("asr", name) is not None or name == "default":
        return WhisperAsr(manifest.resolve("asr", name).path, config.asr)
    return WhisperAsr(name, config.asr)


def load_llm_engine(spec: str, config: Config, manifest: Manifest) -> LlmEngine:
    """One engine from a ``KIND:WHAT`` spec (see ``LlmConfig.engines``)."""
    kind, _, what = spec.partition(":")
    if kind == "openai":
        from voice_agent.llm.openai_http import OpenAiHttpEngine

        return OpenAiHttpEngine.from_spec(what, config.llm)
    model = manifest.resolve("llm", what)
    if kind == "llama_cpp":
        from voice_agent.llm.llama_cpp import LlamaCppEngine

        engine = LlamaCppEngine.load(model.path, config.llm, name=f"llama_cpp:{model.name}")
        engine.prefill(system_prompt(config))
        return engine
    if kind == "transformers":
        from voice_agent.llm.transformers_engine import TransformersEngine

        return TransformersEngine(model.path, config.llm, name=f"transformers:{model.name}")
    raise ConfigError(f"unknown LLM engine kind in {spec!r}")


def load_llm(config: Config, manifest: Manifest) -> LlmChain:
    engines = [load_llm_engine(spec, config, manifest) for spec in config.llm.engines]
    return LlmChain(engines, config.llm, system_prompt=system_prompt(config))


def load_tts(config: Config, manifest: Manifest) -> PiperTts:
    model = manifest.resolve("tts", config.tts.voice)
    return PiperTts(model.path, model.config_path, config.tts)


def load_engines(config: Config, manifest: Manifest | None = None) -> Engines:
    enforce_offline()  # library use: before an engine imports onnxruntime or the hub
    manifest = manifest or Manifest.load(config.models.manifest, config.models.directory or None)
    seconds: dict[str, float] = {}
    started = time.perf_counter()
    asr = load_asr(config, manifest)
    seconds["asr"] = time.perf_counter() - started
    started = time.perf_counter()
    llm = load_llm(config, manifest)
    seconds["llm"] = time.perf_counter() - started
    started = time.perf_counter()
    tts = load_tts(config, manifest)
    seconds["tts"] = time.perf_counter() - started
    turn_end = None
    if config.turn.endpoint == "smart":
        started = time.perf_counter()
        turn_end = load_turn_end_model(manifest)  # None, logged, when it cannot load
        seconds["turn_end"] = time.perf_counter() - started
    if config.emotion.enabled:
        from voice_agent.emotion import warm_up

        warm_up()
    started = time.perf_counter()
    SILERO_MODELS.preload(PRELOADED_SILERO)
    seconds["vad"] = time.perf_counter() - started
    log.info("engines loaded: %s", ", ".join(f"{k} {v:.2f}s" for k, v in seconds.items()))
    return Engines(asr=asr, llm=llm, tts=tts, turn_end=turn_end, load_seconds=seconds)
