"""How often a reply talks about the emotion tag instead of answering, on the bench clips.

Every bench clip (``fixtures/`` plus ``../shared/audio/speech``) goes through a real turn
(Whisper, the emotion tag, the configured LLM with its prompt, Piper) at a few seeds, each
clip as the first turn of a fresh conversation. Two texts are checked per turn:

- ``raw``: what the model wrote (recorded between the real engine and the turn);
- ``spoken``: ``turn_done.reply_text``, what the person heard.

A reply counts when it holds any of the tag's words: ``valence``, ``arousal``,
``confidence``, ``speaker``, ``tag``, ``label``, ``neutral`` (a label name that an answer to
these sentences has no other reason to use), a ``tone:`` or ``[`` of the note itself. This is
broader than the turn's own filter (:func:`voice_agent.prompt.mentions_tag`) on purpose.
This is how the tag's prompt format was chosen (see ``voice_agent/prompt.py``). Usage::

    .venv/bin/python benchmarks/tag_mentions.py [--seeds 1234 99] [--clips N] [--json OUT]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys
import threading
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import replace
from typing import Any

from voice_agent.audio.pcm import read_audio
from voice_agent.bench import default_clips
from voice_agent.config import load_config
from voice_agent.engines import load_engines
from voice_agent.llm.base import ChatMessage, LlmEngine
from voice_agent.llm.chain import LlmChain
from voice_agent.server.protocol import ServerEvent
from voice_agent.turn import TurnRunner

TAG_WORDS = re.compile(
    r"valence|arousal|confidence|speaker|\btags?\b|\blabel|\bneutral\b|\btone:|\[",
    re.IGNORECASE)


class Recording:
    """The real engine, with what it wrote kept for counting."""

    def __init__(self, engine: LlmEngine) -> None:
        self.engine = engine
        self.name = engine.name
        self.text: list[str] = []
        self.note = ""

    @property
    def opens_reasoning(self) -> bool | None:
        return self.engine.opens_reasoning

    def stream(self, messages: Sequence[ChatMessage], cancel: threading.Event) -> Iterator[str]:
        asked = list(messages)
        self.note = asked[-2].content if len(asked) > 1 and asked[-2].role == "system" else ""
        for piece in self.engine.stream(messages, cancel):
            self.text.append(piece)
            yield piece


class Discard:
    async def event(self, event: ServerEvent) -> None:
        pass

    async def audio(self, pcm: bytes) -> None:
        pass


def terms(text: str) -> list[str]:
    return sorted({m.group().lower() for m in TAG_WORDS.finditer(text)})


async def run_seed(seed: int, limit: int) -> list[dict[str, Any]]:
    config = load_config(env={}, overrides={"llm": {"seed": seed}})
    engines = load_engines(config)
    rows = []
    try:
        recording = Recording(engines.llm.primary)
        chain = LlmChain([recording], config.llm)
        engines = replace(engines, llm=chain)
        clips = default_clips()
        for clip in clips[:limit] if limit else clips:
            audio = read_audio(clip.path)[0]
            recording.text, recording.note = [], ""
            runner = TurnRunner(engines, config, output_rate=16000)
            done = await runner.run(1, audio, 0, Discard())
            raw = "".join(recording.text)
            row = {"seed": seed, "clip": clip.path.name, "transcript": done.transcript,
                   "note": recording.note,
                   "raw": raw, "spoken": done.reply_text, "status": done.status,
                   "raw_terms": terms(raw), "spoken_terms": terms(done.reply_text),
                   "audio_s": round(done.audio_samples / 16000, 2)}
            rows.append(row)
            print(f"[{seed}] {clip.path.name}: {row['raw_terms'] or '-'} / "
                  f"{row['spoken_terms'] or '-'}  {done.reply_text[:90]!r}", file=sys.stderr)
    finally:
        engines.close()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1234, 99])
    parser.add_argument("--clips", type=int, default=0, help="only the first N clips")
    parser.add_argument("--json", help="write every reply here")
    args = parser.parse_args()
    rows: list[dict[str, Any]] = []
    for seed in args.seeds:
        rows += asyncio.run(run_seed(seed, args.clips))
    raw = sum(bool(r["raw_terms"]) for r in rows)
    spoken = sum(bool(r["spoken_terms"]) for r in rows)
    counts = Counter(t for r in rows for t in r["raw_terms"])
    audio = sorted(r["audio_s"] for r in rows)
    print(f"replies {len(rows)} (seeds {args.seeds}): the model wrote about the tag in {raw}, "
          f"the person heard it in {spoken}; raw terms {dict(counts)}; "
          f"spoken audio median {audio[len(audio) // 2]:.1f} s, max {audio[-1]:.1f} s")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(rows, handle, indent=1)


if __name__ == "__main__":
    main()
