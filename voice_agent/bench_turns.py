"""``voice-agent bench --turn-taking``: does the appliance answer fast without cutting people off?

The set is built at run time from the real speech in ``../shared/audio`` (never copied into
the repository) and streamed in real time (20 ms frames) over a loopback WebSocket into an
in-process server, one fresh session per item:

- *complete*: the Harvard sentences and the neutral emotion clips as spoken, then silence:
  voice-to-voice (last speech sample sent → first reply audio received);
- *paused*: each Harvard sentence with a thinking pause of 0.3, 0.5, 0.7, 1.0 and 1.5 s
  inserted at a word gap near its middle. The gap comes from Whisper's word timings,
  snapped to the quietest 10 ms within ``SNAP_MS`` of Whisper's boundary (tiny.en's
  timings are about ±0.1 s off); people run words together ("have all"), so the gap
  nearest the middle that dips ``GAP_DB`` below the loudest 10 ms is taken (``pause_point``);
- *narration*: the 52 s narration streamed whole, as one person talking: a reply is fine
  at a sentence end (each has a pause of 0.8–1.3 s), a turn that ends at a word gap inside
  a sentence (by Whisper's word timings and the reference's punctuation) is a cut-off.

The inserted pause is digital silence, faded out and in over ``FADE_MS``. Decided so
because the utterance is followed by digital silence too (as in every bench here): a pause
and an end then look the same to the endpointer, and only what was said and how can tell
them apart, which is what is measured. Room tone from the clip's own quiet parts was the
alternative, but these clips hold only 20–40 ms of it, and noise inside the pause with zeros
after the end would let a detector tell pause from end by the noise floor.

Both configurations run in one process on the same loaded engines, side by side: today's
fixed ``vad.end_silence_ms`` silence (``turn.endpoint = "silence"``, no speculation, no
resumed speech) and the configured ``[turn]`` settings (the defaults unless changed).

Metrics per item, from the client's own log of events (``score_item``, pure):

- *cut-off*: a reply heard (first reply audio) or a turn ended (``turn_done``, any status
  but ``empty``) before the utterance's last speech sample was sent;
- *reversed*: ``speech_resumed`` events (an end-of-turn decision taken back, not a cut-off);
- *words lost*: words of the utterance (the reference's words that bare Whisper also hears
  on the unpaused clip, so pure recognition errors do not count) with no counterpart in what
  the model was asked: the transcripts of turns that were answered (``turn_done`` ``ok``, or
  a reply that was heard before speech cut it off). A word heard differently is not lost;
  a word missing is. The same count on the complete items is the floor that the server's
  recognition alone gives;
- *wasted work*: ``discarded_llm_runs`` summed over committed turns.

The client does not play the reply out in real time: ``turn_done`` comes once the last reply
audio was sent, the next item has a session of its own, and nothing else runs meanwhile.
"""

from __future__ import annotations

import asyncio
import copy
import difflib
import json
import math
import platform
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from websockets.asyncio.client import connect

from voice_agent.aio import wait_within
from voice_agent.asr import Transcriber
from voice_agent.bench import percentile, shared_audio_dir
from voice_agent.config import Config, describe
from voice_agent.engines import load_engines
from voice_agent.server.protocol import End, Start, encode
from voice_agent.server.ws import VoiceServer
from voice_agent.turn_set import RATE, Item, build_set
from voice_agent.wer import normalize

FRAME = RATE * 20 // 1000
CUTOFF_TARGET_PAUSE_S = 1.0
"""False cut-offs are judged over the pauses up to this long (issue 8: ≤ 5% of them)."""
MIN_TRAILING_S = 1.0
"""Silence sent after the utterance at least, even once every turn has ended."""
ITEM_TIMEOUT_S = 60.0
"""Silence sent after the utterance at most, waiting for its turns to end."""
# --- streaming one item -----------------------------------------------------------------


@dataclass
class ItemLog:
    """What the client saw: every event with ``sent_ms`` (stream time sent when it
    arrived) and ``t`` (wall clock); reply audio as ``{"type": "audio", "turn_id", "samples"}``."""

    events: list[dict[str, Any]] = field(default_factory=list)
    speech_end_t: float = 0.0
    """Wall clock at which the last speech sample was sent."""
    timed_out: bool = False


