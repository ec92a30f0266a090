"""Where the server path loses words against bare faster-whisper (issue 8, point 6).

On the real speech of ``../shared/audio`` (the Harvard and LJ sentences of ``speech/``, the
narration, and a sample of the RAVDESS ``emotion/`` clips, whose two sentences are known
from their file names), the pooled WER of:

- ``bare``: ``faster_whisper.WhisperModel.transcribe`` on the raw clip (public API, greedy,
  the same model the ASR loaded);
- ``asr raw``: :class:`WhisperAsr` on the raw clip;
- ``asr ns``: :class:`WhisperAsr` on the clip through the session's frontend (NS/AGC);
- ``asr ep raw``: the Endpointer's utterances (VAD trim, pre-roll, silence end) of the raw
  clip, transcribed one by one and joined;
- ``asr ep ns``: the same after the frontend: what the session hands the ASR today.

Long clips (the narration) are split by the Endpointer in the ``ep`` columns and decoded
whole elsewhere. Usage::

    .venv/bin/python benchmarks/asr_wer.py [--emotion N] [--json OUT] [--set asr.window_s=0]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from voice_agent.asr import WhisperAsr
from voice_agent.audio.frontend import FRAME_SAMPLES, make_frontend, process_recording
from voice_agent.audio.pcm import Framer, Int16Array, read_audio
from voice_agent.audio.vad import Endpointer, SpeechEnd, make_vad
from voice_agent.bench import load_clips, shared_audio_dir
from voice_agent.config import Config, load_config
from voice_agent.engines import load_asr
from voice_agent.models import Manifest
from voice_agent.wer import pooled_word_error_rate

RAVDESS = {"01": "Kids are talking by the door.", "02": "Dogs are sitting by the door."}


@dataclass(frozen=True)
class Item:
    name: str
    path: Path
    reference: str


def items(shared: Path, emotion: int) -> list[Item]:
    found = [Item(c.path.name, c.path, c.reference)
             for c in load_clips(shared / "manifest.tsv", source="shared", max_seconds=120.0)
             if c.path.parts[-2] in ("speech", "narration")]
    ravdess = sorted((shared / "emotion").glob("*.flac"))
    step = max(1, len(ravdess) // emotion) if emotion else 0
    for path in ravdess[::step][:emotion] if step else []:
        found.append(Item(path.name, path, RAVDESS[path.stem.split("-")[4]]))
    return found


def frontend_pass(audio: Int16Array, config: Config) -> Int16Array:
    return process_recording(make_frontend(config.frontend), audio)


def endpointed(audio: Int16Array, config: Config) -> list[Int16Array]:
    """The utterances the session would hand the ASR, as it does: VAD on each 10 ms frame,
    then the Endpointer; 1 s of trailing silence lets the last one end on silence."""
    padded = np.concatenate([audio, np.zeros(16000, np.int16)])
    vad, endpointer = make_vad(config.vad), Endpointer(config.vad)
    out: list[Int16Array] = []
    for frame in Framer(FRAME_SAMPLES).push(padded):
        out += [e.audio for e in endpointer.push(frame, vad.is_speech(frame))
                if isinstance(e, SpeechEnd)]
    out += [e.audio for e in endpointer.flush() if isinstance(e, SpeechEnd)]
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--emotion", type=int, default=48, help="RAVDESS clips to sample")
    parser.add_argument("--json")
    parser.add_argument("--set", action="append", default=[],
                        help="SECTION.FIELD=VALUE config override (repeatable)")
    parser.add_argument("--only", default="", help="comma-separated column names")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args()
    shared = shared_audio_dir()
    if shared is None:
        print("needs ../shared/audio", file=sys.stderr)
        return 2
    overrides: dict[str, dict[str, object]] = {}
    for setting in args.set:
        key, value = setting.split("=", 1)
        section, name = key.split(".", 1)
        overrides.setdefault(section, {})[name] = value
    config = load_config(env={}, overrides=overrides)
    asr = load_asr(config, Manifest.load())
    if not isinstance(asr, WhisperAsr):
        print("needs the Whisper ASR", file=sys.stderr)
        return 2

    def joined(parts: list[Int16Array]) -> str:
        return " ".join(asr.transcribe(p).text for p in parts)

    columns: dict[str, Callable[[Int16Array], str]] = {
        "bare": lambda a: asr.reference_transcribe(a).text,
        "asr raw": lambda a: asr.transcribe(a).text,
        "asr ns": lambda a: asr.transcribe(frontend_pass(a, config)).text,
        "asr ep raw": lambda a: joined(endpointed(a, config)),
        "asr ep ns": lambda a: joined(endpointed(frontend_pass(a, config), config)),
    }
    if args.only:
        columns = {k: v for k, v in columns.items() if k in args.only.split(",")}
    clips = items(shared, args.emotion)
    groups = {"speech": [c for c in clips if c.path.parts[-2] == "speech"],
              "narration": [c for c in clips if c.path.parts[-2] == "narration"],
              "emotion": [c for c in clips if c.path.parts[-2] == "emotion"]}
    results: dict[str, dict[str, float]] = {}
    hyps: dict[str, dict[str, str]] = {}
    for column, run in columns.items():
        started = time.perf_counter()
        pairs: dict[str, list[tuple[str, str]]] = {g: [] for g in groups}
        for group, members in groups.items():
            for item in members:
                audio, _ = read_audio(item.path)
                heard = run(audio)
                hyps.setdefault(item.name, {})[column] = heard
                pairs[group].append((item.reference, heard))
                if args.verbose:
                    print(f"  {column:10} {item.name}: {heard!r}", file=sys.stderr)
        row = {g: round(pooled_word_error_rate(p), 4) for g, p in pairs.items() if p}
        row["all"] = round(pooled_word_error_rate(p for g in pairs.values() for p in g), 4)
        row["seconds"] = round(time.perf_counter() - started, 1)
        results[column] = row
        print(f"{column:11} " + " ".join(f"{g} {v:6.1%}" for g, v in row.items()
                                          if g != "seconds") + f"  ({row['seconds']} s)",
              flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"wer": results, "transcripts": hyps}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
