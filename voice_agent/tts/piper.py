"""Piper TTS (ONNX, fast on CPU) with a local voice file."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from voice_agent.audio.pcm import Int16Array
from voice_agent.config import TtsConfig
from voice_agent.errors import EngineError, ModelError


class PiperTts:
    def __init__(self, model_path: str, config_path: str | None, config: TtsConfig) -> None:
        from piper import PiperVoice, SynthesisConfig

        try:
            self._voice = PiperVoice.load(model_path, config_path=config_path)
        except Exception as exc:
            raise ModelError(f"cannot load Piper voice {Path(model_path).name}: {exc}") from exc
        self.sample_rate = int(self._voice.config.sample_rate)
        self._length_scale = config.length_scale
        self._synthesis_config = SynthesisConfig

    def synthesize(
        self, text: str, cancel: threading.Event, *, rate_factor: float = 1.0
    ) -> Iterator[Int16Array]:
        options = self._synthesis_config(length_scale=self._length_scale * rate_factor)
        try:
            for chunk in self._voice.synthesize(text, options):
                if cancel.is_set():
                    return
                yield np.asarray(chunk.audio_int16_array, dtype=np.int16)
        except Exception as exc:
            raise EngineError(f"speech synthesis failed: {exc}", code="tts_failed") from exc