def _all_ended(events: Sequence[dict[str, Any]], speech_end_ms: float) -> bool:
    """A turn ended after the utterance, and no turn is open. A turn started before a later
    turn that ended never gets its ``turn_done`` (a server fault, counted as
    ``unended_turns``): it is not waited for."""
    done = [e for e in events if e["type"] == "turn_done"]
    if not done or done[-1]["sent_ms"] < speech_end_ms:
        return False
    last = max(e["turn_id"] for e in done)
    return not [t for t in _unended(events) if t > last]


def _unended(events: Sequence[dict[str, Any]]) -> list[int]:
    """Turns that started and have no ``turn_done`` (every turn must end with one)."""
    started = {e["turn_id"] for e in events if e["type"] == "speech_started"}
    return sorted(started - {e["turn_id"] for e in events if e["type"] == "turn_done"})


async def stream_item(item: Item, url: str) -> ItemLog:
    """Stream ``item`` in real time, then silence until every turn has ended (at least
    ``MIN_TRAILING_S``, at most ``ITEM_TIMEOUT_S``), then ``end``."""
    log = ItemLog()
    silence = np.zeros(FRAME, np.int16).tobytes()
    frames = 0
    reply_turn: list[int] = []  # binary frames carry no turn id: the last reply_text's
    async with connect(url, max_size=None) as ws:
        await ws.send(encode(Start(sample_rate=RATE, output_sample_rate=RATE)))
        started = time.perf_counter()
        log.speech_end_t = started + item.speech_end_ms / 1000

        async def receive() -> None:
            async for message in ws:
                now, sent = time.perf_counter(), frames * FRAME * 1000 / RATE
                if isinstance(message, bytes):
                    log.events.append({"type": "audio", "turn_id": reply_turn[-1] if reply_turn
                                       else None, "samples": len(message) // 2,
                                       "sent_ms": sent, "t": now})
                    continue
                event = json.loads(message)
                event.update(sent_ms=sent, t=now)
                log.events.append(event)
                if event["type"] == "reply_text":
                    reply_turn.append(event["turn_id"])
                elif event["type"] == "session_end":
                    return

        receiver = asyncio.create_task(receive())
        try:
            audio_end = item.samples.size
            trailing_until = item.speech_end_ms + 1000 * MIN_TRAILING_S
            timeout_at = audio_end * 1000 / RATE + 1000 * ITEM_TIMEOUT_S
            while not receiver.done():
                at = frames * FRAME
                if at < audio_end:
                    chunk = item.samples[at : at + FRAME]
                    await ws.send(chunk.astype("<i2").tobytes())
                else:
                    sent_ms = at * 1000 / RATE
                    if sent_ms >= trailing_until and _all_ended(log.events, item.speech_end_ms):
                        break
                    if sent_ms >= timeout_at:
                        log.timed_out = True
                        break
                    await ws.send(silence)
                frames += 1
                delay = started + frames * FRAME / RATE - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
            if not receiver.done():
                await ws.send(encode(End()))
            await wait_within(receiver, ITEM_TIMEOUT_S)
        finally:
            receiver.cancel()
            await asyncio.gather(receiver, return_exceptions=True)
    return log


# --- scoring (pure) ---------------------------------------------------------------------


def lost_words(target: Sequence[str], asked: Sequence[str]) -> list[str]:
    """Words of ``target`` with no counterpart in ``asked``: deleted ones, and the surplus of
    a replaced span longer than what replaced it (a word heard differently is not lost)."""
    lost: list[str] = []
    matcher = difflib.SequenceMatcher(None, list(target), list(asked), autojunk=False)
    for op, a0, a1, b0, b1 in matcher.get_opcodes():
        if op == "delete":
            lost += target[a0:a1]
        elif op == "replace" and a1 - a0 > b1 - b0:
            lost += target[a0 + (b1 - b0) : a1]
    return lost


@dataclass
class _Turn:
    first_audio_ms: float | None = None
    first_audio_t: float | None = None
    done: dict[str, Any] | None = None
    speech_end_ms: float | None = None
    """``speech_end_ms`` of the turn's last ``speech_stopped``: where it was decided."""


def _turns(events: Sequence[dict[str, Any]]) -> dict[int, _Turn]:
    turns: dict[int, _Turn] = {}
    for e in events:
        tid = e.get("turn_id")
        if not isinstance(tid, int):
            continue
        turn = turns.setdefault(tid, _Turn())
        if e["type"] == "audio" and turn.first_audio_ms is None:
            turn.first_audio_ms, turn.first_audio_t = e["sent_ms"], e["t"]
        elif e["type"] == "speech_stopped":
            turn.speech_end_ms = float(e["speech_end_ms"])
        elif e["type"] == "turn_done":
            turn.done = e
    return turns


