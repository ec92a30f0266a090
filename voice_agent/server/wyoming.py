"""A Wyoming server (``voice-agent serve --wyoming tcp://HOST:PORT``): Home Assistant uses the
appliance as its speech-to-text, text-to-speech and conversation agent.

Over the ``wyoming`` package's own event framing:

- ``describe`` -> ``info``: an ASR program (Whisper, transcript streaming), a TTS program
  (the Piper voice) and a handle program (the conversation agent).
- ``transcribe`` + ``audio-start`` / ``audio-chunk`` / ``audio-stop`` -> ``transcript-start``,
  ``transcript-chunk``, ``transcript-stop`` and ``transcript`` (any rate, width 2, the first
  channel; resampled to 16 kHz for Whisper).
- ``synthesize`` -> ``audio-start``, ``audio-chunk``…, ``audio-stop`` (16-bit mono at the
  voice's rate).
- ``transcript`` (text in, as Home Assistant sends it to a conversation agent) -> ``handled``
  with the answer; the conversation goes on for as long as the connection does.

Every request takes one of the appliance's session slots while it runs (``error`` with code
``overloaded`` when they are all taken), audio is bounded (``wyoming.max_audio_s``), and a
mistake gets an ``error`` event while the connection goes on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading

import numpy as np
from wyoming.asr import Transcribe, Transcript, TranscriptChunk, TranscriptStart, TranscriptStop
from wyoming.audio import AudioChunk, AudioStart, AudioStop
from wyoming.error import Error
from wyoming.event import Event, async_read_event, async_write_event
from wyoming.handle import Handled
from wyoming.info import (
    AsrModel,
    AsrProgram,
    Attribution,
    Describe,
    HandleModel,
    HandleProgram,
    Info,
    TtsProgram,
    TtsVoice,
)
from wyoming.tts import Synthesize

from voice_agent import __version__
from voice_agent.aio import call_in_thread, wait_within
from voice_agent.appliance import Appliance
from voice_agent.audio.pcm import PIPELINE_RATE, Int16Array, resample
from voice_agent.errors import Overloaded, ProtocolError, VoiceAgentError
from voice_agent.server.protocol import ReplyText, ServerEvent
from voice_agent.turn import TurnRunner

log = logging.getLogger(__name__)

ATTRIBUTION = Attribution(name="voice-agent", url="")
LANGUAGES = ["en"]


class _Collected:
    """A turn's output for the conversation agent: its reply text (the turn makes no audio)."""

    def __init__(self) -> None:
        self.text: list[str] = []

    async def event(self, event: ServerEvent) -> None:
        if isinstance(event, ReplyText):
            self.text.append(event.delta)

    async def audio(self, pcm: bytes) -> None:
        return None


