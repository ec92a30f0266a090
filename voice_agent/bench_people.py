"""``voice-agent bench --people N``: several people talking to one appliance, like people.

Each simulated person holds one session with a continuous microphone stream (real time,
20 ms frames; silence between utterances, as a real microphone sends), speaks a real
utterance, waits for the whole reply (its ``turn_done``, then as long as the reply audio
lasts, since a person listens to it), pauses 1–3 s and speaks again, ``turns`` times. The
same script runs first with one person alone and then with N at once, in the same process
and run, so the two are compared as a ratio on the same machine state.

Voice-to-voice per turn is measured by the client: last speech sample sent → first reply
audio received. The report says where the time goes (per-stage p50/p95 from the server's
``timings_ms``, LLM queue wait included) and whether every turn was answered without an
``engine_timeout`` and without a breaker opening.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import random
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from websockets.asyncio.client import connect

from voice_agent.aio import wait_within
from voice_agent.audio.pcm import Int16Array, last_speech_sample, read_audio
from voice_agent.bench import Clip, default_clips, percentile
from voice_agent.config import Config
from voice_agent.engines import Engines, load_engines
from voice_agent.server.protocol import (
    End,
    ErrorEvent,
    SessionEnd,
    Start,
    TurnDone,
    decode_server,
    encode,
)
from voice_agent.server.ws import VoiceServer

RATE = 16000
FRAME = RATE * 20 // 1000
PAUSE_S = (1.0, 3.0)
REPLY_TIMEOUT_S = 60.0
"""A turn whose reply has not ended this long after the utterance counts as unanswered."""

STAGES = [
    ("endpoint wait", "endpoint_wait_ms"),
    ("ASR", "asr_ms"),
    ("LLM queue", "llm_queue_ms"),
    ("LLM first token", "llm_first_token_ms"),
    ("first sentence", "first_sentence_ms"),
    ("first spoken word (server)", "first_audio_ms"),
    ("voice-to-voice (client)", "voice_to_voice_ms"),
]


@dataclasses.dataclass
class _Person:
    """One simulated person: what they say and what they heard back."""

    index: int
    utterances: list[Int16Array]
    rows: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    errors: list[str] = dataclasses.field(default_factory=list)


async def _talk(person: _Person, url: str, seed: int) -> None:
    rng = random.Random(seed)
    silence = np.zeros(FRAME, np.int16)
    turn_ended: asyncio.Queue[tuple[TurnDone, float | None]] = asyncio.Queue()
    first_audio: list[float] = []
    async with connect(url, max_size=None) as ws:
        await ws.send(encode(Start(sample_rate=RATE, output_sample_rate=RATE)))

        async def receive() -> None:
            async for message in ws:
                if isinstance(message, bytes):
                    if not first_audio:
                        first_audio.append(time.perf_counter())
                    continue
                event = decode_server(message)
                if isinstance(event, TurnDone):
                    turn_ended.put_nowait((event, first_audio[0] if first_audio else None))
                    first_audio.clear()
                elif isinstance(event, ErrorEvent):
                    person.errors.append(event.code)
                elif isinstance(event, SessionEnd):
                    return

        receiver = asyncio.create_task(receive())
        clock = _FrameClock()
        try:
            for utterance in person.utterances:
                speech_end = clock.after(last_speech_sample(utterance, RATE) / RATE)
                for start in range(0, utterance.size, FRAME):
                    await ws.send(utterance[start : start + FRAME].astype("<i2").tobytes())
                    await clock.tick()
                # Keep the microphone open (silence) until the reply has been heard out.
                deadline = time.perf_counter() + REPLY_TIMEOUT_S
                done: TurnDone | None = None
                heard_at: float | None = None
                while time.perf_counter() < deadline:
                    await ws.send(silence.tobytes())
                    await clock.tick()
                    with contextlib.suppress(asyncio.QueueEmpty):
                        done, heard_at = turn_ended.get_nowait()
                        if done.status != "empty":
                            break
                        done = None  # a noise blip: keep waiting for the real reply
                row: dict[str, Any] = {"person": person.index, "status": "unanswered"}
                if done is not None:
                    row.update(status=done.status, engine=done.engine,
                               fallbacks=done.fallbacks, reply_s=done.audio_samples / RATE,
                               **done.timings_ms)
                    if heard_at is not None:
                        row["voice_to_voice_ms"] = round((heard_at - speech_end) * 1000, 1)
                    listen_s = done.audio_samples / RATE
                    if heard_at is not None:
                        listen_s -= time.perf_counter() - heard_at
                    for _ in range(int((max(0.0, listen_s) + rng.uniform(*PAUSE_S)) * 50)):
                        await ws.send(silence.tobytes())
                        await clock.tick()
                person.rows.append(row)
            await ws.send(encode(End()))
            await wait_within(receiver, REPLY_TIMEOUT_S)
        finally:
            receiver.cancel()
            await asyncio.gather(receiver, return_exceptions=True)


class _FrameClock:
    """Paces 20 ms frames in real time against the wall clock (no drift)."""

    def __init__(self) -> None:
        self._started = time.perf_counter()
        self._frames = 0

    def after(self, seconds: float) -> float:
        """Wall time at which the stream reaches ``seconds`` past the current frame."""
        return self._started + self._frames * FRAME / RATE + seconds

    async def tick(self) -> None:
        self._frames += 1
        delay = self._started + self._frames * FRAME / RATE - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)


def _utterances(clips: list[Clip], person: int, turns: int) -> list[Int16Array]:
    chosen = [clips[(person * turns + k) % len(clips)] for k in range(turns)]
    return [read_audio(c.path, rate=RATE)[0] for c in chosen]


async def _round(url: str, clips: list[Clip], people: int, turns: int) -> list[_Person]:
    crowd = [_Person(i, _utterances(clips, i, turns)) for i in range(people)]
    # People do not all start talking in the same 20 ms: stagger the first words by 0–2 s.
    async def start(person: _Person) -> None:
        await asyncio.sleep(random.Random(person.index).uniform(0.0, 2.0) if people > 1 else 0)
        await _talk(person, url, seed=person.index)

    await asyncio.gather(*(start(p) for p in crowd))
    return crowd


def _stats(rows: list[dict[str, Any]], key: str) -> tuple[int, float, float]:
    values = [float(r[key]) for r in rows if r.get(key) is not None]
    return len(values), percentile(values, 0.5), percentile(values, 0.95)


def _table(alone: list[dict[str, Any]], crowd: list[dict[str, Any]], people: int) -> str:
    head = (f"{'stage':27} {'1 person p50':>12} {'p95':>7}   {people} people p50"
            f" {'p95':>7}  p95 ratio")
    lines = [head, "-" * len(head)]
    for label, key in STAGES:
        _, a50, a95 = _stats(alone, key)
        _, c50, c95 = _stats(crowd, key)
        ratio = c95 / a95 if a95 > 0 else float("nan")  # nan > 0 is False too
        lines.append(f"{label:27} {a50:>12.0f} {a95:>7.0f}   {c50:>{len(str(people)) + 11}.0f}"
                     f" {c95:>7.0f}  {ratio:>8.2f}x")
    return "\n".join(lines)


def _verdict(rows: list[dict[str, Any]], errors: list[str], engines: Engines) -> dict[str, Any]:
    timeouts = sum(1 for r in rows if "engine_timeout" in r.get("fallbacks", {}).values())
    return {
        "turns": len(rows),
        "answered_ok": sum(1 for r in rows if r["status"] == "ok"),
        "statuses": {s: sum(1 for r in rows if r["status"] == s)
                     for s in sorted({r["status"] for r in rows})},
        "engine_timeouts": timeouts + errors.count("engine_timeout"),
        "error_codes": sorted(set(errors)),
        "breakers": {b["engine"]: b["state"] for b in engines.llm.status()},
    }


async def run_people_bench(config: Config, *, people: int, turns: int,
                           json_path: str | None = None) -> int:
    clips = default_clips()
    config.server.port, config.server.host = 0, "127.0.0.1"
    # Every simulated person connects from loopback: one address, one session each.
    config.server.max_sessions = max(config.server.max_sessions, people)
    config.server.max_connections_per_address = max(
        config.server.max_connections_per_address, people)
    engines = load_engines(config)
    try:
        async with VoiceServer(engines, config) as server:
            url = f"ws://127.0.0.1:{server.port}"
            print(f"bench: 1 person, {turns} turns…", file=sys.stderr, flush=True)
            await _round(url, clips[-1:] + clips, 1, 1)  # warm-up, not counted
            alone = await _round(url, clips, 1, turns)
            print(f"bench: {people} people at once, {turns} turns each…", file=sys.stderr,
                  flush=True)
            crowd = await _round(url, clips, people, turns)
            alone_rows = [r for p in alone for r in p.rows]
            crowd_rows = [r for p in crowd for r in p.rows]
            verdict = _verdict(crowd_rows, [e for p in crowd for e in p.errors], engines)
    finally:
        engines.close()
    print(_table(alone_rows, crowd_rows, people))
    _, _, alone95 = _stats(alone_rows, "voice_to_voice_ms")
    _, _, crowd95 = _stats(crowd_rows, "voice_to_voice_ms")
    verdict["v2v_p95_ratio"] = round(crowd95 / alone95, 2) if alone95 else None
    print(json.dumps(verdict))
    if json_path:
        Path(json_path).write_text(json.dumps(
            {"alone": alone_rows, "crowd": crowd_rows, "verdict": verdict}, indent=2))
    healthy = (verdict["answered_ok"] == verdict["turns"] and not verdict["engine_timeouts"]
               and all(state == "closed" for state in verdict["breakers"].values()))
    return 0 if healthy else 1
