"""A simulated room: the appliance's own voice coming back into its microphone.

For benchmarks and tests of echo cancellation and barge-in. The microphone hears

- the person (their level sets the scale: ``person_dbfs`` over their active speech),
- the appliance's reply convolved with a room impulse response, ``delay_ms`` late (sound
  card buffers and the way through the air), ``echo_db`` over the person (a loudspeaker a
  hand's width from the microphone is 0 to +10 dB over someone speaking from a metre),
- recorded noise at ``snr_db`` under the person.

Everything but :func:`load_rirs` / :func:`load_noises` is pure numpy on float samples, any
lengths (empty included); only :func:`simulate` rounds to int16 at the end. The reference
the canceller gets is the reply as played: not delayed, not convolved.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from voice_agent.audio.frontend import Frontend
from voice_agent.audio.pcm import PIPELINE_RATE, Int16Array, read_audio

FloatArray = npt.NDArray[np.float64]

LEVEL_FRAME = PIPELINE_RATE // 100
"""10 ms frames for the active level."""
ACTIVE_RANGE_DB = 40.0
"""Frames within this of the loudest frame count as active: pauses do not lower a level."""
ONSET_FRACTION = 0.1
"""An impulse response starts where it first reaches this fraction of its peak."""
ONSET_KEEP = PIPELINE_RATE // 1000
"""Samples kept before that onset (1 ms), so the direct path is whole."""


def active_rms(signal: npt.ArrayLike) -> float:
    """RMS over the 10 ms frames within ``ACTIVE_RANGE_DB`` of the loudest; 0 for silence."""
    x = np.asarray(signal, dtype=np.float64).reshape(-1)
    if x.size == 0:
        return 0.0
    pad = (-x.size) % LEVEL_FRAME
    frames = np.concatenate([x, np.zeros(pad)]).reshape(-1, LEVEL_FRAME)
    energy = np.mean(frames**2, axis=1)
    loudest = float(energy.max())
    if loudest <= 0.0:
        return 0.0
    active = energy[energy >= loudest * 10 ** (-ACTIVE_RANGE_DB / 10)]
    return float(np.sqrt(np.mean(active)))


def scale_to_dbfs(signal: npt.ArrayLike, dbfs: float) -> FloatArray:
    """``signal`` (int16 scale) with its active RMS at ``dbfs``; silence stays silence."""
    x = np.asarray(signal, dtype=np.float64).reshape(-1)
    level = active_rms(x)
    if level <= 0.0:
        return x.copy()
    return x * (32768.0 * 10 ** (dbfs / 20) / level)


def trim_rir(rir: npt.ArrayLike) -> FloatArray:
    """An impulse response from just before its direct path, peak 1 (the delay is set
    separately, so the RIR's own lead-in, up to 136 ms in ``rir1``, must not add to it)."""
    h = np.asarray(rir, dtype=np.float64).reshape(-1)
    peak = float(np.abs(h).max()) if h.size else 0.0
    if peak <= 0.0:
        return np.ones(1)
    onset = int(np.argmax(np.abs(h) >= ONSET_FRACTION * peak))
    return h[max(0, onset - ONSET_KEEP):] / peak


def echo_path(reply: npt.ArrayLike, rir: npt.ArrayLike, delay_samples: int) -> FloatArray:
    """The reply as the microphone hears it: through the room, ``delay_samples`` late,
    as long as the reply plus the delay (the reverberant tail after that is cut)."""
    x = np.asarray(reply, dtype=np.float64).reshape(-1)
    h = trim_rir(rir)
    if x.size == 0:
        return np.zeros(max(0, delay_samples))
    size = 1 << int(x.size + h.size - 1).bit_length()  # FFT convolution: RIRs are long
    wet = np.fft.irfft(np.fft.rfft(x, size) * np.fft.rfft(h, size), size)[: x.size]
    return np.concatenate([np.zeros(max(0, delay_samples)), wet])


def noise_for(noise: npt.ArrayLike, length: int, offset: int = 0) -> FloatArray:
    """``length`` samples of a noise recording from ``offset`` on, looped."""
    n = np.asarray(noise, dtype=np.float64).reshape(-1)
    if length <= 0 or n.size == 0:
        return np.zeros(max(0, length))
    index = (np.arange(length) + offset) % n.size
    return n[index]


def place(signal: npt.ArrayLike, offset: int, length: int) -> FloatArray:
    """``signal`` starting at sample ``offset`` of a ``length``-sample track (cut at its end)."""
    x = np.asarray(signal, dtype=np.float64).reshape(-1)
    track = np.zeros(max(0, length))
    end = min(length, offset + x.size)
    if end > offset:
        track[offset:end] = x[: end - offset]
    return track


@dataclass(frozen=True)
class RoomMix:
    """One simulated capture, with its parts (float, int16 scale) for measuring."""

    mic: Int16Array
    """What the microphone records: person + echo + noise, rounded and saturated."""
    reference: Int16Array
    """What the appliance plays, in step with ``mic`` (the canceller's reference)."""
    person: FloatArray
    echo: FloatArray
    noise: FloatArray


def simulate(
    *,
    reply: npt.ArrayLike,
    rir: npt.ArrayLike,
    person: npt.ArrayLike | None = None,
    person_offset: int = 0,
    reply_offset: int = 0,
    delay_ms: float = 60.0,
    echo_db: float = 5.0,
    person_dbfs: float = -30.0,
    noise: npt.ArrayLike | None = None,
    snr_db: float = 20.0,
    noise_offset: int = 0,
) -> RoomMix:
    """The microphone signal for a reply played from ``reply_offset`` and a person speaking
    from ``person_offset`` (samples at 16 kHz).

    Levels are over active speech: the person at ``person_dbfs`` (also when absent: it is
    the room's reference level), the echo ``echo_db`` over it, the noise ``snr_db`` under
    it. The capture lasts until the echo and the person have both ended.
    """
    reply_x = np.asarray(reply, dtype=np.float64).reshape(-1)
    person_x = np.zeros(0) if person is None else np.asarray(person, dtype=np.float64)
    person_x = person_x.reshape(-1)
    delay = round(delay_ms * PIPELINE_RATE / 1000)
    echo = scale_to_dbfs(echo_path(reply_x, rir, delay), person_dbfs + echo_db)
    length = max(reply_offset + echo.size, person_offset + person_x.size, 0)
    echo_track = place(echo, reply_offset, length)
    person_track = place(scale_to_dbfs(person_x, person_dbfs), person_offset, length)
    noise_track = np.zeros(length)
    if noise is not None:
        noise_track = scale_to_dbfs(noise_for(noise, length, noise_offset),
                                    person_dbfs - snr_db)
    mic = np.clip(np.round(person_track + echo_track + noise_track), -32768, 32767)
    reference = np.clip(np.round(place(reply_x, reply_offset, length)), -32768, 32767)
    return RoomMix(mic=mic.astype(np.int16), reference=reference.astype(np.int16),
                   person=person_track, echo=echo_track, noise=noise_track)


def load_rirs(shared_audio: Path) -> dict[str, FloatArray]:
    """``rir/*.wav`` of the shared audio, by stem (``rir1``...), as float int16-scale."""
    return {path.stem: read_audio(path)[0].astype(np.float64)
            for path in sorted((shared_audio / "rir").glob("*.wav"))}


def load_noises(shared_audio: Path) -> dict[str, FloatArray]:
    """``noise/*.wav`` of the shared audio, by stem (``noise1``...)."""
    return {path.stem: read_audio(path)[0].astype(np.float64)
            for path in sorted((shared_audio / "noise").glob("*.wav"))}


def run_frontend(frontend: Frontend, mic: Int16Array, reference: Int16Array) -> Int16Array:
    """``mic`` through ``frontend`` 10 ms at a time, each frame's reference fed first (as the
    session does); a last partial frame is dropped."""
    frames = min(mic.size, reference.size) // LEVEL_FRAME
    out = np.zeros(frames * LEVEL_FRAME, dtype=np.int16)
    for i in range(frames):
        span = slice(i * LEVEL_FRAME, (i + 1) * LEVEL_FRAME)
        frontend.feed_reference(reference[span])
        out[span] = frontend.process(mic[span])
    return out


def erle_db(mic: npt.ArrayLike, out: npt.ArrayLike, start: int = 0) -> float:
    """Echo return loss enhancement of echo-only input: the power taken out, in dB, from
    sample ``start`` on (after the canceller has converged). Capped at 100 dB (silence)."""
    d = np.asarray(mic, dtype=np.float64).reshape(-1)
    e = np.asarray(out, dtype=np.float64).reshape(-1)
    n = min(d.size, e.size)
    power_in = float(np.sum(d[start:n] ** 2))
    power_out = float(np.sum(e[start:n] ** 2))
    if power_in <= 0.0:
        return 0.0
    if power_out <= power_in * 1e-10:
        return 100.0
    return 10 * float(np.log10(power_in / power_out))
