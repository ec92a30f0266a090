"""Own echo and barge-in through the real session, offline and faster than real time.

``voice-agent bench --echo`` measures the whole appliance over a socket in real time (some
15 min for 50 replies, 12 barge-ins and 15 sounds); this drives the same
:class:`~voice_agent.session.Session` (the shipped config: AEC3 + noise suppression, the
VAD, the echo gate, Silero) frame by frame with a simulated room, so a change to how speech
over the reply is told from the reply's own echo can be measured on hundreds of replies in
minutes. No server, no models but the session's
own (the speech synthesis of the replies is done once, up front).

Each trial: a person asks a question (a ``speech/`` sentence); when the session starts the
turn, the reply (Piper, one of ``benchmarks/echo.py``'s replies) plays 0.3 s later. The
microphone hears it through a room impulse response, ``delay_ms`` late, ``echo_db`` over
the person (-26 dBFS), with recorded noise 20 dB under the person. The reference is placed
``--misplace-ms`` earlier than the echo really comes (a server whose input lags), 0 by
default. Either nobody speaks over the reply (*self*: every ``PauseReply`` is the reply
stopping for its own echo; ``CheckBurst(long)`` is a burst Whisper would judge, an
interruption if it heard words) or a second sentence starts 1-2 s into it (*barge-in*:
the time from its onset to the first ``PauseReply``). The reply is not really stopped: it
plays on to the end, so every false pause it would cause is counted (and its echo goes on
while "paused", so a long check, which needs speech once a paused reply is quiet, is counted
where a real pause would have silenced the echo). When the reply has played, its turn is
finished and the session listened to for ``TAIL_S`` more: speech that starts then (*after
end*, with its time from the reply's end) would be a turn of its own, checked against the
reply's words (``barge_in.echo_tail_ms``).

Usage::

    .venv/bin/python benchmarks/echo_session.py [--quick] [--misplace-ms 0] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from echo import replies

from voice_agent.actions import (
    CheckBurst,
    CommitTurn,
    Emit,
    PauseReply,
    ResumeReply,
    StartTurn,
)
from voice_agent.audio.double_talk import session_listeners
from voice_agent.audio.frontend import make_frontend
from voice_agent.audio.pcm import PIPELINE_RATE, Int16Array, read_audio
from voice_agent.audio.room import (
    echo_path,
    load_noises,
    load_rirs,
    noise_for,
    scale_to_dbfs,
)
from voice_agent.bench import load_clips, percentile, shared_audio_dir
from voice_agent.bench_echo import DELAYS_MS, ECHO_DB, RIRS, SNR_DB, onset_s
from voice_agent.config import Config, load_config
from voice_agent.engines import load_tts
from voice_agent.models import Manifest
from voice_agent.server.protocol import SpeechStarted
from voice_agent.session import Session

PERSON_DBFS = -26.0
THINK_S = 0.3
TAIL_S = 2
"""Listened to after the reply's echo ends, for speech its turn's end lets through."""
CHUNK = PIPELINE_RATE // 50


@dataclass
class Outcome:
    long_checks: int = 0
    detected_ms: float | None = None
    paused_at_s: list[float] = field(default_factory=list)
    """When each pause came, from the reply's start (one entry per pause)."""
    tail_starts_ms: list[int] = field(default_factory=list)
    """Speech that started after the reply's turn finished (nobody speaking): when, from
    the reply's end on the input's timeline. Each would be answered as a turn of its own."""


def new_session(config: Config) -> Session:
    vad, over_reply = session_listeners(config.vad, config.barge_in)
    return Session(vad_config=config.vad, frontend=make_frontend(config.frontend), vad=vad,
                   input_rate=PIPELINE_RATE, turn_config=config.turn, judge_pauses=False,
                   barge_in=True, barge_in_config=config.barge_in, over_reply=over_reply)


