"""``voice-agent bench``: per-stage and voice-to-voice latency of the full pipeline.

Real speech clips (the project's ``fixtures/`` plus ``../shared/audio`` when present) are
streamed in real time over a loopback WebSocket into an in-process server running the
configured engines, exactly as a client would. One warm-up clip is run first and not
counted. Stages per turn (ms, from the server unless noted):

- endpoint wait: last speech frame → end-of-turn decision (the configured silence)
- ASR: end of turn → transcript
- LLM first token (TTFT): request → first token of any kind (reasoning included)
- first sentence: end of turn → first complete sentence ready for TTS
- TTS first chunk: synthesis time of the first audio chunk
- first spoken word (TTFW): end of turn → first reply audio sent; for a reasoning model
  this is what the person waits for, TTFT is not
- voice-to-voice (client): last speech sample sent → first reply audio received
"""

from __future__ import annotations

import asyncio
import collections
import csv
import json
import platform
import resource
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from voice_agent.audio.pcm import read_audio
from voice_agent.client import stream_samples
from voice_agent.config import Config, describe
from voice_agent.engines import Engines, load_engines
from voice_agent.server.ws import VoiceServer
from voice_agent.wer import pooled_word_error_rate

REPO = Path(__file__).resolve().parent.parent
MAX_CLIP_S = 15.0

STAGES = [
    ("endpoint wait", "endpoint_wait_ms"),
    ("ASR", "asr_ms"),
    ("emotion tag", "emotion_ms"),
    ("LLM first token", "llm_first_token_ms"),
    ("first sentence", "first_sentence_ms"),
    ("TTS first chunk", "tts_first_chunk_ms"),
    ("first spoken word (server)", "first_audio_ms"),
    ("voice-to-voice (client)", "voice_to_voice_ms"),
]


@dataclass(frozen=True)
class Clip:
    path: Path
    reference: str
    source: str


def shared_audio_dir() -> Path | None:
    """``../shared/audio`` beside the checkout (or the working directory), if present."""
    for base in (REPO, Path.cwd()):
        candidate = base.parent / "shared" / "audio"
        if (candidate / "manifest.tsv").is_file():
            return candidate
    return None


def load_clips(
    manifest: Path, *, source: str, prefix: str = "", max_seconds: float = MAX_CLIP_S
) -> list[Clip]:
    """Clips with a reference transcript from a ``manifest.tsv`` (file, seconds, reference)."""
    clips = []
    with manifest.open(encoding="utf-8") as handle:
        for row in csv.DictReader(handle, delimiter="\t"):
            if not row["file"].startswith(prefix) or not row.get("reference"):
                continue
            if float(row["seconds"]) > max_seconds:
                continue
            clips.append(Clip(manifest.parent / row["file"], row["reference"], source))
    return clips


