"""The voice of a turn: chunks of the answer synthesized and sent as they come.

The first chunk streams as it is synthesized (it is what the person waits for); later ones
are synthesized whole and spoken only while the reply fits in ``llm.max_reply_s``. Reply text
goes out as each chunk starts being spoken, so what a client shows is what is heard.
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Iterator
from contextlib import aclosing

import numpy as np

from voice_agent.aio import iterate_in_thread
from voice_agent.audio.pcm import Int16Array, StreamResampler
from voice_agent.config import Config
from voice_agent.engines import Engines
from voice_agent.llm.text import ends_sentence
from voice_agent.playback import SpokenSpan
from voice_agent.server.protocol import ReplyText
from voice_agent.turn_state import TurnState

AUDIO_FRAME_MS = 200
"""Reply PCM is sent in binary frames of at most this length."""
SPOKEN_CHARS_PER_S = 16.0
"""How fast a text-only reply will be spoken, for its ``llm.max_reply_s``: the embedded
Piper voice says about 17 characters a second; a client's own voice may be a little slower."""


class Speaker:
    """Speaks turns' answers for one session, at its output rate."""

    def __init__(self, engines: Engines, config: Config, output_rate: int) -> None:
        self._engines = engines
        self._config = config
        self._output_rate = output_rate

    @staticmethod
    async def _show(turn: TurnState, sentence: str) -> None:
        """Send a sentence as reply text as it starts being spoken: the text a client shows
        is exactly what the person hears (nothing held back or cut is ever shown)."""
        delta = f" {sentence}" if turn.reply else sentence
        turn.reply.append(delta)
        await turn.out.event(ReplyText(turn_id=turn.turn_id, delta=delta))

    async def speak(self, turn: TurnState) -> None:
        """Speak the turn's queued chunks until the queue says ``None``."""
        tts, config = self._engines.tts, self._config.tts
        resampler = StreamResampler(tts.sample_rate, self._output_rate)
        frame = max(1, self._output_rate * AUDIO_FRAME_MS // 1000)
        limit = self._config.llm.max_reply_s * tts.sample_rate
        synthesized = 0
        """Samples (at the TTS rate) of the sentences spoken so far."""
        mid_sentence = False
        """The last chunk ended at a clause break (the first chunk may): the rest of that
        sentence is spoken too, or the reply would stop mid-sentence."""
        while (sentence := await turn.sentences.get()) is not None:
            if turn.reply_full:
                continue  # drained, so the model's side never blocks on a full queue
            # The first sentence streams as it is synthesized (it is what the person waits
            # for) and is always spoken; a later one is synthesized whole first, then spoken
            # only if it fits in llm.max_reply_s. The one before it is still playing, so
            # holding it back costs no silence.
            streaming = not turn.reply or mid_sentence
            mid_sentence = not ends_sentence(sentence)
            if not turn.voiced:
                # Text only: the same length limit, on the time the client will take to say
                # it. Kept as spoken in no time, so the conversation remembers the reply.
                synthesized += round(len(sentence) / SPOKEN_CHARS_PER_S * turn.rate_factor
                                     * tts.sample_rate)
                if not streaming and synthesized > limit:
                    turn.reply_full = True
                    continue
                await self._show(turn, sentence)
                turn.spoken.append(SpokenSpan(sentence, turn.audio_samples, turn.audio_samples))
                continue
            held: list[Int16Array] = []
            starts_at = turn.audio_samples
            if streaming:
                await self._show(turn, sentence)
            synth_started = time.perf_counter()
            chunks = iterate_in_thread(
                functools.partial(self._synthesize, sentence, turn.rate_factor),
                self._engines.tts_executor, first_timeout_s=config.timeout_s,
                next_timeout_s=config.timeout_s, what="speech synthesis",
            )
            async with aclosing(chunks):
                async for chunk in chunks:
                    if "tts_first_chunk_ms" not in turn.timings:
                        turn.timings["tts_first_chunk_ms"] = round(
                            (time.perf_counter() - synth_started) * 1000, 1)
                    synthesized += chunk.size
                    if streaming:
                        await self._send_audio(turn, resampler.process(chunk), frame)
                    else:
                        held.append(chunk)
            if not streaming:
                if synthesized > limit:
                    turn.reply_full = True
                    continue
                await self._show(turn, sentence)
                starts_at = turn.audio_samples
                for chunk in held:
                    await self._send_audio(turn, resampler.process(chunk), frame)
            turn.spoken.append(SpokenSpan(sentence, starts_at, turn.audio_samples))
        await self._send_audio(turn, resampler.flush(), frame)

    def _synthesize(
        self, text: str, rate_factor: float, stop: threading.Event
    ) -> Iterator[Int16Array]:
        return self._engines.tts.synthesize(text, stop, rate_factor=rate_factor)

    @staticmethod
    async def _send_audio(turn: TurnState, samples: Int16Array, frame: int) -> None:
        for start in range(0, samples.size, frame):
            piece = np.asarray(samples[start : start + frame], dtype="<i2")
            turn.mark("first_audio_ms")
            turn.audio_samples += piece.size
            await turn.out.audio(piece.tobytes())
