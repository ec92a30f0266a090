"""PCM helpers: conversion, streaming resampling, fixed-size framing, file I/O.

Pure numpy functions plus two tiny stateful helpers (:class:`StreamResampler`,
:class:`Framer`) whose state is just the samples they have not emitted yet.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import numpy.typing as npt
import soxr

from voice_agent.errors import AudioFormatError

Int16Array = npt.NDArray[np.int16]
Float32Array = npt.NDArray[np.float32]

PIPELINE_RATE = 16_000
"""Every stage after the resampler runs at 16 kHz mono."""
MIN_RATE = 8_000
MAX_RATE = 48_000


def check_rate(rate: object) -> int:
    """Return ``rate`` if it is an accepted client sample rate, else raise ``bad_audio``."""
    if isinstance(rate, bool) or not isinstance(rate, int) or not MIN_RATE <= rate <= MAX_RATE:
        raise AudioFormatError(
            f"sample_rate must be an integer from {MIN_RATE} to {MAX_RATE} Hz, got {rate!r}"
        )
    return rate


def bytes_to_int16(data: bytes) -> Int16Array:
    """Little-endian 16-bit mono PCM bytes to samples; odd lengths are a format error."""
    if len(data) % 2:
        raise AudioFormatError(f"PCM16 frames need an even byte count, got {len(data)}")
    samples: Int16Array = np.frombuffer(data, dtype="<i2").astype(np.int16, copy=False)
    return samples


def int16_to_float(samples: Int16Array) -> Float32Array:
    return (samples.astype(np.float32) / 32768.0).astype(np.float32, copy=False)


def float_to_int16(samples: npt.NDArray[np.floating]) -> Int16Array:
    scaled = np.clip(np.asarray(samples, dtype=np.float32) * 32768.0, -32768.0, 32767.0)
    return np.asarray(np.round(scaled), dtype=np.int16)


def resample(samples: Int16Array, rate_in: int, rate_out: int) -> Int16Array:
    """Resample a whole signal (one shot)."""
    if rate_in == rate_out or samples.size == 0:
        return samples.astype(np.int16, copy=True)
    out = soxr.resample(samples.astype(np.int16), rate_in, rate_out, quality="HQ")
    return np.asarray(out, dtype=np.int16)


class StreamResampler:
    """Resample a stream chunk by chunk without clicks at chunk borders."""

    def __init__(self, rate_in: int, rate_out: int) -> None:
        self.rate_in = rate_in
        self.rate_out = rate_out
        self._stream = (
            None
            if rate_in == rate_out
            else soxr.ResampleStream(rate_in, rate_out, 1, dtype="int16", quality="HQ")
        )

    def process(self, samples: Int16Array, *, last: bool = False) -> Int16Array:
        if self._stream is None:
            return samples
        return np.asarray(self._stream.resample_chunk(samples, last=last), dtype=np.int16)

    def flush(self) -> Int16Array:
        return self.process(np.zeros(0, dtype=np.int16), last=True)


class Framer:
    """Cut an arbitrary stream of samples into frames of exactly ``frame_samples``."""

    def __init__(self, frame_samples: int) -> None:
        if frame_samples <= 0:
            raise ValueError("frame_samples must be positive")
        self.frame_samples = frame_samples
        self._pending = np.zeros(0, dtype=np.int16)

    @property
    def pending(self) -> int:
        return int(self._pending.size)

    def push(self, samples: Int16Array) -> list[Int16Array]:
        buffer = np.concatenate([self._pending, samples]) if self._pending.size else samples
        count = buffer.size // self.frame_samples
        frames = [
            buffer[i * self.frame_samples : (i + 1) * self.frame_samples] for i in range(count)
        ]
        self._pending = buffer[count * self.frame_samples :].copy()
        return frames


def to_mono(samples: npt.NDArray[np.generic]) -> npt.NDArray[np.generic]:
    return samples if samples.ndim == 1 else samples.mean(axis=1).astype(samples.dtype)


def read_audio(path: str | Path, rate: int | None = PIPELINE_RATE) -> tuple[Int16Array, int]:
    """Read WAV/FLAC/OGG as mono int16, resampled to ``rate`` (None keeps the file's)."""
    import soundfile

    try:
        data, file_rate = soundfile.read(str(path), dtype="int16", always_2d=False)
    except (soundfile.LibsndfileError, RuntimeError) as exc:
        raise AudioFormatError(f"cannot read audio file {path}: {exc}") from None
    samples = np.asarray(to_mono(data), dtype=np.int16)
    if rate is None or rate == file_rate:
        return samples, int(file_rate)
    return resample(samples, int(file_rate), rate), rate


def write_wav(path: str | Path, samples: Int16Array, rate: int) -> None:
    import soundfile

    soundfile.write(str(path), samples, rate, subtype="PCM_16")


def rms_dbfs(samples: Int16Array) -> float:
    """Level of a signal in dB relative to full scale (-inf for silence)."""
    if samples.size == 0:
        return float("-inf")
    power = float(np.mean(np.square(samples.astype(np.float64) / 32768.0)))
    return 10.0 * np.log10(power) if power > 0 else float("-inf")


def last_speech_sample(samples: Int16Array, rate: int, *, floor_db: float = 35.0) -> int:
    """Index just past the last 10 ms window whose level is within ``floor_db`` of the
    loudest window: where speech in a clean recording ends."""
    window = max(1, rate // 100)
    count = samples.size // window
    if count == 0:
        return int(samples.size)
    frames = samples[: count * window].astype(np.float64).reshape(count, window) / 32768.0
    levels = 10.0 * np.log10(np.mean(frames**2, axis=1) + 1e-12)
    loud = np.nonzero(levels >= levels.max() - floor_db)[0]
    return int((loud[-1] + 1) * window)