def _answered(turn: _Turn) -> bool:
    """The model was asked and its answer went out: ``ok``, or heard before speech cut
    it off."""
    return turn.done is not None and (turn.done["status"] == "ok"
                                      or turn.first_audio_ms is not None)


def _narration_split(item: Item, turns: dict[int, _Turn]) -> tuple[int, int, list[str]]:
    """(turns ended at a sentence end, at the very end; cut-offs inside sentences, as the
    word they came after)."""
    at_sentence_end, final, inside = 0, 0, []
    last = item.boundaries[-1] if item.boundaries else None
    for turn in turns.values():
        ended = (turn.done is not None and turn.done["status"] != "empty"
                 ) or turn.first_audio_ms is not None
        if not ended or not item.boundaries:
            continue
        point = turn.speech_end_ms
        if point is None:
            point = turn.first_audio_ms if turn.first_audio_ms is not None else (
                turn.done["sent_ms"] if turn.done else 0.0)
        near = min(item.boundaries, key=lambda b: abs(b.end_ms - point))
        if near is last:
            final += 1
        elif near.sentence_end:
            at_sentence_end += 1
        else:
            inside.append(near.word)
    return at_sentence_end, final, inside


def score_item(item: Item, log: ItemLog) -> dict[str, Any]:
    """One row of results for ``item`` from the client's log of it."""
    events = log.events
    turns = _turns(events)
    end = item.speech_end_ms
    cut = sorted(tid for tid, t in turns.items()
                 if (t.first_audio_ms is not None and t.first_audio_ms < end)
                 or (t.done is not None and t.done["status"] != "empty"
                     and t.done["sent_ms"] < end))
    answered = [tid for tid in sorted(turns) if _answered(turns[tid])]
    dones = {tid: t.done for tid, t in turns.items() if t.done is not None}
    asked = " ".join(str(dones[tid]["transcript"]) for tid in answered)
    v2v = None
    final = turns[answered[-1]] if answered else _Turn()
    if final.first_audio_t is not None and final.first_audio_t > log.speech_end_t:
        v2v = round((final.first_audio_t - log.speech_end_t) * 1000, 1)
    row: dict[str, Any] = {
        "item": item.name,
        "kind": item.kind,
        "pause_s": item.pause_s,
        "pause_at_ms": item.pause_at_ms,
        "speech_end_ms": round(end, 1),
        "statuses": [d["status"] for d in dones.values()],
        "cut_off": bool(cut) if item.kind != "narration" else None,
        "cut_off_turns": cut,
        "resumed": sum(1 for e in events if e["type"] == "speech_resumed"),
        "decisions": sum(1 for e in events if e["type"] == "speech_stopped"),
        "asked": asked,
        "words": len(item.words),
        "lost_words": lost_words(item.words, normalize(asked)),
        "voice_to_voice_ms": v2v,
        "committed": sum(1 for d in dones.values() if d["status"] == "ok"),
        "discarded_llm_runs": sum(int(d.get("discarded_llm_runs", 0)) for d in dones.values()),
        "answered": final.done is not None and final.done["status"] == "ok",
        "errors": [e["code"] for e in events if e["type"] == "error"],
        "timed_out": log.timed_out,
        "unended_turns": _unended(events),
    }
    if item.kind == "narration":
        at_end, at_last, inside = _narration_split(item, turns)
        row.update(sentence_end_turns=at_end, final_turns=at_last, cut_inside_sentence=inside,
                   sentence_ends=sum(b.sentence_end for b in item.boundaries[:-1]))
    return row


# --- the report -------------------------------------------------------------------------


