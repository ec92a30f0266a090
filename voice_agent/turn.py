"""One turn: utterance → ASR → LLM (streamed, reasoning removed, cut into chunks) → TTS.

The LLM and TTS overlap: chunks go through a bounded queue (``voice_agent.turn_state``), so
the first is being spoken (``voice_agent.speaker``) while the model writes the next. A turn
may start before it is decided (``voice_agent.speculation``): its output is then held until
it commits. Every turn ends in exactly one :class:`TurnDone` (ok, empty, cancelled or error),
whatever happens inside.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from contextlib import aclosing

import numpy as np

from voice_agent.aio import call_in_thread, wait_within
from voice_agent.asr import Transcript
from voice_agent.audio.pcm import Int16Array
from voice_agent.audio.turn_end import combined_probability, text_complete_probability
from voice_agent.barge_in import BurstJudge, BurstWords
from voice_agent.config import Config
from voice_agent.emotion import EmotionTag, EmotionTracker, analyze, reply_length_scale
from voice_agent.engines import Engines
from voice_agent.errors import EngineError, EngineTruncated, Preempted, VoiceAgentError
from voice_agent.llm.base import ChatMessage, LlmEngine
from voice_agent.llm.conversation import Conversation
from voice_agent.llm.scheduler import Priority
from voice_agent.llm.text import ReasoningFilter, SentenceChunker, SpanFilter
from voice_agent.output import ReplyPlayback, TurnOutput
from voice_agent.playback import heard_text
from voice_agent.prompt import ECHO_INSIDE, ECHO_MARKERS, system_prompt, tag_note
from voice_agent.server.protocol import (
    EmotionEvent,
    ErrorEvent,
    ReasoningText,
    TranscriptEvent,
    TurnDone,
)
from voice_agent.speaker import Speaker
from voice_agent.speculation import Speculation
from voice_agent.turn_state import TurnState, until_truncated

__all__ = ["TurnOutput", "TurnRunner"]

log = logging.getLogger(__name__)
TRUSTED_BURST_NO_SPEECH = 0.5
"""A burst over the reply is words only below this no-speech probability. Measured
through the server and ``--mic`` in simulated rooms: what Whisper made of the echo's
leftovers and then took for a person ("No, no, no.", "Yes, Mr.", "Let's go.", "Have a good
time.") scored 0.48-0.61; a person's sentence over the reply 0.05-0.47 but for one, 0.58,
whose next words then stopped it (0.45 was tried: it lost people at 0.46 and 0.47)."""
TRUSTED_BURST_LOG_PROBABILITY = -1.5
"""A long burst's words are made up below this mean token log probability, whatever
Whisper's no-speech belief ("I'm going to go." out of the echo: -1.75 at 0.42; a person
mangled by the canceller's suppressor: -0.4 to -1.2)."""

FIRST_CHUNK_WAIT_S = 0.5
"""A model still short of a first chunk this long after its answer began (a slow engine,
R1 over HTTP) has the words it wrote so far spoken as the first chunk."""


class TurnRunner:
    """Runs turns for one session against the shared engines."""

    def __init__(
        self, engines: Engines, config: Config, output_rate: int, *, send_reasoning: bool = False
    ) -> None:
        self._engines = engines
        self._config = config
        self._speaker = Speaker(engines, config, output_rate)
        self._send_reasoning = send_reasoning
        self.conversation = Conversation(system_prompt(config), config.llm.history_turns)
        self._instructions = config.llm.system_prompt
        self.emotion = EmotionTracker()
        """This speaker's baseline (loudness, pitch, rate), learned over the session."""
        self._unanswered = ""
        """What the person said in turns their own speech cancelled before any of the reply
        went out: it leads the next turn's transcript, so no word is lost to the model
        (an utterance cut at ``vad.max_utterance_s`` while they go on talking, a decision
        the resume window could not undo)."""
        self._last_heard = ""
        """What was played of the last reply: speech begun in its echo tail is checked
        against it (``barge_in.echo_tail_ms``)."""
        self._burst_judge = BurstJudge.configured(config.barge_in)

    @property
    def instructions(self) -> str:
        """This session's system prompt, as configured (before any emotion-tag rules)."""
        return self._instructions

    @instructions.setter
    def instructions(self, text: str) -> None:
        self._instructions = text
        config = dataclasses.replace(self._config,
                                     llm=dataclasses.replace(self._config.llm, system_prompt=text))
        self.conversation.system_prompt = system_prompt(config)

    async def run(
        self, turn_id: int, audio: Int16Array, endpoint_wait_ms: float, out: TurnOutput,
        *, speculation: Speculation | None = None, playback: ReplyPlayback | None = None,
        text: str = "", after_reply: bool = False, voiced: bool = True,
    ) -> TurnDone:
        """Run the turn; returns its terminal event (also when cancelled or failed).

        With ``speculation`` the turn starts before it is decided: its output goes to the
        speculation's held output, and the run ends only once the turn is committed (it is
        cancelled if it never is). With ``playback`` the run ends once the reply has been
        played, and the conversation keeps only what was (cut at the last word played when
        the turn is cancelled midway: a barge-in). ``text``: a typed turn, answered without
        ASR (``audio`` is not listened to). ``after_reply``: the utterance began in the echo
        tail of the last reply; it ends ``backchannel``, unanswered, unless its words are the
        person's (:meth:`BurstJudge.is_turn_after_reply`). ``voiced=False``: the reply is
        sent as text only (:attr:`TurnState.voiced`)."""
        turn = TurnState(turn_id, speculation.out if speculation else out, speculation=speculation,
                         chunker=self._chunker(), voiced=voiced)
        turn.timings["endpoint_wait_ms"] = float(endpoint_wait_ms)
        status = "ok"
        try:
            if text:
                await self._run_text(turn, text)
            else:
                await self._run(turn, audio, after_reply=after_reply)
            if speculation is not None:
                await speculation.decided()
                if speculation.endpoint_wait_ms is not None:  # it started before the decision
                    turn.timings["speculated_ms"] = round(
                        speculation.endpoint_wait_ms - endpoint_wait_ms, 1)
                    turn.timings["endpoint_wait_ms"] = float(speculation.endpoint_wait_ms)
                await speculation.out.settled()
            if playback is not None:
                await playback.finished()
            if turn.dismissed:
                status = "backchannel"
            elif not turn.transcript:
                status = "empty"
            elif turn.error is not None:
                status = "error"
        except asyncio.CancelledError:
            status = "cancelled"
        except Exception as exc:
            # A bug must not cost the user the turn's terminal event either.
            error = exc if isinstance(exc, VoiceAgentError) else VoiceAgentError(repr(exc))
            status = "error"
            if isinstance(exc, VoiceAgentError):
                log.warning("turn %d failed: %s (%s)", turn_id, error.code, exc)
            else:
                log.exception("turn %d failed unexpectedly", turn_id)
            try:
                await out.event(ErrorEvent(code=error.code, message=str(error),
                                           transient=error.transient, turn_id=turn_id))
            except Exception as send_exc:  # the output itself failed: the turn ends anyway
                log.debug("turn %d: could not report its error: %r", turn_id, send_exc)
        abandoned = speculation is not None and speculation.abandoned
        played = turn.audio_samples if playback is None else playback.played_samples()
        heard = heard_text(turn.spoken, played)
        if played:
            self._last_heard = heard
        if turn.transcript and not abandoned:  # an abandoned run leaves the carry-over be
            if status == "cancelled" and not played:
                self._unanswered = turn.transcript  # never heard: carried into the next turn
            else:
                self._unanswered = ""  # the model was asked about it
                if turn.answer_started:
                    self.conversation.add(turn.transcript, heard, note=turn.note)
        turn.mark("total_ms")
        return TurnDone(
            turn_id=turn_id,
            status=status,
            transcript=turn.transcript or turn.dismissed,
            reply_text="".join(turn.reply).strip(),
            engine=turn.engine,
            audio_samples=turn.audio_samples,
            timings_ms=turn.timings,
            fallbacks=turn.fallbacks,
            heard_text=heard,
        )

    async def _run(self, turn: TurnState, audio: Int16Array, *, after_reply: bool) -> None:
        transcript = await self._transcribe(turn, audio)
        turn.mark("asr_ms")
        if turn.speculation is not None:
            turn.speculation.heard(transcript.text)
        if not any(ch.isalnum() for ch in transcript.text):
            transcript = Transcript("", transcript.language)
        if after_reply and transcript.text and not self._persons_after_reply(transcript):
            log.debug("turn %d: %r in the last reply's echo tail: not answered", turn.turn_id,
                      transcript.text)
            turn.dismissed = transcript.text
            return
        await self._heard(turn, transcript.text)
        if not transcript.text:
            turn.transcript = ""  # nothing new: what was carried still waits for its answer
            return
        turn.note = await self._hear_emotion(turn, audio, transcript)
        speculation = turn.speculation
        if speculation is None:
            await self._respond(turn)
            return
        before_reply = speculation.out.mark()
        try:
            await self._respond(turn)
        except Preempted:
            # A committed turn took the model: drop what was prepared, unheard, and answer
            # again once this turn is decided (the transcript and emotion tag still hold).
            if speculation.abandoned:
                raise asyncio.CancelledError from None
            speculation.out.rollback(before_reply)
            speculation.preempted_runs += 1
            turn.restart_reply(self._chunker())
            await speculation.decided()
            speculation.preempted = False
            await speculation.out.release()
            await self._respond(turn)

    async def _heard(self, turn: TurnState, words: str) -> None:
        """The turn's transcript, the words of a turn never answered first, sent as the
        ``transcript`` event. The carried words are read, not taken: a speculation thrown
        away must leave them for the next run."""
        turn.transcript = f"{self._unanswered} {words}".strip()
        await turn.out.event(TranscriptEvent(turn_id=turn.turn_id, text=turn.transcript,
                                             asr_ms=turn.timings["asr_ms"]))

    def _persons_after_reply(self, transcript: Transcript) -> bool:
        """Whether words heard as the last reply ended are the person's, not its echo."""
        return not transcript.doubtful and self._burst_judge.is_turn_after_reply(
            transcript.text, self._last_heard)

    async def _run_text(self, turn: TurnState, text: str) -> None:
        """A typed turn: its words are the transcript (sent back like one); its emotion
        tag comes from the words alone."""
        turn.timings["asr_ms"] = 0.0
        await self._heard(turn, text.strip())
        if not turn.transcript:
            return
        turn.note = await self._hear_emotion(turn, np.zeros(0, np.int16),
                                             Transcript(turn.transcript, ""))
        await self._respond(turn)

    def _chunker(self) -> SentenceChunker:
        tts = self._config.tts
        return SentenceChunker(first_chunk_min_words=tts.first_chunk_min_words,
                               first_chunk_max_words=tts.first_chunk_max_words)

    async def _transcribe(self, turn: TurnState, audio: Int16Array) -> Transcript:
        """The utterance's transcript. A turn cancelled while it is being made (the person
        went on talking) still waits for it, so its words can lead the next turn."""
        work = asyncio.ensure_future(self._recognize(audio))
        try:
            return await asyncio.shield(work)
        except asyncio.CancelledError:
            speculation = turn.speculation
            if speculation is not None and speculation.abandoned:
                # Its audio joins the next utterance: Whisper on it is wasted, and left
                # queued it would hold up every later transcript in the one ASR thread.
                work.cancel()
                raise
            with contextlib.suppress(Exception):
                heard = (await work).text
                if any(ch.isalnum() for ch in heard):
                    self._unanswered = f"{self._unanswered} {heard}".strip()
            raise

    async def _recognize(self, audio: Int16Array) -> Transcript:
        """Whisper on ``audio``, in the ASR thread, within ``asr.timeout_s``."""
        return await self._engines.recognize(audio, timeout_s=self._config.asr.timeout_s)

    async def partial_transcript(self, audio: Int16Array) -> str:
        """What is heard so far in an open utterance (``transcript_partial``)."""
        return (await self._recognize(audio)).text

    async def hear_burst(self, audio: Int16Array, *, trust: bool = False) -> BurstWords:
        """The words of a burst of sound over the reply; none when Whisper itself doubts there
        were any (it makes words up from a cough or from what is left of the echo). A long
        burst (``trust``) keeps words of a lowish log probability (a person the canceller's
        suppressor mangles), but not words Whisper thinks are no speech at all, nor words of
        a very low one; a short one has words of a low log probability as ``doubted``."""
        transcript = await self._recognize(audio)
        log.debug("burst: %r (no speech %.2f, log probability %.2f)", transcript.text,
                  transcript.no_speech_probability, transcript.log_probability)
        no_speech = transcript.no_speech_probability > TRUSTED_BURST_NO_SPEECH
        if trust:
            made_up = no_speech or transcript.log_probability < TRUSTED_BURST_LOG_PROBABILITY
            return BurstWords("" if made_up else transcript.text)
        if not (no_speech or transcript.doubtful):
            return BurstWords(transcript.text)
        return BurstWords("", doubted="" if no_speech else transcript.text)

    async def judge_turn_end(self, audio: Int16Array,
                             speculation: Speculation | None = None) -> float:
        """How likely the person has finished (``turn.endpoint = "smart"``): the end-of-turn
        model on the sound, and, when the pause's speculative transcript comes in time, the
        words' veto (``voice_agent.audio.turn_end.combined_probability``)."""
        model = self._engines.turn_end
        if model is None:
            return 0.0
        timeout_s = self._config.asr.timeout_s
        sound = await call_in_thread(lambda: model.complete_probability(audio),
                                     self._engines.turn_end_executor, timeout_s=timeout_s,
                                     what="end-of-turn model")
        if speculation is None:
            return sound
        try:
            words = await wait_within(asyncio.shield(speculation.transcript), timeout_s)
        except TimeoutError:
            return sound
        return combined_probability(sound, text_complete_probability(words))

    async def _respond(self, turn: TurnState) -> None:
        """The model's answer, spoken as it is written."""
        speaker = asyncio.create_task(self._speaker.speak(turn))
        try:
            await self._think(turn)
            await turn.sentences.put(None)
            await speaker
        finally:
            # Cancel until it has ended: Python 3.11's wait_for (inside iterate_in_thread)
            # can swallow a cancel that races an item, and the speaker would then wait on
            # the sentence queue forever (a turn that never ends).
            while not speaker.done():
                speaker.cancel()
                await asyncio.wait({speaker}, timeout=0.1)
            if not speaker.cancelled():
                speaker.exception()  # retrieved: a client gone is not "never retrieved"

    async def _hear_emotion(self, turn: TurnState, audio: Int16Array, transcript: Transcript
                            ) -> str:
        """Tag how the person sounds, tell the client, and return the note for the LLM
        ("" for none). A failure here costs the turn its tag, never its answer."""
        config = self._config.emotion
        if not config.enabled:
            return ""
        started = time.perf_counter()
        try:
            # Pure numpy, about 10 ms for 5 s of speech: off the loop, no model to wait on.
            # Typed words (no audio) say nothing of the voice: kept out of its baseline.
            tag: EmotionTag = await asyncio.to_thread(
                analyze, audio, transcript.text, language=transcript.language,
                words=transcript.words, tracker=self.emotion if audio.size else None)
        except Exception:
            log.exception("turn %d: emotion analysis failed", turn.turn_id)
            return ""
        turn.timings["emotion_ms"] = round((time.perf_counter() - started) * 1000, 1)
        if config.shape_speech:
            # Rounded as the wire reports it, so the rate told is the rate spoken.
            turn.rate_factor = round(reply_length_scale(tag), 3)
        fields = tag.as_dict()  # rounded for the wire
        measured = fields.pop("prosody")
        await turn.out.event(EmotionEvent(turn_id=turn.turn_id, cues=measured, **fields,
                                          length_scale=turn.rate_factor))
        return tag_note(tag) if config.tag_prompt else ""

    async def _think(self, turn: TurnState) -> None:
        """Answer with the first engine of the chain that can; see ``llm.chain``. The
        emotion note (``turn.note``) goes right before the transcript."""
        chain = self._engines.llm
        messages = self.conversation.messages(turn.transcript, turn.note)
        for engine in chain.candidates():
            try:
                try:
                    await self._answer_with(engine, messages, turn)
                except EngineError as exc:
                    if exc.code != "llm_empty" or not turn.note:
                        raise
                    # A small model may answer a tagged turn with nothing but a copy of the
                    # tag (about 2% of turns with the embedded one): ask once more without it.
                    log.info("turn %d: %s answered nothing; asking without the emotion tag",
                             turn.turn_id, engine.name)
                    untagged = self.conversation.messages(turn.transcript)
                    await self._answer_with(engine, untagged, turn)
            except Preempted:
                raise  # not the engine's failure: the turn answers again once committed
            except Exception as exc:
                error = exc if isinstance(exc, VoiceAgentError) else EngineError(repr(exc))
                chain.record(engine, success=False, error=error)
                turn.fallbacks[engine.name] = error.code
                log.warning("turn %d: %s failed (%s: %s)", turn.turn_id, engine.name,
                            error.code, exc)
                if turn.answer_started:
                    # Part of this answer was already shown and spoken: another engine would
                    # start it again. End it with an apology instead.
                    turn.engine, turn.error = engine.name, error
                    await self._apologize(turn, error)
                    return
                turn.error = error
                continue
            chain.record(engine, success=True)
            turn.engine, turn.error = engine.name, None
            await turn.queue_rest()
            return
        assert turn.error is not None  # noqa: S101 - the loop ran and every engine failed
        await self._apologize(turn, turn.error)

    async def _answer_with(
        self, engine: LlmEngine, messages: list[ChatMessage], turn: TurnState
    ) -> None:
        config = self._config.llm
        reasoning = ReasoningFilter(starts_in_reasoning=engine.opens_reasoning)
        echo = SpanFilter(ECHO_MARKERS, inside=ECHO_INSIDE)
        started = time.perf_counter()
        reasoning_pieces = answer_pieces = 0
        answer_began = 0.0
        acknowledged = cut = False
        # Through the engine's queue: llm_queue_ms, then llm_first_token_ms from its start.
        speculation = turn.speculation
        if speculation is not None and speculation.speculative:
            speculation.llm_runs += 1
            tokens = self._engines.llm.stream(engine, messages, timings=turn.timings,
                                              priority=Priority.SPECULATIVE,
                                              speculation=speculation)
        else:
            tokens = self._engines.llm.stream(engine, messages, timings=turn.timings)
        truncated: list[EngineTruncated] = []
        async with aclosing(tokens), aclosing(until_truncated(tokens, truncated)) as pieces:
            async for piece in pieces:
                filtered = reasoning.feed(piece)
                if filtered.reasoning:
                    reasoning_pieces += 1
                    if self._send_reasoning:
                        await turn.out.event(ReasoningText(turn_id=turn.turn_id,
                                                           delta=filtered.reasoning))
                if not filtered.speech and not turn.answer_started:
                    thinking_s = time.perf_counter() - started
                    if (not acknowledged and reasoning_pieces and config.reasoning_ack_s
                            and thinking_s >= config.reasoning_ack_s):
                        acknowledged = True
                        await self._say(turn, config.reasoning_ack_text)
                    if (thinking_s > config.reasoning_budget_s
                            or reasoning_pieces > config.reasoning_budget_tokens):
                        raise EngineError(
                            f"{engine.name} reasoned {thinking_s:.1f} s ({reasoning_pieces} "
                            "pieces) without an answer", code="reasoning_budget")
                await self._speakable(turn, echo.feed(filtered.speech))
                if filtered.speech:
                    answer_pieces += 1
                    answer_began = answer_began or time.perf_counter()
                if (answer_began and turn.chunker.first_pending
                        and time.perf_counter() - answer_began >= FIRST_CHUNK_WAIT_S):
                    for sentence in turn.chunker.force_first():  # a slow model
                        await turn.queue_answer(sentence)
                if (turn.reply_full or answer_pieces >= config.max_tokens
                        or self._others_waiting(engine, turn)):
                    cut = True  # leaving the loop closes the stream: the engine stops
                    break
        if truncated:
            if reasoning.in_reasoning:
                # Cut mid-thought, or before the stream showed whether it was thinking:
                # none of it is an answer (an R1 whose template opened <think> would
                # otherwise have its reasoning spoken word for word).
                raise truncated[0]
            cut = True
        if cut:
            await turn.queue_complete()
            if not turn.answer_sentences:
                turn.answer_started = False  # nothing was shown or spoken: another may answer
                raise EngineTruncated(f"{engine.name} was cut off before its first sentence "
                                      "ended")
            return
        await self._speakable(turn, echo.feed(reasoning.finish().speech) + echo.finish())
        await turn.queue_rest()
        if not turn.answer_sentences:
            turn.answer_started = False
            raise EngineError(f"{engine.name} gave no answer", code="llm_empty")

    def _others_waiting(self, engine: LlmEngine, turn: TurnState) -> bool:
        """Whether to end the answer here because other turns wait for the engine
        (``llm.brief_when_busy``): only once a whole sentence has been queued."""
        return (self._config.llm.brief_when_busy and turn.answer_at_sentence_end
                and self._engines.llm.waiting(engine) > 0)

    @staticmethod
    async def _say(turn: TurnState, text: str) -> None:
        """Speak a fixed sentence (acknowledgement, apology) as part of the reply."""
        await turn.queue_sentence(text)

    async def _apologize(self, turn: TurnState, error: VoiceAgentError) -> None:
        await turn.out.event(ErrorEvent(code=error.code, message=str(error),
                                        transient=error.transient, turn_id=turn.turn_id))
        # What was shown is also spoken, so text and audio tell the same story.
        await turn.queue_rest()
        await self._say(turn, self._config.llm.apology_text)

    @staticmethod
    async def _speakable(turn: TurnState, text: str) -> None:
        if not turn.answer_started:
            text = text.lstrip()
        if not text:
            return
        turn.answer_started = True
        for sentence in turn.chunker.feed(text):
            await turn.queue_answer(sentence)
