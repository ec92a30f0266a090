"""``voice-agent client``: stream an audio file to an appliance like a person talking.

The file is sent in real time (20 ms frames), followed by trailing silence and ``end``; the
reply audio is collected. ``voice_to_voice_ms`` is measured from the moment the last speech
sample of the file was sent to the first reply audio frame received.
"""

from __future__ import annotations

import asyncio
import dataclasses
import ssl
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from websockets.asyncio.client import connect

from voice_agent.aio import wait_within
from voice_agent.audio.pcm import Int16Array, last_speech_sample, read_audio
from voice_agent.server.protocol import (
    End,
    ErrorEvent,
    SessionEnd,
    SpeechResumed,
    Start,
    TranscriptEvent,
    TurnDone,
    decode_server,
    encode,
)

CHUNK_MS = 20


@dataclass
class ClientResult:
    transcript: str = ""
    reply_text: str = ""
    reply_audio_seconds: float = 0.0
    voice_to_voice_ms: float | None = None
    output_sample_rate: int = 0
    turns: list[dict[str, Any]] = field(default_factory=list)
    errors: list[dict[str, Any]] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)
    reply_audio: Int16Array = field(default_factory=lambda: np.zeros(0, np.int16), repr=False)

    def to_json(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data.pop("reply_audio")
        return data


async def stream_file(
    path: str | Path,
    url: str,
    *,
    output_rate: int | None = None,
    trailing_silence_s: float = 2.0,
    realtime: bool = True,
    timeout_s: float = 120.0,
    token: str | None = None,
    ca_file: str | None = None,
) -> ClientResult:
    """Stream ``path`` to the appliance at ``url`` and collect everything it answers."""
    samples, rate = read_audio(path, rate=None)
    return await stream_samples(samples, rate, url, output_rate=output_rate,
                                trailing_silence_s=trailing_silence_s, realtime=realtime,
                                timeout_s=timeout_s, token=token, ca_file=ca_file)


def connect_options(url: str, *, token: str | None = None,
                    ca_file: str | None = None) -> dict[str, Any]:
    """Keyword arguments for ``websockets`` ``connect``: the bearer token as an
    ``Authorization`` header, and for ``wss://`` a TLS context trusting ``ca_file`` (a
    self-signed appliance certificate) besides the system's CAs."""
    options: dict[str, Any] = {"max_size": None}
    if token:
        options["additional_headers"] = {"Authorization": f"Bearer {token}"}
    if url.startswith("wss://") and ca_file:
        options["ssl"] = ssl.create_default_context(cafile=ca_file)
    return options


async def stream_samples(
    samples: Int16Array,
    rate: int,
    url: str,
    *,
    output_rate: int | None = None,
    trailing_silence_s: float = 2.0,
    realtime: bool = True,
    timeout_s: float = 120.0,
    token: str | None = None,
    ca_file: str | None = None,
) -> ClientResult:
    result = ClientResult(output_sample_rate=output_rate or rate)
    speech_end = last_speech_sample(samples, rate)
    audio = np.concatenate([samples, np.zeros(int(rate * trailing_silence_s), np.int16)])
    chunk = rate * CHUNK_MS // 1000
    speech_end_sent: list[float] = []
    first_reply: list[tuple[float, int]] = []
    """When the first reply audio after the speech came, and its index in ``pieces``."""
    pieces: list[bytes] = []
    transcripts: dict[int, str] = {}
    reply_starts: dict[int, int] = {}
    """Where in ``pieces`` each turn's reply began: ``speech_resumed`` drops it from there."""

    async with connect(url, **connect_options(url, token=token, ca_file=ca_file)) as ws:
        await ws.send(encode(Start(sample_rate=rate, output_sample_rate=output_rate)))

        async def receive() -> None:
            async for message in ws:
                if isinstance(message, bytes):
                    if speech_end_sent and not first_reply:
                        first_reply.append((time.perf_counter(), len(pieces)))
                    pieces.append(message)
                    continue
                event = decode_server(message)
                result.events.append({"type": event.type, **dataclasses.asdict(event)})
                if isinstance(event, TranscriptEvent):
                    transcripts[event.turn_id] = event.text  # a resumed turn's replaces it
                    reply_starts.setdefault(event.turn_id, len(pieces))
                    result.transcript = " ".join(filter(None, transcripts.values()))
                elif isinstance(event, SpeechResumed):
                    # The person went on speaking before hearing this reply: it is dropped,
                    # and the whole utterance is answered again.
                    dropped_from = reply_starts.pop(event.turn_id, len(pieces))
                    del pieces[dropped_from:]
                    if first_reply and first_reply[0][1] >= dropped_from:
                        first_reply.clear()
                elif isinstance(event, TurnDone):
                    result.turns.append(dataclasses.asdict(event))
                    result.reply_text = " ".join(filter(None, [result.reply_text,
                                                               event.reply_text]))
                elif isinstance(event, ErrorEvent):
                    result.errors.append(dataclasses.asdict(event))
                elif isinstance(event, SessionEnd):
                    return

        receiver = asyncio.create_task(receive())
        started = time.perf_counter()
        for index, start in enumerate(range(0, audio.size, chunk)):
            end = min(start + chunk, audio.size)
            await ws.send(audio[start:end].astype("<i2").tobytes())
            if not speech_end_sent and end >= speech_end:
                # The last speech sample sits inside this chunk; in a live stream it is
                # "spoken" when its position in the schedule is reached.
                speech_end_sent.append(started + speech_end / rate if realtime
                                       else time.perf_counter())
            if realtime:
                delay = started + (index + 1) * CHUNK_MS / 1000 - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
            if receiver.done():
                break
        if not receiver.done():
            await ws.send(encode(End()))
        await wait_within(receiver, timeout_s)

    reply = np.frombuffer(b"".join(pieces), dtype="<i2").astype(np.int16)
    result.reply_audio = reply
    result.reply_audio_seconds = round(reply.size / result.output_sample_rate, 3)
    if speech_end_sent and first_reply:
        result.voice_to_voice_ms = round((first_reply[0][0] - speech_end_sent[0]) * 1000, 1)
    return result