def default_clips() -> list[Clip]:
    clips = load_clips(REPO / "fixtures" / "manifest.tsv", source="fixtures")
    shared = shared_audio_dir()
    if shared is not None:
        clips += load_clips(shared / "manifest.tsv", source="shared", prefix="speech/")
    return clips


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    rank = (len(ordered) - 1) * q
    low, high = int(rank), min(int(rank) + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def summarize(rows: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    summary = {}
    for _, key in STAGES:
        values = [float(r[key]) for r in rows if r.get(key) is not None]
        summary[key] = {
            "n": len(values),
            "p50": round(percentile(values, 0.5), 1),
            "p95": round(percentile(values, 0.95), 1),
            "mean": round(statistics.fmean(values), 1) if values else float("nan"),
            "max": round(max(values), 1) if values else float("nan"),
        }
    return summary


def format_table(summary: dict[str, dict[str, float]]) -> str:
    lines = [f"{'stage':26} {'n':>3} {'p50 ms':>8} {'p95 ms':>8} {'mean ms':>8} {'max ms':>8}"]
    lines.append("-" * len(lines[0]))
    for label, key in STAGES:
        s = summary[key]
        lines.append(f"{label:26} {s['n']:>3} {s['p50']:>8.0f} {s['p95']:>8.0f} "
                     f"{s['mean']:>8.0f} {s['max']:>8.0f}")
    return "\n".join(lines)


def rss_mb() -> tuple[float, float]:
    """(current, peak) resident memory of this process in MB."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
        current = pages * resource.getpagesize() / 2**20
    except OSError:
        current = float("nan")
    return round(current, 1), round(peak, 1)


async def _bench_clip(clip: Clip, url: str) -> dict[str, Any]:
    samples, rate = read_audio(clip.path, rate=None)
    result = await stream_samples(samples, rate, url, output_rate=16000, trailing_silence_s=1.5)
    turn = result.turns[0] if result.turns else {}
    return {
        "clip": f"{clip.source}/{clip.path.name}",
        "reference": clip.reference,
        "transcript": result.transcript,
        "reply_text": result.reply_text,
        "reply_audio_s": result.reply_audio_seconds,
        "status": turn.get("status", "none"),
        "turns": len(result.turns),
        "errors": [e["code"] for e in result.errors],
        "voice_to_voice_ms": result.voice_to_voice_ms,
        "engine": turn.get("engine", ""),
        "fallbacks": turn.get("fallbacks", {}),
        **turn.get("timings_ms", {}),
    }


def bare_transcripts(engines: Engines, clips: list[Clip], rows: list[dict[str, Any]]) -> None:
    """Add each clip's transcript by bare faster-whisper (the public ``transcribe()``,
    greedy, on the raw clip, the same loaded model) to its row, as ``bare_transcript``: the
    yardstick for the server path's WER on the same clips."""
    from voice_agent.asr import WhisperAsr

    if not isinstance(engines.asr, WhisperAsr):
        return
    for clip, row in zip(clips, rows, strict=True):
        audio, _ = read_audio(clip.path)
        row["bare_transcript"] = engines.asr.reference_transcribe(audio).text


async def run_bench(config: Config, *, json_path: str | None = None,
                    limit: int | None = None, concurrency: int = 1) -> int:
    """Stream the clips ``concurrency`` at a time (1: one conversation at a time)."""
    clips = default_clips()[:limit] if limit else default_clips()
    if not clips:
        print("voice-agent: bench: no clips found", file=sys.stderr)
        return 2
    config.server.port = 0
    config.server.host = "127.0.0.1"
    started = time.perf_counter()
    engines = load_engines(config)
    load_s = time.perf_counter() - started
    print(f"bench: models loaded in {load_s:.1f} s; {len(clips)} clips "
          f"({sum(c.source == 'shared' for c in clips)} from shared/audio)", file=sys.stderr)
    rows: list[dict[str, Any]] = []
    try:
        async with VoiceServer(engines, config) as server:
            url = f"ws://127.0.0.1:{server.port}"
            warm, _ = read_audio(clips[0].path, rate=None)
            await stream_samples(warm, _, url, trailing_silence_s=1.0)
            for first in range(0, len(clips), concurrency):
                group = clips[first : first + concurrency]
                for row in await asyncio.gather(*(_bench_clip(c, url) for c in group)):
                    rows.append(row)
                    print(f"bench: [{len(rows)}/{len(clips)}] {row['clip']}: "
                          f"engine {row['engine'] or '-'}, "
                          f"TTFT {row.get('llm_first_token_ms', '-')} ms, "
                          f"TTFW {row.get('first_audio_ms', '-')} ms, "
                          f"v2v {row['voice_to_voice_ms']} ms, heard {row['transcript']!r}",
                          file=sys.stderr, flush=True)
        bare_transcripts(engines, clips, rows)
    finally:
        engines.close()
    summary = summarize(rows)
    current, peak = rss_mb()
    wer = pooled_word_error_rate((r["reference"], r["transcript"]) for r in rows)
    bare = [r for r in rows if "bare_transcript" in r]
    bare_wer = pooled_word_error_rate((r["reference"], r["bare_transcript"]) for r in bare)
    print(format_table(summary))
    answered = collections.Counter(r["engine"] or "none" for r in rows)
    print("answered by: " + ", ".join(f"{name} {count}" for name, count in answered.items()))
    if bare:
        print(f"WER on these clips: server path {wer:.1%}, bare faster-whisper {bare_wer:.1%} "
              "(public transcribe(), greedy, same model, raw clip)")
    print(f"\nclips {len(rows)} ({concurrency} at a time), pooled WER {wer:.1%}, "
          f"model load {load_s:.1f} s, RSS {current:.0f} MB (peak {peak:.0f} MB)")
    if json_path:
        report = {
            "summary_ms": summary,
            "clips": rows,
            "pooled_wer": round(wer, 4),
            "pooled_wer_bare_faster_whisper": round(bare_wer, 4) if bare else None,
            "concurrency": concurrency,
            "model_load_s": round(load_s, 2),
            "rss_mb": current,
            "peak_rss_mb": peak,
            "machine": {"python": platform.python_version(), "platform": platform.platform()},
            "config": describe(config),
        }
        Path(json_path).write_text(json.dumps(report, indent=2, ensure_ascii=False))
        print(f"wrote {json_path}", file=sys.stderr)
    failed = [r["clip"] for r in rows if r["status"] != "ok" or r["errors"]]
    if failed:
        print(f"bench: {len(failed)} clip(s) without a clean reply: {failed}", file=sys.stderr)
    return 1 if failed else 0