def summarize(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The numbers of one configuration's run."""
    complete = [r for r in rows if r["kind"] == "complete"]
    paused = [r for r in rows if r["kind"] == "paused"]
    narration = [r for r in rows if r["kind"] == "narration"]
    v2v = [float(r["voice_to_voice_ms"]) for r in complete if r["voice_to_voice_ms"] is not None]
    v2v_paused = [float(r["voice_to_voice_ms"]) for r in paused
                  if r["voice_to_voice_ms"] is not None]
    by_pause = {}
    for pause in sorted({r["pause_s"] for r in paused}):
        group = [r for r in paused if r["pause_s"] == pause]
        by_pause[f"{pause:.1f}"] = {"cut_off": sum(r["cut_off"] for r in group),
                                    "items": len(group),
                                    "resumed": sum(r["resumed"] for r in group)}
    short = [r for r in paused if r["pause_s"] <= CUTOFF_TARGET_PAUSE_S]
    committed = sum(r["committed"] for r in rows)
    discarded = sum(r["discarded_llm_runs"] for r in rows)
    return {
        "v2v_complete": {"n": len(v2v), "p50": round(percentile(v2v, 0.5), 1),
                         "p95": round(percentile(v2v, 0.95), 1)},
        "v2v_paused": {"n": len(v2v_paused), "p50": round(percentile(v2v_paused, 0.5), 1),
                       "p95": round(percentile(v2v_paused, 0.95), 1)},
        "cut_off_by_pause": by_pause,
        "cut_off_short": {"cut_off": sum(r["cut_off"] for r in short), "items": len(short)},
        "resumed": sum(r["resumed"] for r in paused),
        "words_lost": {kind: {"lost": sum(len(r["lost_words"]) for r in group),
                              "words": sum(r["words"] for r in group)}
                       for kind, group in (("paused", paused), ("complete", complete),
                                           ("narration", narration))},
        "narration": {"cut_inside_sentence": sum(len(r["cut_inside_sentence"]) for r in narration),
                      "sentence_end_turns": sum(r["sentence_end_turns"] for r in narration),
                      "sentence_ends": sum(r["sentence_ends"] for r in narration),
                      "resumed": sum(r["resumed"] for r in narration)} if narration else None,
        "committed_turns": committed,
        "discarded_llm_runs": discarded,
        "discarded_per_committed": round(discarded / committed, 3) if committed else None,
        "unanswered": [r["item"] for r in rows if not r["answered"] and r["kind"] != "narration"],
        "errors": sorted({c for r in rows for c in r["errors"]}),
        "timed_out": [r["item"] for r in rows if r["timed_out"]],
        "unended_turns": [r["item"] for r in rows if r.get("unended_turns")],
    }


def _frac(part: int, whole: int) -> str:
    return f"{part}/{whole} ({part / whole:.0%})" if whole else "-"


def _ratio(new: float, old: float) -> str:
    if math.isnan(new) or math.isnan(old) or old <= 0:
        return ""
    return f"{new / old:.2f}x"


def format_table(labels: tuple[str, str], base: dict[str, Any], new: dict[str, Any]) -> str:
    """Both runs side by side; the ratio is new / baseline where it means something."""
    lines: list[tuple[str, str, str, str]] = []
    for key, name in (("v2v_complete", "complete"), ("v2v_paused", "after a pause")):
        for q in ("p50", "p95"):
            a, b = float(base[key][q]), float(new[key][q])
            lines.append((f"voice-to-voice {q}, {name} (ms, n={base[key]['n']}/{new[key]['n']})",
                          f"{a:.0f}", f"{b:.0f}", _ratio(b, a)))
    for pause, a in base["cut_off_by_pause"].items():
        b = new["cut_off_by_pause"].get(pause, {"cut_off": 0, "items": 0})
        lines.append((f"false cut-offs, {pause} s pause", _frac(a["cut_off"], a["items"]),
                      _frac(b["cut_off"], b["items"]), ""))
    a, b = base["cut_off_short"], new["cut_off_short"]
    lines.append((f"false cut-offs, pauses <= {CUTOFF_TARGET_PAUSE_S:.1f} s",
                  _frac(a["cut_off"], a["items"]), _frac(b["cut_off"], b["items"]), ""))
    lines.append(("decisions reversed (speech_resumed)", str(base["resumed"]),
                  str(new["resumed"]), ""))
    for kind in ("paused", "complete", "narration"):
        a, b = base["words_lost"][kind], new["words_lost"][kind]
        if a["words"] or b["words"]:
            lines.append((f"words lost, {kind}", f"{a['lost']}/{a['words']}",
                          f"{b['lost']}/{b['words']}", ""))
    if base["narration"] and new["narration"]:
        a, b = base["narration"], new["narration"]
        lines.append(("narration: turns ended inside a sentence",
                      str(a["cut_inside_sentence"]), str(b["cut_inside_sentence"]), ""))
        lines.append(("narration: turns ended at a sentence end",
                      f"{a['sentence_end_turns']}/{a['sentence_ends']}",
                      f"{b['sentence_end_turns']}/{b['sentence_ends']}", ""))
    lines.append(("speculative LLM runs discarded / committed turn",
                  f"{base['discarded_llm_runs']}/{base['committed_turns']}",
                  f"{new['discarded_llm_runs']}/{new['committed_turns']}", ""))
    width = max(len(line[0]) for line in lines)
    cols = [max(len(labels[0]), *(len(line[1]) for line in lines)),
            max(len(labels[1]), *(len(line[2]) for line in lines))]
    head = f"{'':{width}}  {labels[0]:>{cols[0]}}  {labels[1]:>{cols[1]}}  {'new/base':>8}"
    out = [head, "-" * len(head)]
    out += [f"{m:{width}}  {a:>{cols[0]}}  {b:>{cols[1]}}  {r:>8}" for m, a, b, r in lines]
    return "\n".join(out)


def baseline_config(config: Config) -> Config:
    """Today's turn-taking: a fixed ``vad.end_silence_ms`` of silence, nothing prepared
    during it, no resumed speech."""
    base = copy.deepcopy(config)
    base.turn.endpoint = "silence"
    base.turn.speculate = False
    base.turn.resume_window_ms = 0
    return base.validate()


def _word_asr(config: Config) -> Transcriber:
    from voice_agent.asr import WhisperAsr
    from voice_agent.models import Manifest

    manifest = Manifest.load(config.models.manifest, config.models.directory or None)
    name = config.asr.model
    if manifest.find("asr", name) is not None or name == "default":
        name = str(manifest.resolve("asr", name).path)
    return WhisperAsr(name, config.asr, word_timestamps=True)


async def _run(url: str, items: Sequence[Item], label: str) -> list[dict[str, Any]]:
    rows = []
    for index, item in enumerate(items, 1):
        row = score_item(item, await stream_item(item, url))
        rows.append(row)
        print(f"bench: {label} [{index}/{len(items)}] {item.name}: "
              f"{'CUT OFF ' if row['cut_off'] else ''}statuses {row['statuses']}, "
              f"resumed {row['resumed']}, v2v {row['voice_to_voice_ms']} ms, "
              f"lost {row['lost_words'] or '-'}, asked {row['asked']!r}",
              file=sys.stderr, flush=True)
    return rows


async def run_turns_bench(config: Config, *, quick: bool = False,
                          json_path: str | None = None) -> int:
    """Stream the set under the baseline and the configured turn-taking; print both."""
    audio_dir = shared_audio_dir()
    if audio_dir is None:
        print("voice-agent: bench: no shared/audio beside the checkout", file=sys.stderr)
        return 2
    config.server.port, config.server.host = 0, "127.0.0.1"
    started = time.perf_counter()
    items = build_set(_word_asr(config), audio_dir, quick=quick)
    print(f"bench: {len(items)} items built in {time.perf_counter() - started:.1f} s "
          f"({sum(i.kind == 'paused' for i in items)} with a pause)", file=sys.stderr,
          flush=True)
    labels = (f"fixed {config.vad.end_silence_ms} ms", f"{config.turn.endpoint} (config)")
    runs = {"baseline": baseline_config(config), "new": config}
    results: dict[str, list[dict[str, Any]]] = {}
    engines = load_engines(config)
    try:
        for key, run_config in runs.items():
            async with VoiceServer(engines, run_config) as server:
                url = f"ws://127.0.0.1:{server.port}"
                if not results:  # warm-up (models, KV cache of the prompt), not counted
                    await stream_item(items[0], url)
                results[key] = await _run(url, items, key)
    finally:
        engines.close()
    summaries = {key: summarize(rows) for key, rows in results.items()}
    print(format_table(labels, summaries["baseline"], summaries["new"]))
    for key, summary in summaries.items():
        trouble = {k: summary[k] for k in ("unanswered", "errors", "timed_out", "unended_turns")
                   if summary[k]}
        if trouble:
            print(f"{key}: {json.dumps(trouble)}")
    if json_path:
        Path(json_path).write_text(json.dumps({
            "labels": labels, "quick": quick, "summary": summaries, "items": results,
            "machine": {"python": platform.python_version(), "platform": platform.platform()},
            "config": {key: describe(c) for key, c in runs.items()},
        }, indent=2, ensure_ascii=False))
        print(f"wrote {json_path}", file=sys.stderr)
    failed = any(s["unanswered"] or s["timed_out"] or s["unended_turns"]
                 for s in summaries.values())
    return 1 if failed else 0
