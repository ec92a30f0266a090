"""Speech recognition with faster-whisper (CTranslate2 Whisper).

CUDA float16 when a GPU is present, CPU int8 otherwise. Greedy decoding by default.

Short-window decoding: Whisper always encodes a 30 s window, padding short utterances with
silence, and on a CPU the encoder is most of the cost. CTranslate2 accepts a shorter window,
so utterances that fit in ``asr.window_s`` (10 s by default) are encoded in that window
only. Measured here on the 17 clips of ``shared/audio/speech`` with tiny.en int8: 0.65 s ->
0.20 s per clip, pooled WER 6.9% -> 6.2%. Shorter windows (1-3 s of padding) made Whisper
repeat itself, so the window is fixed, not fitted to the clip; the output length is capped
by the clip's duration as a second guard against runaway repetition.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from voice_agent.audio.pcm import PIPELINE_RATE, Float32Array, Int16Array, int16_to_float
from voice_agent.config import AsrConfig
from voice_agent.errors import EngineError, ModelError
from voice_agent.repetition import collapse_repeats, looks_like_loop

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Word:
    text: str
    start_s: float
    end_s: float


@dataclass(frozen=True)
class Transcript:
    text: str
    language: str
    words: tuple[Word, ...] = field(default=())
    no_speech_probability: float = 0.0
    """Whisper's own belief that there was no speech at all (0..1)."""
    log_probability: float = 0.0
    """Mean log probability of the text's tokens: low for words made up out of noise."""

    @property
    def doubtful(self) -> bool:
        """Whether the words are likely made up from noise or an echo: either of Whisper's
        own tests for no speech (``no_speech_threshold`` 0.6, ``log_prob_threshold`` -1)
        fails. Whisper requires both before it drops a segment; over the appliance's own
        reply one is enough (what is left of the echo gave "One." at -1.16 and "fun." at
        -1.27, with a no-speech probability near 0.3)."""
        return self.no_speech_probability > 0.6 or self.log_probability < -1.0


class Transcriber(Protocol):
    def transcribe(self, audio: Int16Array) -> Transcript:
        """Transcribe 16 kHz mono speech. Blocking: call it from an executor thread."""
        ...


def cuda_available() -> bool:
    try:
        import ctranslate2

        return int(ctranslate2.get_cuda_device_count()) > 0
    except Exception:  # a broken CUDA install must not stop the CPU path
        return False


def resolve_device(config: AsrConfig) -> tuple[str, str]:
    """(device, compute_type) for the config: float16 on CUDA, int8 on CPU unless set."""
    device = config.device
    if device == "auto":
        device = "cuda" if cuda_available() else "cpu"
    compute_type = config.compute_type
    if compute_type == "auto":
        compute_type = "float16" if device == "cuda" else "int8"
    return device, compute_type


