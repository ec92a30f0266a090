"""Word error rate of the ASR behind each noise-suppression level, on noisy real speech.

Mixes the Harvard sentences of ``../shared/audio/speech`` with the recorded noises of
``../shared/audio/noise`` at several SNRs, runs each mix through the WebRTC frontend at
every suppression level (and with AGC), and transcribes it with the configured ASR.
This is how ``frontend.noise_suppression`` was chosen. Usage::

    .venv/bin/python benchmarks/frontend_wer.py [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np

from voice_agent.audio.frontend import make_frontend, process_recording
from voice_agent.audio.pcm import Int16Array, read_audio
from voice_agent.bench import load_clips, shared_audio_dir
from voice_agent.config import FrontendConfig, load_config
from voice_agent.engines import load_asr
from voice_agent.models import Manifest
from voice_agent.wer import pooled_word_error_rate

SNRS_DB = (0, 5, 10, 20)
SETTINGS = [(0, 0), (1, 0), (2, 0), (3, 0), (4, 0), (2, 3)]  # (NS level, AGC target dBFS)


LEAD_IN = 32_000
"""2 s of noise before the speech: a live frontend has adapted to the room by the time
someone speaks, so the suppressor's noise estimate must not start cold on the first word."""


def mix(speech: Int16Array, noise: Int16Array, snr_db: float, offset: int) -> Int16Array:
    """Speech after a noise lead-in, at ``snr_db`` (speech power over noise power)."""
    speech = np.concatenate([np.zeros(LEAD_IN, np.int16), speech])
    noise = np.resize(np.roll(noise, -offset), speech.size).astype(np.float64)
    s = speech.astype(np.float64)
    power = np.mean(s[LEAD_IN:] ** 2)
    gain = np.sqrt(power / (np.mean(noise**2) * 10 ** (snr_db / 10) + 1e-12))
    return np.clip(s + gain * noise, -32768, 32767).astype(np.int16)


def through_frontend(audio: Int16Array, ns: int, agc: int) -> Int16Array:
    frontend = make_frontend(FrontendConfig(noise_suppression=ns, auto_gain_dbfs=agc,
                                            echo_cancellation=False))
    return process_recording(frontend, audio)[LEAD_IN:]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json")
    args = parser.parse_args()
    shared = shared_audio_dir()
    if shared is None:
        print("needs ../shared/audio", file=sys.stderr)
        return 2
    config = load_config(env={})
    asr = load_asr(config, Manifest.load())
    clips = load_clips(shared / "manifest.tsv", source="shared", prefix="speech/")
    noises = [read_audio(shared / "noise" / f"noise{i}.wav")[0] for i in range(1, 6)]
    results: dict[str, dict[str, float]] = {}
    print(f"{'SNR dB':>6} " + " ".join(f"{f'NS{ns}/AGC{agc}':>10}" for ns, agc in SETTINGS))
    for snr in SNRS_DB:
        row = {}
        for ns, agc in SETTINGS:
            pairs = []
            for index, clip in enumerate(clips):
                speech, _ = read_audio(clip.path)
                noisy = mix(speech, noises[index % len(noises)], snr, offset=index * 16000)
                heard = asr.transcribe(through_frontend(noisy, ns, agc)).text
                pairs.append((clip.reference, heard))
            row[f"ns{ns}_agc{agc}"] = round(pooled_word_error_rate(pairs), 4)
        results[str(snr)] = row
        print(f"{snr:>6} " + " ".join(f"{v:>10.1%}" for v in row.values()), flush=True)
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(results, handle, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
