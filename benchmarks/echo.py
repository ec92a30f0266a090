"""Echo cancellation in a simulated room: ERLE, self-interruption risk, barge-in WER.

The appliance's own replies (the embedded Piper voice) go through each room impulse
response of ``../shared/audio/rir`` (``voice_agent.audio.room``), 20/60/100 ms late, at
0/+5/+10 dB over the person (-30 dBFS), into the microphone. Frontends compared:

- ``aec3``: the shipped one, WebRTC AEC3 (livekit) + high-pass, then NS level 2;
- ``aec3_apm_ns``: AEC3 with APM's own noise suppression instead of the NS after it;
- ``pbfdaf``: a numpy partitioned-block frequency-domain NLMS (16 x 10 ms partitions, no
  double-talk detector, no residual suppressor: a plain linear canceller), then NS level 2;
- ``none``: NS level 2 alone (today's frontend, no canceller).

Three measurements:

1. ERLE in dB after convergence (from 2 s on) on echo alone, no noise (with noise it only
   measures the noise floor), per RIR over the delays and levels; ms per 10 ms frame pair.
2. Self-interruption risk: webrtcvad (mode 2) speech frames on echo plus recorded noise
   (20 dB under the person) with no person, over the whole reply (convergence included),
   and how many 60 ms speech runs (``vad.start_speech_ms``) would start a turn.
3. Barge-in WER: each ``speech/spk*`` and ``speech/LJ*`` sentence started 3 s into a reply
   (+5 and +10 dB echo, noise 20 dB under the person, RIR and delay varied by sentence),
   through each frontend with its reference, transcribed by the project's ``WhisperAsr``
   from 0.3 s before the sentence to its end; beside the same sentence and noise with no
   echo through the same frontend.

Usage::

    .venv/bin/python benchmarks/echo.py [--json OUT] [--quick]
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from voice_agent.audio.aec import EchoCancellingFrontend
from voice_agent.audio.frontend import FRAME_SAMPLES, Frontend, WebRtcFrontend
from voice_agent.audio.pcm import PIPELINE_RATE, Int16Array, read_audio, resample
from voice_agent.audio.room import erle_db, load_noises, load_rirs, run_frontend, simulate
from voice_agent.audio.vad import WebRtcVad
from voice_agent.bench import load_clips, shared_audio_dir
from voice_agent.config import load_config
from voice_agent.engines import load_asr, load_tts
from voice_agent.models import Manifest
from voice_agent.wer import pooled_word_error_rate

REPLIES = (
    "I understand. Let me sort that out for you right away. The pharmacy opens at nine in "
    "the morning and closes at six in the evening on weekdays.",
    "Sure. Your next appointment is on Tuesday at half past two, with doctor Meyer, on the "
    "second floor. Please bring your insurance card and arrive ten minutes early.",
    "The nearest charging station is four kilometres ahead, on the right, just after the "
    "bridge. It has two fast chargers, and one of them is free right now.",
)
DELAYS_MS = (20, 60, 100)
ECHO_DB = (0.0, 5.0, 10.0)
WER_ECHO_DB = (5.0, 10.0)
CONVERGED_S = 2.0
PERSON_AT_S = 3.0
SNR_DB = 20.0
START_RUN_FRAMES = 6
"""60 ms of speech frames in a row: ``vad.start_speech_ms``, what starts a turn."""


class Pbfdaf:
    """Partitioned-block frequency-domain NLMS (overlap-save), the plain alternative."""

    def __init__(self, partitions: int = 16, step: float = 0.5, then: Frontend | None = None
                 ) -> None:
        n = FRAME_SAMPLES
        self._n, self._p, self._step = n, partitions, step
        self._ref = np.zeros(2 * n)
        self._x = np.zeros((partitions, n + 1), dtype=np.complex128)
        self._w = np.zeros((partitions, n + 1), dtype=np.complex128)
        self._power = np.full(n + 1, 1.0)
        self._then = then

    def feed_reference(self, frame: Int16Array) -> None:
        self._ref = np.concatenate([self._ref[self._n:], frame.astype(np.float64)])
        self._x = np.roll(self._x, 1, axis=0)
        self._x[0] = np.fft.rfft(self._ref)

    def process(self, frame: Int16Array) -> Int16Array:
        n = self._n
        y = np.fft.irfft(np.sum(self._w * self._x, axis=0))[n:]
        e = frame.astype(np.float64) - y
        spectrum = np.fft.rfft(np.concatenate([np.zeros(n), e]))
        self._power = 0.9 * self._power + 0.1 * np.abs(self._x[0]) ** 2
        gradient = np.conj(self._x) * spectrum / (self._power * self._p + 1e3)
        g = np.fft.irfft(gradient, axis=1)
        g[:, n:] = 0.0  # the overlap-save constraint: a causal, n-tap update per partition
        self._w += self._step * np.fft.rfft(g, axis=1)
        out = np.clip(np.round(e), -32768, 32767).astype(np.int16)
        return self._then.process(out) if self._then is not None else out


FRONTENDS: dict[str, Callable[[], Frontend]] = {
    "aec3": lambda: EchoCancellingFrontend(noise_suppression=2),
    "aec3_apm_ns": lambda: EchoCancellingFrontend(noise_suppression=0,
                                                  apm_noise_suppression=True),
    "pbfdaf": lambda: Pbfdaf(then=WebRtcFrontend(noise_suppression=2)),
    "none": lambda: WebRtcFrontend(noise_suppression=2),
}


def replies(tts: Any) -> list[Int16Array]:
    out = []
    for text in REPLIES:
        audio = np.concatenate(list(tts.synthesize(text, threading.Event())))
        out.append(resample(audio, tts.sample_rate, PIPELINE_RATE))
    return out


def erle_table(rirs: dict[str, np.ndarray], speech: list[Int16Array], quick: bool
               ) -> dict[str, Any]:
    rows: dict[str, dict[str, list[float]]] = {}
    cost: dict[str, list[float]] = {}
    delays = DELAYS_MS[1:2] if quick else DELAYS_MS
    for name in ("aec3", "aec3_apm_ns", "pbfdaf"):
        for rir_name, rir in rirs.items():
            for k, delay in enumerate(delays):
                for echo_db in ECHO_DB:
                    reply = speech[k % len(speech)]
                    mix = simulate(reply=reply, rir=rir, delay_ms=delay, echo_db=echo_db)
                    frontend = FRONTENDS[name]()
                    started = time.perf_counter()
                    out = run_frontend(frontend, mix.mic, mix.reference)
                    cost.setdefault(name, []).append(
                        (time.perf_counter() - started) * 1000 / (out.size // FRAME_SAMPLES))
                    rows.setdefault(name, {}).setdefault(rir_name, []).append(
                        erle_db(mix.mic, out, int(CONVERGED_S * PIPELINE_RATE)))
    return {"erle_db": {name: {rir: {"mean": round(float(np.mean(v)), 1),
                                     "min": round(float(np.min(v)), 1)}
                               for rir, v in per_rir.items()} for name, per_rir in rows.items()},
            "ms_per_frame_pair": {name: round(float(np.median(v)), 3)
                                  for name, v in cost.items()}}


def _speech_runs(audio: Int16Array, vad: WebRtcVad) -> tuple[int, int, int]:
    """(speech frames, frames, runs of START_RUN_FRAMES speech frames in a row)."""
    speech = frames = runs = streak = 0
    for i in range(0, audio.size - FRAME_SAMPLES + 1, FRAME_SAMPLES):
        frames += 1
        if vad.is_speech(audio[i: i + FRAME_SAMPLES]):
            speech += 1
            streak += 1
            runs += streak == START_RUN_FRAMES
        else:
            streak = 0
    return speech, frames, runs


def self_interruption(rirs: dict[str, np.ndarray], noises: dict[str, np.ndarray],
                      speech: list[Int16Array], quick: bool) -> dict[str, Any]:
    vad = WebRtcVad(2)
    result: dict[str, Any] = {}
    noise_list = list(noises.values())
    delays = DELAYS_MS[1:2] if quick else DELAYS_MS
    for name in [*FRONTENDS, "noise_alone"]:
        speech_frames = frames = runs = replies_with_runs = 0
        count = 0
        for r, rir in enumerate(rirs.values()):
            for k, delay in enumerate(delays):
                for echo_db in ECHO_DB:
                    reply = speech[(r + k) % len(speech)]
                    mix = simulate(reply=reply, rir=rir, delay_ms=delay, echo_db=echo_db,
                                   noise=noise_list[count % len(noise_list)], snr_db=SNR_DB,
                                   noise_offset=count * 7919)
                    if name == "noise_alone":  # the floor: what the noise alone triggers
                        noise_only = np.round(mix.noise).astype(np.int16)
                        out = run_frontend(FRONTENDS["none"](), noise_only, mix.reference)
                    else:
                        out = run_frontend(FRONTENDS[name](), mix.mic, mix.reference)
                    s, f, n = _speech_runs(out, vad)
                    speech_frames, frames, runs = speech_frames + s, frames + f, runs + n
                    replies_with_runs += n > 0
                    count += 1
        result[name] = {"replies": count, "speech_frames_pct": round(100 * speech_frames
                                                                     / max(frames, 1), 2),
                        "turn_starts": runs, "replies_with_a_turn_start": replies_with_runs}
    return result


def barge_in_wer(rirs: dict[str, np.ndarray], noises: dict[str, np.ndarray],
                 speech: list[Int16Array], shared: Path, quick: bool) -> dict[str, Any]:
    config = load_config(env={}, overrides={})
    asr = load_asr(config, Manifest.load(config.models.manifest,
                                         config.models.directory or None))
    clips = [c for c in load_clips(shared / "manifest.tsv", source="shared",
                                   prefix="speech/")]
    if quick:
        clips = clips[::3]
    rir_list, noise_list = list(rirs.values()), list(noises.values())
    pairs: dict[str, list[tuple[str, str]]] = {}
    at = int(PERSON_AT_S * PIPELINE_RATE)
    lead = int(0.3 * PIPELINE_RATE)
    for i, clip in enumerate(clips):
        person, _ = read_audio(clip.path)
        reply = np.tile(speech[i % len(speech)], 2)  # still talking when the person stops
        for echo_db in WER_ECHO_DB:
            kwargs: dict[str, Any] = dict(
                rir=rir_list[i % len(rir_list)], person=person, person_offset=at,
                delay_ms=DELAYS_MS[i % len(DELAYS_MS)], echo_db=echo_db,
                noise=noise_list[i % len(noise_list)], snr_db=SNR_DB, noise_offset=i * 7919)
            with_echo = simulate(reply=reply, **kwargs)
            no_echo = simulate(reply=np.zeros_like(reply), **kwargs)
            end = at + person.size
            for name in FRONTENDS:
                for label, mix in (("echo", with_echo), ("no_echo", no_echo)):
                    out = run_frontend(FRONTENDS[name](), mix.mic, mix.reference)
                    text = asr.transcribe(out[at - lead: end]).text
                    pairs.setdefault(f"{name}/{label}/{echo_db:+.0f}", []).append(
                        (clip.reference, text))
    return {key: {"n": len(v), "wer_pct": round(100 * pooled_word_error_rate(v), 1)}
            for key, v in pairs.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--quick", action="store_true", help="one delay, a third of clips")
    parser.add_argument("--no-wer", action="store_true", help="skip the barge-in ASR part")
    args = parser.parse_args(argv)
    shared = shared_audio_dir()
    if shared is None:
        parser.error("needs ../shared/audio")
    rirs, noises = load_rirs(shared), load_noises(shared)
    config = load_config(env={}, overrides={})
    tts = load_tts(config, Manifest.load(config.models.manifest,
                                         config.models.directory or None))
    speech = replies(tts)
    results: dict[str, Any] = {"erle": erle_table(rirs, speech, args.quick)}
    print("ERLE after 2 s, dB (mean / min over delays 20-100 ms and echo 0..+10 dB)")
    names = list(rirs)
    print(f"{'canceller':14}" + "".join(f"{n:>14}" for n in names) + f"{'ms/frame':>10}")
    for name, per_rir in results["erle"]["erle_db"].items():
        cells = "".join(f"{per_rir[n]['mean']:>8.1f} /{per_rir[n]['min']:>4.0f}" for n in names)
        print(f"{name:14}{cells}{results['erle']['ms_per_frame_pair'][name]:>10.3f}")
    results["self_interruption"] = self_interruption(rirs, noises, speech, args.quick)
    print("\nEcho + noise, no person: webrtcvad speech frames and 60 ms runs (turn starts)")
    print(f"{'frontend':14}{'replies':>8}{'speech %':>10}{'starts':>8}{'replies hit':>12}")
    for name, row in results["self_interruption"].items():
        print(f"{name:14}{row['replies']:>8}{row['speech_frames_pct']:>10.2f}"
              f"{row['turn_starts']:>8}{row['replies_with_a_turn_start']:>12}")
    if not args.no_wer:
        results["barge_in_wer"] = barge_in_wer(rirs, noises, speech, shared, args.quick)
        print("\nBarge-in WER %: a sentence 3 s into the reply, noise 20 dB under the person")
        print(f"{'frontend':14}" + "".join(f"{f'echo {d:+.0f} dB':>14}{'no echo':>9}"
                                           for d in WER_ECHO_DB))
        for name in FRONTENDS:
            wer = results["barge_in_wer"]
            cells = "".join(f"{wer[f'{name}/echo/{d:+.0f}']['wer_pct']:>14.1f}"
                            f"{wer[f'{name}/no_echo/{d:+.0f}']['wer_pct']:>9.1f}"
                            for d in WER_ECHO_DB)
            print(f"{name:14}{cells}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
