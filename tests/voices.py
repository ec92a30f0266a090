"""Audio whose properties are known, for the prosody and emotion tests: tones of known pitch,
gain changes, espeak-ng at chosen rates and pitches, and a real spoken sentence."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from voice_agent.audio.pcm import Int16Array, read_audio

RATE = 16000
REPO = Path(__file__).resolve().parents[1]
SHARED_AUDIO = Path(__file__).resolve().parents[2] / "shared" / "audio"
SPEECH = SHARED_AUDIO / "speech"
needs_shared = pytest.mark.skipif(not SPEECH.is_dir(), reason="../shared/audio is absent")
needs_espeak = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="no espeak-ng")


def tone(freq: float | np.ndarray, seconds: float = 1.0, *, saw: bool = False,
         amp: float = 0.3) -> Int16Array:
    """A tone; ``freq`` may be a per-sample array (a glide), integrated to a phase."""
    n = int(seconds * RATE)
    f = np.broadcast_to(np.asarray(freq, dtype=np.float64), (n,))
    cycles = np.cumsum(f) / RATE
    wave = 2 * (cycles - np.floor(cycles + 0.5)) if saw else np.sin(2 * np.pi * cycles)
    return np.asarray(np.round(amp * 32767 * wave), dtype=np.int16)


def scaled(audio: Int16Array, gain: float) -> Int16Array:
    return np.asarray(np.clip(np.round(audio * gain), -32768, 32767), dtype=np.int16)


def espeak(tmp_path: Path, text: str, *args: str) -> Int16Array:
    out = tmp_path / f"say{len(list(tmp_path.iterdir()))}.wav"
    subprocess.run(["espeak-ng", "-w", str(out), *args, text], check=True, capture_output=True)
    return read_audio(out)[0]




def real_sentence() -> Int16Array:
    """A real spoken sentence: a human one when ../shared is here, else a project fixture."""
    path = SPEECH / "spk2_snt1.wav"
    return read_audio(path if path.is_file() else REPO / "fixtures" / "utt01.wav")[0]


def raised(audio: Int16Array, *, semitones: float = 0.0, level_dbfs: float | None = None,
           bright: bool = False) -> Int16Array:
    """``audio`` said higher (played faster by ``semitones``), brighter (pre-emphasis: +6 dB
    an octave up high, as a pressed voice has) and at ``level_dbfs``."""
    from voice_agent.prosody import prosody

    if semitones:
        step = 2 ** (semitones / 12)
        n = int(audio.size / step)
        audio = np.interp(np.arange(n) * step, np.arange(audio.size), audio).astype(np.int16)
    if bright:
        x = audio.astype(np.float64)
        emphasized = np.concatenate([x[:1], x[1:] - 0.9 * x[:-1]]) * 2.0
        audio = np.asarray(np.clip(np.round(emphasized), -32768, 32767), dtype=np.int16)
    if level_dbfs is not None:
        audio = scaled(audio, 10 ** ((level_dbfs - prosody(audio).loudness_dbfs) / 20))
    return audio
