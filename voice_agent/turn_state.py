"""One turn's state, shared by the steps that run it (``voice_agent.turn``) and the speaker
(``voice_agent.speaker``): the sentence queue between the model and the voice, what was
shown and spoken, and the timings."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass, field

from voice_agent.errors import EngineTruncated, VoiceAgentError
from voice_agent.llm.text import SentenceChunker, ends_sentence
from voice_agent.output import TurnOutput
from voice_agent.playback import SpokenSpan
from voice_agent.prompt import may_lead_to_tag, mentions_tag
from voice_agent.speculation import Speculation

log = logging.getLogger(__name__)

SENTENCE_QUEUE = 8
"""Chunks waiting between the model and the voice."""


@dataclass
class TurnState:
    """One turn's state, shared by the steps that run it."""

    turn_id: int
    out: TurnOutput
    started: float = field(default_factory=time.perf_counter)
    timings: dict[str, float] = field(default_factory=dict)
    transcript: str = ""
    dismissed: str = ""
    """Words heard in the last reply's echo tail and judged not the person's: the turn ends
    ``backchannel`` with them, unanswered, and sends no ``transcript``."""
    note: str = ""
    """The emotion tag, sent to the model as a system message right before the words."""
    voiced: bool = True
    """The reply is synthesized and sent as audio; False: text only, for a client that
    speaks it itself (Wyoming's conversation agent), so no time goes to unheard speech."""
    rate_factor: float = 1.0
    """Speaking-rate factor of this reply, from the emotion tag."""
    sentences: asyncio.Queue[str | None] = field(
        default_factory=lambda: asyncio.Queue(SENTENCE_QUEUE))
    """From the LLM to the speaker; None ends it."""
    chunker: SentenceChunker = field(default_factory=SentenceChunker)
    reply: list[str] = field(default_factory=list)
    spoken: list[SpokenSpan] = field(default_factory=list)
    """Each chunk spoken, with where its audio lies in the reply (what was heard of it is
    cut from these)."""
    audio_samples: int = 0
    engine: str = ""
    """The engine whose answer was spoken."""
    fallbacks: dict[str, str] = field(default_factory=dict)
    """Engines that failed this turn, with their error codes."""
    answer_started: bool = False
    """Answer text (not an acknowledgement) was shown or spoken: no engine may restart it."""
    answer_sentences: int = 0
    """Sentences of the answer queued for speech (not acknowledgements or apologies)."""
    answer_at_sentence_end: bool = False
    """The last answer chunk queued ends a sentence (the first may end at a clause break)."""
    reply_full: bool = False
    """``llm.max_reply_s`` reached: nothing more is spoken, and the model is stopped."""
    error: VoiceAgentError | None = None
    speculation: Speculation | None = None
    """Set while the turn runs before it is decided (its output is then held)."""
    held_fragment: str = ""
    """A mid-sentence chunk of a tagged turn, waiting for the rest of its sentence."""

    def restart_reply(self, chunker: SentenceChunker) -> None:
        """Forget a reply that was prepared and thrown away unheard (pre-empted speculation),
        so the turn can answer again from its transcript."""
        self.sentences = asyncio.Queue(SENTENCE_QUEUE)
        self.chunker = chunker
        self.reply, self.spoken = [], []
        self.audio_samples, self.answer_sentences = 0, 0
        self.answer_started = self.answer_at_sentence_end = self.reply_full = False
        self.engine, self.error, self.held_fragment = "", None, ""
        for name in ("llm_first_token_ms", "first_sentence_ms", "tts_first_chunk_ms",
                     "first_audio_ms"):
            self.timings.pop(name, None)

    def mark(self, name: str) -> None:
        self.timings.setdefault(name, round((time.perf_counter() - self.started) * 1000, 1))

    async def queue_sentence(self, sentence: str) -> None:
        self.mark("first_sentence_ms")
        await self.sentences.put(sentence)

    async def queue_answer(self, sentence: str) -> None:
        """A chunk of the model's answer; a sentence that talks about the emotion tag is
        dropped (small models sometimes explain the tag instead of answering). When the model
        was given a tag, or a chunk names a label, a chunk that ends mid-sentence is held and
        judged with the rest of its sentence (a short first chunk would otherwise speak the
        start of tag talk)."""
        sentence = f"{self.held_fragment} {sentence}".strip() if self.held_fragment else sentence
        self.held_fragment = ""
        if not ends_sentence(sentence) and (self.note or may_lead_to_tag(sentence)):
            self.held_fragment = sentence
            return
        if mentions_tag(sentence):
            log.info("turn %d: dropped a sentence about the emotion tag", self.turn_id)
            return
        await self._queue_answer_chunk(sentence)

    async def _queue_answer_chunk(self, sentence: str) -> None:
        self.answer_sentences += 1
        self.answer_at_sentence_end = ends_sentence(sentence)
        await self.queue_sentence(sentence)

    async def queue_rest(self) -> None:
        """Whatever the chunker still holds, as sentences."""
        for sentence in self.chunker.finish():
            await self.queue_answer(sentence)
        await self._queue_held()

    async def queue_complete(self) -> None:
        """After a cut-off answer: what the chunker holds, only if it ends a sentence; and
        the held chunks of a tagged turn, which an untagged turn would already have spoken
        (a model whose first sentence outruns ``llm.max_tokens`` is then heard, as it is
        without a tag, instead of apologising for an answer it gave)."""
        sentences, _dropped = self.chunker.finish_complete()
        for sentence in sentences:
            await self.queue_answer(sentence)
        await self._queue_held()

    async def _queue_held(self) -> None:
        rest, self.held_fragment = self.held_fragment, ""
        if rest and not mentions_tag(rest):  # the answer ended inside that sentence
            await self._queue_answer_chunk(rest)


async def until_truncated(pieces: AsyncIterator[str], seen: list[EngineTruncated]
                           ) -> AsyncGenerator[str, None]:
    """The pieces; a length cut-off at their end is put in ``seen`` instead of raised, so the
    turn can judge it against what it has already spoken."""
    try:
        async for piece in pieces:
            yield piece
    except EngineTruncated as exc:
        seen.append(exc)