class WhisperAsr:
    """faster-whisper over a CTranslate2 model directory or a Whisper size name."""

    def __init__(self, model: str, config: AsrConfig, *, word_timestamps: bool = False) -> None:
        from faster_whisper import WhisperModel

        self.device, self.compute_type = resolve_device(config)
        self._config = config
        self._word_timestamps = word_timestamps
        try:
            self._model = WhisperModel(
                model,
                device=self.device,
                compute_type=self.compute_type,
                cpu_threads=config.cpu_threads,
                local_files_only=True,
            )
        except Exception as exc:
            raise ModelError(f"cannot load Whisper model {model!r}: {exc}") from exc
        # One transcription at a time keeps latency predictable on small CPUs; sessions
        # queue here instead of thrashing two cores.
        self._lock = threading.Lock()

    def transcribe(self, audio: Int16Array) -> Transcript:
        language = None if self._config.language == "auto" else self._config.language
        samples = int16_to_float(np.asarray(audio, dtype=np.int16))
        window_s = self._config.window_s
        if (
            window_s > 0
            and samples.size / PIPELINE_RATE <= window_s - 0.5
            and not self._word_timestamps
            and (language is not None or not self._model.model.is_multilingual)
        ):
            text, tokens, capped, no_speech, log_probability = self._decode_window(
                samples, language or "en", window_s)
            loop = self._loop(text, tokens, capped)
            if loop is None:
                return Transcript(text=text, language=language or "en",
                                  no_speech_probability=no_speech,
                                  log_probability=log_probability)
            # The short window looped: decode again the way faster-whisper does on its own
            # (30 s window, temperature fallback on a high compression ratio). Slower (about
            # 3x), but it only runs for the rare decode that tripped a check.
            log.info("asr: short-window decode looked like a loop (%s); decoding again", loop)
        transcript = self._transcribe_full(samples, language)
        if self._loop(transcript.text, (), False) is not None:
            # Even the full decode repeats itself: keep one copy of each repeated run rather
            # than hand the model a wall of "5 5 5 5".
            text = collapse_repeats(transcript.text, self._config.max_repeats)
            return Transcript(text=text, language=transcript.language, words=transcript.words)
        return transcript

    def _loop(self, text: str, tokens: Sequence[int], capped: bool) -> str | None:
        return looks_like_loop(
            text, tokens, max_repeats=self._config.max_repeats,
            compression_threshold=self._config.compression_ratio_threshold,
            hit_length_cap=capped,
        )

    def _decode_window(
        self, samples: Float32Array, language: str, window_s: float
    ) -> tuple[str, list[int], bool, float, float]:
        """Greedy decode of the clip in a ``window_s`` encoder window: (text, token ids,
        whether it ran into the length cap instead of ending by itself, the no-speech
        probability, the mean token log probability)."""
        import ctranslate2
        from faster_whisper.tokenizer import Tokenizer

        model = self._model
        tokenizer = Tokenizer(model.hf_tokenizer, model.model.is_multilingual,
                              task="transcribe", language=language)
        # Padding the features with zeros (as faster-whisper pads its 30 s window) and not
        # the audio: a window of padded audio never looped in our measurement but had 11%
        # WER against 2.9% on the same 65 clips.
        features = model.feature_extractor(samples)[:, :-1]
        frames = int(window_s * 100)
        window = np.zeros((1, features.shape[0], frames), dtype=np.float32)
        used = min(frames, features.shape[1])
        window[0, :, :used] = features[:, :used]
        prompt = [*tokenizer.sot_sequence, tokenizer.no_timestamps]
        # Room for ~10 tokens a second (fast speech is about 7). CTranslate2 4.x returns
        # only about half of ``max_length - len(prompt)`` tokens (measured with tiny.en: 2N
        # asked, N+1 given), so ask for twice the room; before that the cap sat at ~5 a
        # second, near what a fast talker needs in a 9 s utterance.
        max_tokens = int(12 + 10 * samples.size / PIPELINE_RATE)
        try:
            with self._lock:
                result = model.model.generate(
                    ctranslate2.StorageView.from_array(window), [prompt],
                    beam_size=self._config.beam_size, max_length=len(prompt) + 2 * max_tokens,
                    suppress_blank=True, suppress_tokens=[-1],
                    return_scores=True, return_no_speech_prob=True,
                )
        except Exception as exc:
            raise EngineError(f"transcription failed: {exc}", code="asr_failed") from exc
        sequence = list(result[0].sequences_ids[0])
        tokens = [t for t in sequence if t < tokenizer.eot]
        # CTranslate2 drops the end token from the result: a decode that ended by itself
        # is shorter than the cap, one that ran into it is a runaway.
        capped = len(sequence) >= max_tokens
        # The score is the sum of log probabilities over the length (length_penalty 1).
        log_probability = float(result[0].scores[0]) if result[0].scores else 0.0
        return (tokenizer.decode(tokens).strip(), tokens, capped,
                float(result[0].no_speech_prob), log_probability)

    def reference_transcribe(self, audio: Int16Array) -> Transcript:
        """Bare faster-whisper: the public ``transcribe()`` with its own defaults, greedy,
        on the same loaded model. The yardstick the bench and tests compare against."""
        language = None if self._config.language == "auto" else self._config.language
        samples = int16_to_float(np.asarray(audio, dtype=np.int16))
        with self._lock:
            segments, info = self._model.transcribe(samples, language=language, beam_size=1)
            text = " ".join(s.text.strip() for s in segments).strip()
        return Transcript(text=text, language=info.language)

    def _transcribe_full(self, samples: Float32Array, language: str | None) -> Transcript:
        try:
            with self._lock:
                segments, info = self._model.transcribe(
                    samples,
                    language=language,
                    beam_size=self._config.beam_size,
                    vad_filter=False,
                    condition_on_previous_text=False,
                    word_timestamps=self._word_timestamps,
                )
                segments = list(segments)
        except Exception as exc:
            raise EngineError(f"transcription failed: {exc}", code="asr_failed") from exc
        words = tuple(
            Word(w.word.strip(), float(w.start), float(w.end))
            for s in segments
            for w in (s.words or ())
        )
        text = " ".join(s.text.strip() for s in segments).strip()
        return Transcript(
            text=text, language=info.language, words=words,
            no_speech_probability=max((s.no_speech_prob for s in segments), default=0.0),
            log_probability=min((s.avg_logprob for s in segments), default=0.0))
