"""PCM helpers: conversion, rate checks, framing and (streaming) resampling."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from voice_agent.audio.pcm import (
    Framer,
    Int16Array,
    StreamResampler,
    bytes_to_int16,
    check_rate,
    float_to_int16,
    int16_to_float,
    last_speech_sample,
    read_audio,
    resample,
    rms_dbfs,
    write_wav,
)
from voice_agent.errors import AudioFormatError


def tone(freq: float, seconds: float, rate: int, amplitude: float = 0.3) -> Int16Array:
    t = np.arange(round(seconds * rate)) / rate
    return float_to_int16(amplitude * np.sin(2 * np.pi * freq * t))


def peak_frequency(samples: Int16Array, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(samples.astype(np.float64) * np.hanning(samples.size)))
    return float(np.fft.rfftfreq(samples.size, 1 / rate)[int(np.argmax(spectrum))])


def split_at(samples: Int16Array, cuts: list[int]) -> list[Int16Array]:
    points = sorted({min(max(c, 0), samples.size) for c in cuts})
    return np.split(samples, points)


int16_arrays = st.lists(st.integers(-32768, 32767), max_size=400).map(
    lambda values: np.array(values, dtype=np.int16)
)


# --- bytes and rates ------------------------------------------------------------------


def test_bytes_to_int16_little_endian() -> None:
    data = np.array([1, -2, 32767, -32768], dtype="<i2").tobytes()
    samples = bytes_to_int16(data)
    assert samples.dtype == np.int16
    assert samples.tolist() == [1, -2, 32767, -32768]
    assert bytes_to_int16(b"").size == 0


@pytest.mark.parametrize("size", [1, 3, 321])
def test_bytes_to_int16_rejects_odd_byte_count(size: int) -> None:
    with pytest.raises(AudioFormatError) as info:
        bytes_to_int16(b"\x00" * size)
    assert info.value.code == "bad_audio"
    assert str(size) in info.value.message


@pytest.mark.parametrize("rate", [8000, 11025, 16000, 22050, 44100, 48000])
def test_check_rate_accepts_supported_integers(rate: int) -> None:
    assert check_rate(rate) == rate


@pytest.mark.parametrize("rate", [7999, 48001, 0, -16000, True, False, 16000.0, "16000", None])
def test_check_rate_rejects_everything_else(rate: object) -> None:
    with pytest.raises(AudioFormatError) as info:
        check_rate(rate)
    assert info.value.code == "bad_audio"


@given(int16_arrays)
def test_int16_float_round_trip(samples: Int16Array) -> None:
    floats = int16_to_float(samples)
    assert floats.dtype == np.float32
    assert np.all(np.abs(floats) <= 1.0)
    assert np.array_equal(float_to_int16(floats), samples)


def test_float_to_int16_clips() -> None:
    out = float_to_int16(np.array([-2.0, -1.0, 0.0, 0.5, 1.0, 3.0]))
    assert out.tolist() == [-32768, -32768, 0, 16384, 32767, 32767]


def test_rms_dbfs() -> None:
    assert rms_dbfs(np.zeros(100, dtype=np.int16)) == float("-inf")
    assert rms_dbfs(np.zeros(0, dtype=np.int16)) == float("-inf")
    full_square = np.array([32767, -32768] * 50, dtype=np.int16)
    assert rms_dbfs(full_square) == pytest.approx(0.0, abs=0.01)
    # A sine's RMS is amplitude / sqrt(2): -3 dB below its peak.
    assert rms_dbfs(tone(440, 1.0, 16000, amplitude=0.5)) == pytest.approx(-9.03, abs=0.05)


# --- framing --------------------------------------------------------------------------


@settings(max_examples=200)
@given(
    frame_samples=st.integers(1, 200),
    chunks=st.lists(st.integers(0, 700), max_size=12),
    seed=st.integers(0, 2**32 - 1),
)
def test_framer_cuts_any_chunking_into_exact_frames(
    frame_samples: int, chunks: list[int], seed: int
) -> None:
    rng = np.random.default_rng(seed)
    pieces = [rng.integers(-32768, 32768, size, dtype=np.int16) for size in chunks]
    framer = Framer(frame_samples)
    frames: list[Int16Array] = []
    for piece in pieces:
        frames.extend(framer.push(piece))
    stream = np.concatenate([np.zeros(0, dtype=np.int16), *pieces])
    full = stream.size // frame_samples
    assert len(frames) == full
    assert all(frame.size == frame_samples for frame in frames)
    joined = np.concatenate([np.zeros(0, dtype=np.int16), *frames])
    assert np.array_equal(joined, stream[: full * frame_samples])
    assert framer.pending == stream.size - full * frame_samples


def test_framer_keeps_pending_samples_between_pushes() -> None:
    framer = Framer(4)
    assert framer.push(np.arange(3, dtype=np.int16)) == []
    assert framer.pending == 3
    frames = framer.push(np.arange(3, 9, dtype=np.int16))
    assert [f.tolist() for f in frames] == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert framer.pending == 1


def test_framer_frames_do_not_alias_the_callers_buffer() -> None:
    framer = Framer(2)
    chunk = np.arange(5, dtype=np.int16)
    framer.push(chunk)
    chunk[:] = 0  # the caller reuses its buffer
    assert [f.tolist() for f in framer.push(np.array([9], dtype=np.int16))] == [[4, 9]]


@pytest.mark.parametrize("frame_samples", [0, -1])
def test_framer_rejects_non_positive_frame_size(frame_samples: int) -> None:
    with pytest.raises(ValueError):
        Framer(frame_samples)


# --- resampling -----------------------------------------------------------------------


@pytest.mark.parametrize(("rate_in", "rate_out"), [(8000, 16000), (44100, 16000), (16000, 48000)])
def test_resample_keeps_frequency_and_length(rate_in: int, rate_out: int) -> None:
    signal = tone(440, 1.0, rate_in)
    out = resample(signal, rate_in, rate_out)
    assert out.dtype == np.int16
    assert abs(out.size - rate_out) <= 2
    assert peak_frequency(out, rate_out) == pytest.approx(440, abs=2)
    # Level is kept too (no gain or attenuation in the pass band).
    assert rms_dbfs(out) == pytest.approx(rms_dbfs(signal), abs=0.3)


def test_resample_same_rate_is_a_copy() -> None:
    signal = tone(440, 0.1, 16000)
    out = resample(signal, 16000, 16000)
    assert np.array_equal(out, signal)
    assert out is not signal


@pytest.mark.parametrize(("rate_in", "rate_out"), [(8000, 16000), (44100, 16000), (16000, 48000)])
def test_stream_resampler_keeps_frequency(rate_in: int, rate_out: int) -> None:
    signal = tone(440, 1.0, rate_in)
    stream = StreamResampler(rate_in, rate_out)
    pieces = [stream.process(chunk) for chunk in np.array_split(signal, 37)]
    out = np.concatenate([*pieces, stream.flush()])
    assert abs(out.size - rate_out) <= 4
    assert peak_frequency(out, rate_out) == pytest.approx(440, abs=2)


@settings(max_examples=60, deadline=None)
@given(
    rates=st.sampled_from([(8000, 16000), (44100, 16000), (16000, 48000), (48000, 16000)]),
    cuts=st.lists(st.integers(0, 4000), max_size=10),
)
def test_stream_resampler_matches_one_shot_for_any_chunking(
    rates: tuple[int, int], cuts: list[int]
) -> None:
    rate_in, rate_out = rates
    signal = tone(440, 4000 / rate_in, rate_in) + tone(1500, 4000 / rate_in, rate_in, 0.1)
    stream = StreamResampler(rate_in, rate_out)
    out = np.concatenate(
        [*(stream.process(piece) for piece in split_at(signal, cuts)), stream.flush()]
    )
    one_shot = resample(signal, rate_in, rate_out)
    assert abs(out.size - one_shot.size) <= 4
    n = min(out.size, one_shot.size)
    assert np.max(np.abs(out[:n].astype(np.int32) - one_shot[:n])) <= 16


def test_stream_resampler_same_rate_passes_through() -> None:
    stream = StreamResampler(16000, 16000)
    chunk = np.arange(10, dtype=np.int16)
    assert np.array_equal(stream.process(chunk), chunk)
    assert stream.flush().size == 0


# --- levels and files -----------------------------------------------------------------


@pytest.mark.parametrize("rate", [16000, 22050, 48000])
def test_last_speech_sample_finds_end_of_tone(rate: int) -> None:
    rng = np.random.default_rng(1)
    lead = np.zeros(rate // 5, dtype=np.int16)
    body = tone(300, 0.75, rate)
    tail = rng.normal(0, 3, rate).astype(np.int16)  # faint noise, ~-80 dBFS
    signal = np.concatenate([lead, body, tail])
    end = lead.size + body.size
    found = last_speech_sample(signal, rate)
    assert abs(found - end) <= rate // 100


def test_last_speech_sample_edge_cases() -> None:
    short = np.ones(50, dtype=np.int16)
    assert last_speech_sample(short, 16000) == 50  # shorter than one window
    loud_to_the_end = tone(300, 0.5, 16000)
    assert last_speech_sample(loud_to_the_end, 16000) == loud_to_the_end.size


def test_wav_round_trip_with_resampling(tmp_path: Path) -> None:
    path = tmp_path / "tone.wav"
    signal = np.stack([tone(440, 0.5, 22050), tone(440, 0.5, 22050)], axis=1)
    write_wav(path, signal, 22050)
    native, rate = read_audio(path, rate=None)
    assert rate == 22050
    assert native.ndim == 1
    assert np.array_equal(native, signal[:, 0])
    at_16k, rate = read_audio(path)
    assert rate == 16000
    assert abs(at_16k.size - 8000) <= 2
    assert peak_frequency(at_16k, 16000) == pytest.approx(440, abs=3)


def test_read_audio_rejects_non_audio(tmp_path: Path) -> None:
    path = tmp_path / "not-audio.wav"
    path.write_bytes(b"this is not a wav file")
    with pytest.raises(AudioFormatError) as info:
        read_audio(path)
    assert info.value.code == "bad_audio"
    assert "not-audio.wav" in info.value.message