class WyomingConnection:
    """One Home Assistant (or other Wyoming) client."""

    def __init__(self, appliance: Appliance, reader: asyncio.StreamReader,
                 writer: asyncio.StreamWriter) -> None:
        self._appliance = appliance
        self._reader, self._writer = reader, writer
        self._config = appliance.config.wyoming
        self._transcribing = False
        self._format: tuple[int, int, int] | None = None
        self._audio: list[Int16Array] = []
        self._samples = 0
        self._runner: TurnRunner | None = None
        self._turns = 0

    async def serve(self) -> None:
        try:
            while True:
                event = await async_read_event(self._reader)
                if event is None:
                    return
                try:
                    await self._handle(event)
                except VoiceAgentError as exc:
                    await self._write(Error(text=str(exc), code=exc.code).event())
        except (ConnectionError, asyncio.IncompleteReadError):
            return
        finally:
            self._writer.close()
            with contextlib.suppress(Exception):
                await self._writer.wait_closed()

    async def _write(self, event: Event) -> None:
        await wait_within(async_write_event(event, self._writer),
                          self._appliance.config.server.send_timeout_s)

    async def _handle(self, event: Event) -> None:
        if Describe.is_type(event.type):
            await self._write(self.info().event())
        elif Transcribe.is_type(event.type):
            self._transcribing, self._audio, self._samples = True, [], 0
        elif AudioStart.is_type(event.type):
            start = AudioStart.from_event(event)
            self._format = (start.rate, start.width, start.channels)
            self._audio, self._samples = [], 0
        elif AudioChunk.is_type(event.type):
            self._add(AudioChunk.from_event(event))
        elif AudioStop.is_type(event.type):
            if self._transcribing:
                self._transcribing = False
                await self._transcribe()
        elif Synthesize.is_type(event.type):
            await self._synthesize(Synthesize.from_event(event).text)
        elif Transcript.is_type(event.type):
            await self._answer(Transcript.from_event(event).text)
        else:
            raise ProtocolError(f"unsupported event {event.type!r}", code="unknown_type")

    def info(self) -> Info:
        config = self._appliance.config
        return Info(
            asr=[AsrProgram(
                name="voice-agent-asr", description="Whisper (faster-whisper), on the device",
                attribution=ATTRIBUTION, installed=True, version=__version__,
                models=[AsrModel(name=config.asr.model, description=config.asr.model,
                                 attribution=ATTRIBUTION, installed=True, version=None,
                                 languages=LANGUAGES)],
                supports_transcript_streaming=True)],
            tts=[TtsProgram(
                name="voice-agent-tts", description="Piper, on the device",
                attribution=ATTRIBUTION, installed=True, version=__version__,
                voices=[TtsVoice(name=config.tts.voice, description=config.tts.voice,
                                 attribution=ATTRIBUTION, installed=True, version=None,
                                 languages=LANGUAGES)])],
            handle=[HandleProgram(
                name="voice-agent", description="The appliance's conversation agent",
                attribution=ATTRIBUTION, installed=True, version=__version__,
                models=[HandleModel(name="voice-agent", description="local LLM chain",
                                    attribution=ATTRIBUTION, installed=True, version=None,
                                    languages=LANGUAGES)])])

    # --- speech to text ---------------------------------------------------------------

    def _add(self, chunk: AudioChunk) -> None:
        if chunk.width != 2 or chunk.channels < 1:
            raise ProtocolError("audio must be 16-bit PCM", code="bad_audio")
        if len(chunk.audio) % (2 * chunk.channels):
            raise ProtocolError("audio chunk is not whole frames", code="bad_audio")
        samples = np.frombuffer(chunk.audio, dtype="<i2").reshape(-1, chunk.channels)[:, 0]
        if self._samples + samples.size > self._config.max_audio_s * chunk.rate:
            raise ProtocolError(f"audio over {self._config.max_audio_s:g} s",
                                code="audio_too_long")
        self._audio.append(resample(samples.astype(np.int16), chunk.rate, PIPELINE_RATE))
        self._samples += samples.size

    async def _transcribe(self) -> None:
        audio = np.concatenate(self._audio) if self._audio else np.zeros(0, np.int16)
        self._audio, self._samples = [], 0
        async with self._slot():
            # As Home Assistant sends it: its pipeline does its own noise suppression and
            # gain (``prefers_*`` in ``info``), and there is no echo to cancel.
            transcript = await self._appliance.engines.recognize(
                audio, timeout_s=self._appliance.config.asr.timeout_s)
        text = transcript.text.strip()
        language = transcript.language or None
        await self._write(TranscriptStart(language=language).event())
        if text:
            await self._write(TranscriptChunk(text=text).event())
        await self._write(TranscriptStop().event())
        await self._write(Transcript(text=text, language=language).event())

    # --- text to speech ---------------------------------------------------------------

    async def _synthesize(self, text: str) -> None:
        if not text.strip():
            raise ProtocolError("nothing to say", code="bad_field")
        tts = self._appliance.engines.tts
        cancel = threading.Event()
        async with self._slot():
            try:
                chunks = await call_in_thread(
                    lambda: list(tts.synthesize(text, cancel)),
                    self._appliance.engines.tts_executor,
                    timeout_s=self._config.synthesize_timeout_s, what="speech synthesis")
            finally:
                cancel.set()
        rate = tts.sample_rate
        await self._write(AudioStart(rate=rate, width=2, channels=1).event())
        audio = np.concatenate(chunks) if chunks else np.zeros(0, np.int16)
        step = rate // 10  # 100 ms a chunk
        for start in range(0, audio.size, step):
            piece = audio[start:start + step].astype("<i2").tobytes()
            await self._write(AudioChunk(rate=rate, width=2, channels=1, audio=piece).event())
        await self._write(AudioStop().event())

    # --- conversation -----------------------------------------------------------------

    async def _answer(self, text: str) -> None:
        if not text.strip():
            raise ProtocolError("nothing was said", code="bad_field")
        if self._runner is None:
            self._runner = TurnRunner(self._appliance.engines, self._appliance.config,
                                      PIPELINE_RATE)
        self._turns += 1
        collected = _Collected()
        async with self._slot():
            # Home Assistant speaks the answer with its own TTS pipeline: text only.
            done = await self._runner.run(self._turns, np.zeros(0, np.int16), 0, collected,
                                          text=text, voiced=False)
        if done.status != "ok":
            raise VoiceAgentError(f"the turn ended {done.status}", code="llm_failed")
        await self._write(Handled(text="".join(collected.text).strip()).event())

    @contextlib.asynccontextmanager
    async def _slot(self):  # type: ignore[no-untyped-def]
        slots = self._appliance.sessions
        if not slots.claim():
            raise Overloaded("too many sessions; try again later")
        try:
            yield
        finally:
            slots.release()


class WyomingServer:
    """The TCP listener; ``await start()``, then ``await stop()`` (or ``async with``)."""

    def __init__(self, appliance: Appliance, host: str, port: int) -> None:
        self._appliance = appliance
        self._host, self._port = host, port
        self._server: asyncio.Server | None = None
        self._clients: set[asyncio.Task[None]] = set()

    @property
    def port(self) -> int:
        assert self._server is not None  # noqa: S101 - only valid after start()
        return int(self._server.sockets[0].getsockname()[1])

    async def start(self) -> WyomingServer:
        self._server = await asyncio.start_server(self._connected, self._host, self._port)
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            for task in list(self._clients):
                task.cancel()
            await asyncio.gather(*self._clients, return_exceptions=True)
            await self._server.wait_closed()

    async def __aenter__(self) -> WyomingServer:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def _connected(self, reader: asyncio.StreamReader,
                         writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        allowed = self._appliance.config.wyoming.allow_from
        if allowed and (not peer or peer[0] not in allowed):
            log.warning("wyoming: refused a client not in wyoming.allow_from")
            writer.close()
            return
        task = asyncio.current_task()
        assert task is not None  # noqa: S101 - a connection callback runs in a task
        self._clients.add(task)
        try:
            await WyomingConnection(self._appliance, reader, writer).serve()
        finally:
            self._clients.discard(task)
