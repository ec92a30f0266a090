"""Piper TTS (ONNX, fast on CPU) with a local voice file.

Piper makes a whole sentence before its first sample. With ``tts.stream`` (the default)
the voice graph is split (:mod:`voice_agent.tts.stream`) and a sentence's audio comes out
in windows as the decoder makes it: the first audio of a sentence no longer waits for the
whole sentence. Both ways speak the same samples up to the gain (below).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from voice_agent.audio.pcm import Int16Array
from voice_agent.config import TtsConfig
from voice_agent.errors import EngineError, ModelError
from voice_agent.tts.stream import DECODER_INPUT, decode_windows, split_voice

log = logging.getLogger(__name__)

HOP = 256
"""Samples per frame of the latent (Piper's VITS voices)."""
FIRST_WINDOW_FRAMES = 16
"""The first window: about 190 ms of speech at 22 kHz, decoded in about 30 ms here."""
WINDOW_GROWTH = 3
"""Each window this many times the one before: fewer decoder calls, and the next window is
still decoded within the audio already out (a real-time factor under 0.5) so a sentence
plays without gaps."""
LARGEST_WINDOW_FRAMES = 512
"""Windows grow up to this: fewer decoder calls, less context decoded twice."""
CONTEXT_FRAMES = 10
"""Frames decoded on each side of a window and thrown away: the decoder's reach, so the
windows join without a seam (10: equal to the whole decode to float precision)."""
SESSION_THREADS = 1
"""onnxruntime threads for the split halves. On two cores shared with the LLM, two threads
wait on each other at every call (the windows make several calls per sentence): measured
with the machine busy, one thread gave the first audio of a 12-word chunk in 230 ms and
all of it in 740 ms, two threads 870 and 2480 ms (whole-sentence Piper: 1080 ms)."""
CALIBRATION_TEXT = "I understand. Let me sort that out for you right away."
PEAK_TARGET = 0.7
"""Streamed audio cannot be scaled to each sentence's own peak (Piper's normalization: the
peak is only known at the end), so it gets one gain per voice, measured at load: the
calibration sentence peaks here. Raw sentence peaks of the embedded voice spread 0.39-0.70
at an even loudness, so one gain also keeps chunks of a reply at one level."""


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
        self._front: Any = None
        self._decoder: Any = None
        self._gain = 1.0
        self.streaming = False
        """Whether sentences stream as they are decoded (``tts.stream`` and a voice that
        can be split)."""
        if config.stream:
            self._load_streaming(model_path)

    def _load_streaming(self, model_path: str) -> None:
        import onnxruntime

        split = split_voice(model_path)
        if split is None:
            log.warning("voice %s cannot be split for streaming: whole sentences are spoken",
                        Path(model_path).name)
            return
        providers = self._voice.session.get_providers()
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = options.inter_op_num_threads = SESSION_THREADS
        self._front = onnxruntime.InferenceSession(split.front, options, providers=providers)
        self._decoder = onnxruntime.InferenceSession(split.decoder, options,
                                                     providers=providers)
        self.streaming = True
        # Also warms both sessions up, so the first reply does not pay for it.
        peak = max((float(np.abs(audio).max()) for audio in self._stream(
            CALIBRATION_TEXT, threading.Event(), self._length_scale, gain=1.0)), default=0.0)
        self._gain = PEAK_TARGET / peak if peak > 1e-3 else 1.0

    def synthesize(
        self, text: str, cancel: threading.Event, *, rate_factor: float = 1.0
    ) -> Iterator[Int16Array]:
        length_scale = self._length_scale * rate_factor
        try:
            if self.streaming:
                for audio in self._stream(text, cancel, length_scale, gain=self._gain):
                    yield _to_int16(audio)
                return
            options = self._synthesis_config(length_scale=length_scale)
            for chunk in self._voice.synthesize(text, options):
                if cancel.is_set():
                    return
                yield np.asarray(chunk.audio_int16_array, dtype=np.int16)
        except Exception as exc:
            raise EngineError(f"speech synthesis failed: {exc}", code="tts_failed") from exc

    def _stream(self, text: str, cancel: threading.Event, length_scale: float, *,
                gain: float) -> Iterator[np.ndarray]:
        """Float audio of ``text``, a window at a time, sentence after sentence (Piper's
        own sentence split); stops between windows once ``cancel`` is set."""
        config = self._voice.config
        scales = np.array([config.noise_scale, length_scale, config.noise_w_scale],
                          dtype=np.float32)
        for phonemes in self._voice.phonemize(text):
            if not phonemes:
                continue
            if cancel.is_set():
                return
            ids = np.array([self._voice.phonemes_to_ids(phonemes)], dtype=np.int64)
            inputs: dict[str, np.ndarray] = {
                "input": ids, "input_lengths": np.array([ids.shape[1]], dtype=np.int64),
                "scales": scales}
            if config.num_speakers > 1:
                inputs["sid"] = np.array([config.default_speaker_id or 0], dtype=np.int64)
            z = self._front.run(None, inputs)[0]
            for window in decode_windows(z.shape[2], first=FIRST_WINDOW_FRAMES,
                                         largest=LARGEST_WINDOW_FRAMES, context=CONTEXT_FRAMES,
                                         growth=WINDOW_GROWTH):
                if cancel.is_set():
                    return
                audio = self._decoder.run(None, {DECODER_INPUT: z[:, :, window.lo:window.hi]})
                keep = audio[0].reshape(-1)[(window.keep_from - window.lo) * HOP:
                                            (window.keep_to - window.lo) * HOP]
                yield keep * gain


def _to_int16(audio: np.ndarray) -> Int16Array:
    return np.asarray(np.clip(audio, -1.0, 1.0) * 32767, dtype=np.int16)