def trial(config: Config, question: Int16Array, reply: Int16Array, rir: np.ndarray,
          noise: np.ndarray, *, delay_ms: int, echo_db: float, misplace_ms: int,
          over: Int16Array | None, over_at_s: float, seed: int) -> Outcome:
    session = new_session(config)
    rng = np.random.default_rng(seed)
    asked = scale_to_dbfs(question.astype(np.float64), PERSON_DBFS)
    echo = scale_to_dbfs(echo_path(reply, rir, round((delay_ms + misplace_ms) * 16)),
                         PERSON_DBFS + echo_db)
    lead = PIPELINE_RATE // 2
    total = lead + asked.size + 3 * PIPELINE_RATE + echo.size + TAIL_S * PIPELINE_RATE
    person = np.zeros(total)
    person[lead:lead + asked.size] = asked
    mic_noise = scale_to_dbfs(noise_for(noise, total, int(rng.integers(noise.size))),
                              PERSON_DBFS - SNR_DB)
    echo_track = np.zeros(total)
    outcome = Outcome()
    turn: int | None = None
    turn_at = 0
    reply_at: int | None = None
    over_onset: int | None = None
    paused = False
    finished = False
    for at in range(0, total - CHUNK, CHUNK):
        if reply_at is not None and not finished and at >= reply_at + reply.size:
            # The server's clock says the reply has played: its turn is done.
            finished = True
            assert turn is not None  # noqa: S101 - a reply plays only for a turn
            session.turn_finished(turn)
        if turn is not None and reply_at is None and at >= turn_at + THINK_S * PIPELINE_RATE:
            reply_at = at
            session.reply_audible(turn)
            # The reference where the server expects the reply to start playing; the echo
            # comes delay_ms (the room) plus misplace_ms (the server's error) after it.
            session.reference(reply, 0)
            echo_track[at:at + echo.size] = echo[:total - at]
            if over is not None:
                start = at + round(over_at_s * PIPELINE_RATE)
                spoken = scale_to_dbfs(over.astype(np.float64), PERSON_DBFS)
                person[start:start + spoken.size] += spoken[:total - start]
                over_onset = start + round(onset_s(spoken) * PIPELINE_RATE)
        mic = person[at:at + CHUNK] + echo_track[at:at + CHUNK] + mic_noise[at:at + CHUNK]
        pcm = np.clip(np.round(mic), -32768, 32767).astype("<i2").tobytes()
        for action in session.audio(pcm):
            if isinstance(action, StartTurn | CommitTurn) and turn is None:
                turn, turn_at = action.turn_id, at
            elif isinstance(action, PauseReply):
                outcome.paused_at_s.append(round((at - (reply_at or at)) / PIPELINE_RATE, 2))
                paused = True
            elif isinstance(action, ResumeReply):
                paused = False
            elif (isinstance(action, Emit) and isinstance(action.event, SpeechStarted)
                  and finished and over is None):
                outcome.tail_starts_ms.append(
                    action.event.audio_ms - (reply_at or 0) * 1000 // PIPELINE_RATE
                    - reply.size * 1000 // PIPELINE_RATE)
            elif isinstance(action, CheckBurst):
                outcome.long_checks += int(action.long)
                speaking = over_onset is not None and at >= over_onset
                paused = paused and not any(isinstance(a, ResumeReply) for a in
                                            session.burst_heard(action.turn_id, speaking, ""))
        if (paused and over_onset is not None and at + CHUNK >= over_onset
                and outcome.detected_ms is None):
            # Paused once the person began (a pause already on for the echo counts at once:
            # the loudspeaker is quiet when they start).
            outcome.detected_ms = max(0, at + CHUNK - over_onset) / 16
        if reply_at is not None and at > reply_at + echo.size + TAIL_S * PIPELINE_RATE:
            break
    return outcome


def settings(quick: bool) -> list[tuple[str, int, float]]:
    return [(rir, delay, echo_db) for rir in RIRS
            for delay in (DELAYS_MS[1:2] if quick else DELAYS_MS)
            for echo_db in (ECHO_DB[1:] if quick else ECHO_DB)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--misplace-ms", type=int, default=0,
                        help="the reference placed this much before the echo comes")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    shared = shared_audio_dir()
    if shared is None:
        print("needs ../shared/audio", file=sys.stderr)
        return 2
    config = load_config(env={})
    tts = load_tts(config, Manifest.load(config.models.manifest, config.models.directory or None))
    reply_audio = replies(tts)
    rirs, noises = load_rirs(shared), load_noises(shared)
    noise = [noises["noise3"], noises["noise5"]]
    clips = [read_audio(c.path)[0] for c in load_clips(shared / "manifest.tsv",
                                                         source="shared", prefix="speech/")]
    rows: list[dict[str, Any]] = []
    started = time.perf_counter()
    for i, (rir, delay, echo_db) in enumerate(settings(args.quick)):
        for kind in ("self", "barge"):
            question = clips[i % len(clips)]
            over = clips[(i + 3) % len(clips)] if kind == "barge" else None
            result = trial(config, question, reply_audio[i % len(reply_audio)], rirs[rir],
                           noise[i % 2], delay_ms=delay, echo_db=echo_db,
                           misplace_ms=args.misplace_ms, over=over,
                           over_at_s=1.0 + (i % 5) / 5, seed=i)
            rows.append({"kind": kind, "rir": rir, "delay_ms": delay, "echo_db": echo_db,
                         **result.__dict__})
    print(f"{len(rows)} trials in {time.perf_counter() - started:.0f} s "
          f"(reference misplaced {args.misplace_ms} ms)")
    print(f"{'setting':<12} {'self: pauses':>13} {'long checks':>12} {'after end':>10}"
          f"   {'barge-in ms':>12}")
    for key in (*RIRS, *(f"{d:+.0f} dB" for d in ECHO_DB), "all"):
        group = [r for r in rows if key in ("all", r["rir"], f"{r['echo_db']:+.0f} dB")]
        own = [r for r in group if r["kind"] == "self"]
        barge = [r["detected_ms"] for r in group if r["kind"] == "barge"]
        found = [b for b in barge if b is not None]
        latency = (f"{percentile(found, 0.5):.0f}/{percentile(found, 0.95):.0f}"
                   if found else "-")
        print(f"{key:<12} {sum(len(r['paused_at_s']) for r in own):>13} "
              f"{sum(r['long_checks'] for r in own):>12} "
              f"{sum(len(r['tail_starts_ms']) for r in own):>10}   {latency:>12} "
              f"missed {len(barge) - len(found)}/{len(barge)}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
