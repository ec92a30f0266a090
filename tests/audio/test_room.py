"""The simulated room: lengths, levels and alignment hold for any input."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from voice_agent.audio.room import (
    active_rms,
    echo_path,
    load_noises,
    load_rirs,
    noise_for,
    scale_to_dbfs,
    simulate,
    trim_rir,
)
from voice_agent.bench import shared_audio_dir

_signal = arrays(np.int16, st.integers(0, 2_000), elements=st.integers(-32768, 32767))
_rir = arrays(np.float64, st.integers(0, 300),
              elements=st.floats(-1.0, 1.0, allow_nan=False, allow_infinity=False))


def _db(x: np.ndarray) -> float:
    return float(20 * np.log10(active_rms(x) / 32768))


@settings(max_examples=150, deadline=None)
@given(reply=_signal, rir=_rir, person=_signal, person_offset=st.integers(0, 500),
       reply_offset=st.integers(0, 500), delay_ms=st.floats(0, 100),
       echo_db=st.floats(-10, 10), noise=st.one_of(st.none(), _signal))
def test_any_lengths_give_one_consistent_capture(
    reply: np.ndarray, rir: np.ndarray, person: np.ndarray, person_offset: int,
    reply_offset: int, delay_ms: float, echo_db: float, noise: np.ndarray | None,
) -> None:
    mix = simulate(reply=reply, rir=rir, person=person, person_offset=person_offset,
                   reply_offset=reply_offset, delay_ms=delay_ms, echo_db=echo_db,
                   noise=noise, snr_db=10)
    delay = round(delay_ms * 16)
    length = max(reply_offset + reply.size + delay, person_offset + person.size)
    for part in (mix.mic, mix.reference, mix.person, mix.echo, mix.noise):
        assert part.size == length
        assert np.all(np.isfinite(part))
    assert mix.mic.dtype == np.int16 and mix.reference.dtype == np.int16
    # The reference is the reply as played, where it was played, nothing else.
    assert np.array_equal(mix.reference[reply_offset: reply_offset + reply.size], reply)
    assert not mix.reference[:reply_offset].any()
    # No echo before the reply plus the delay; the person only where they speak.
    assert not mix.echo[: reply_offset + delay].any()
    assert not mix.person[:person_offset].any()
    expected = np.clip(np.round(mix.person + mix.echo + mix.noise), -32768, 32767)
    assert np.array_equal(mix.mic, expected)


@settings(max_examples=100, deadline=None)
@given(signal=arrays(np.int16, st.integers(1, 3_000), elements=st.integers(-32768, 32767)),
       dbfs=st.floats(-60, -6))
def test_levels_are_set_over_active_speech(signal: np.ndarray, dbfs: float) -> None:
    scaled = scale_to_dbfs(signal, dbfs)
    if not signal.any():
        assert not scaled.any()
    else:
        assert _db(scaled) == pytest.approx(dbfs, abs=1e-6)


@settings(max_examples=100, deadline=None)
@given(noise=arrays(np.int16, st.integers(0, 500), elements=st.integers(-32768, 32767)),
       length=st.integers(0, 2_000), offset=st.integers(0, 10_000))
def test_noise_is_looped_to_any_length(noise: np.ndarray, length: int, offset: int) -> None:
    out = noise_for(noise, length, offset)
    assert out.size == length
    if noise.size and length:
        assert out[0] == noise[offset % noise.size]


def test_echo_is_the_reply_delayed_through_the_room() -> None:
    reply = np.zeros(1_000)
    reply[10] = 1000.0
    rir = np.concatenate([np.zeros(50), [0.02, 2.0, 0.5]])  # a 50-sample lead-in
    echo = echo_path(reply, rir, delay_samples=160)
    # The lead-in is gone but for 1 ms (16 samples) before the onset; the peak is 1.
    assert trim_rir(rir).tolist() == pytest.approx([0.0] * 15 + [0.01, 1.0, 0.25])
    assert int(np.argmax(np.abs(echo))) == 160 + 10 + 16


def test_echo_level_over_the_person_is_as_asked() -> None:
    rng = np.random.default_rng(1)
    person = rng.normal(0, 3000, 16_000)
    reply = rng.normal(0, 3000, 16_000)
    mix = simulate(reply=reply, rir=[1.0, 0.3], person=person, echo_db=10, delay_ms=20)
    assert _db(mix.echo) - _db(mix.person) == pytest.approx(10, abs=0.01)


@pytest.mark.skipif(shared_audio_dir() is None, reason="needs ../shared/audio")
def test_the_shared_rirs_and_noises_load() -> None:
    shared = shared_audio_dir()
    assert shared is not None
    rirs, noises = load_rirs(shared), load_noises(shared)
    assert {"rir1", "rir2", "rir3", "rir4"} <= set(rirs)
    assert len(noises) >= 5
    assert all(trim_rir(r).size > 1 for r in rirs.values())
