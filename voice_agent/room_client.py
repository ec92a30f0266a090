"""A WebSocket client in a simulated room: what it plays comes back into its microphone.

For the echo and barge-in benchmark (``voice-agent bench --echo``) and tests. Every tick
(20 ms, in real time) it sends the microphone: the person's speech (:meth:`RoomClient.say`),
the reply it is playing, convolved with a room impulse response, ``delay_ms`` late and
``echo_db`` over the person, and recorded noise. It plays what arrives as a plain client
does (a buffer drained in real time), drops its buffer when the server says the reply
paused or was interrupted, and can report its playback position (``playback``).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
from websockets.asyncio.client import ClientConnection, connect

from voice_agent.aio import wait_within
from voice_agent.audio.pcm import PIPELINE_RATE, Int16Array
from voice_agent.audio.room import active_rms, trim_rir
from voice_agent.server.protocol import (
    ClientMessage,
    EmotionEvent,
    Playback,
    ReplyInterrupted,
    ReplyPaused,
    ReplyResumed,
    ReplyText,
    ServerEvent,
    Start,
    TranscriptEvent,
    TurnDone,
    decode_server,
    encode,
)

FloatArray = npt.NDArray[np.float64]
TICK_MS = 20
REPORT_EVERY_TICKS = 10
"""``playback`` reports every 200 ms, when the client sends them."""


@dataclass
class Room:
    rir: FloatArray
    delay_ms: int = 60
    echo_db: float = 5.0
    """The reply's level in the microphone over the person's."""
    noise: FloatArray | None = None
    snr_db: float = 20.0
    person_dbfs: float = -26.0
    report_playback: bool = False


@dataclass
class Heard:
    """An event and the client's stream time (s) when it arrived."""

    at_s: float
    event: ServerEvent


@dataclass
class _Player:
    buffer: collections.deque[tuple[int, Int16Array]] = field(
        default_factory=collections.deque)
    played: dict[int, int] = field(default_factory=dict)
    """Samples of each turn's reply played."""
    turn: int = 0
    """The turn the audio now arriving belongs to."""

    def take(self, n: int) -> tuple[FloatArray, int | None]:
        out = np.zeros(n)
        filled, turn = 0, None
        while filled < n and self.buffer:
            turn, samples = self.buffer[0]
            piece = samples[: n - filled]
            out[filled : filled + piece.size] = piece
            filled += piece.size
            self.played[turn] = self.played.get(turn, 0) + piece.size
            if piece.size < samples.size:
                self.buffer[0] = (turn, samples[piece.size :])
            else:
                self.buffer.popleft()
        return out, turn


class RoomClient:
    def __init__(self, url: str, room: Room, *, token: str | None = None) -> None:
        self._url, self._room, self._token = url, room, token
        self.heard: list[Heard] = []
        self._ws: ClientConnection | None = None
        self._tick = PIPELINE_RATE * TICK_MS // 1000
        self._sent = 0
        """Microphone samples sent: the client's stream time."""
        self._person = np.zeros(0)
        self._echo = np.zeros(0)
        self._rir = trim_rir(room.rir)
        self._rir /= max(1e-9, float(np.sqrt(np.sum(self._rir**2))))
        self._fft_size = 1 << int(np.ceil(np.log2(self._tick + self._rir.size)))
        self._rir_fft = np.fft.rfft(self._rir, self._fft_size)
        self._player = _Player()
        self._reply_level = 0.0
        self._changed = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self.person_level = 32768.0 * 10 ** (room.person_dbfs / 20)

    @property
    def now_s(self) -> float:
        return self._sent / PIPELINE_RATE

    async def __aenter__(self) -> RoomClient:
        headers = {"Authorization": f"Bearer {self._token}"} if self._token else None
        self._ws = await connect(self._url, additional_headers=headers, max_size=None)
        await self._ws.send(encode(Start(sample_rate=PIPELINE_RATE,
                                         output_sample_rate=PIPELINE_RATE)))
        ready = json.loads(await wait_within(self._ws.recv(), 10))
        if ready.get("type") != "ready":
            raise RuntimeError(f"the server did not start the session: {ready}")
        self._tasks = [asyncio.create_task(self._ticks()), asyncio.create_task(self._receive())]
        return self

    async def __aexit__(self, *exc: object) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._ws is not None:
            await self._ws.close()

    @property
    def playing(self) -> bool:
        """Reply audio is still buffered, or its echo is still reaching the microphone."""
        return bool(self._player.buffer) or self._echo.size > self._sent

    async def send(self, message: ClientMessage) -> None:
        """A control message to the server (``cancel``, ``end``...)."""
        assert self._ws is not None  # noqa: S101 - started in __aenter__
        await self._ws.send(encode(message))

    def say(self, speech: npt.ArrayLike, after_s: float = 0.0, level_db: float = 0.0) -> float:
        """The person says ``speech`` (16 kHz) ``after_s`` from now, at ``person_dbfs``
        + ``level_db`` (a cough or a door is louder than a voice); returns the stream time
        (s) at which it starts."""
        samples = np.asarray(speech, dtype=np.float64).reshape(-1)
        level = active_rms(samples)
        target = self.person_level * 10 ** (level_db / 20)
        scaled = samples * (target / level if level else 1.0)
        start = self._sent + round(after_s * PIPELINE_RATE)
        end = start + scaled.size
        if self._person.size < end:
            self._person = np.concatenate([self._person, np.zeros(end - self._person.size)])
        self._person[start:end] += scaled
        return start / PIPELINE_RATE

    async def wait_for(self, match: Callable[[ServerEvent], bool], timeout_s: float,
                       since: int = 0) -> Heard:
        """The first event from index ``since`` on that ``match``\\ es."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while True:
            for heard in self.heard[since:]:
                if match(heard.event):
                    return heard
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise TimeoutError(f"no matching event in {timeout_s} s; got "
                                   f"{[h.event.type for h in self.heard[since:]]}")
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await wait_within(self._changed.wait(), remaining)

    def events(self, kind: type[Any]) -> list[Any]:
        return [h.event for h in self.heard if isinstance(h.event, kind)]

    async def _ticks(self) -> None:
        assert self._ws is not None  # noqa: S101 - started in __aenter__
        loop = asyncio.get_running_loop()
        started, count, n = loop.time(), 0, self._tick
        rng = np.random.default_rng(0)
        noise = self._room.noise
        noise_gain = 0.0
        if noise is not None and noise.size:
            noise_gain = self.person_level * 10 ** (-self._room.snr_db / 20) / max(
                1e-9, active_rms(noise))
        offset = int(rng.integers(0, noise.size)) if noise is not None and noise.size else 0
        while True:
            t = self._sent
            played, turn = self._player.take(n)
            self._add_echo(played, t)
            mic = self._slice(self._person, t, n) + self._slice(self._echo, t, n)
            if noise is not None and noise.size:
                idx = (offset + t + np.arange(n)) % noise.size
                mic += noise[idx] * noise_gain
            pcm = np.clip(np.round(mic), -32768, 32767).astype("<i2").tobytes()
            await self._ws.send(pcm)
            self._sent += n
            count += 1
            if (self._room.report_playback and turn is not None
                    and count % REPORT_EVERY_TICKS == 0):
                await self._ws.send(encode(Playback(turn_id=turn,
                                                    audio_samples=self._player.played[turn])))
            await asyncio.sleep(max(0.0, started + count * TICK_MS / 1000 - loop.time()))

    @staticmethod
    def _slice(track: FloatArray, start: int, n: int) -> FloatArray:
        out = np.zeros(n)
        piece = track[start : start + n]
        out[: piece.size] = piece
        return out

    def _add_echo(self, played: FloatArray, at: int) -> None:
        if not played.any():
            return
        level = float(np.sqrt(np.mean(played**2)))
        self._reply_level = max(self._reply_level * 0.999, level)  # the reply's loud parts
        gain = self.person_level * 10 ** (self._room.echo_db / 20) / max(1.0, self._reply_level)
        spectrum = np.fft.rfft(played, self._fft_size) * self._rir_fft
        echo = np.fft.irfft(spectrum, self._fft_size)[: played.size + self._rir.size - 1] * gain
        start = at + self._room.delay_ms * PIPELINE_RATE // 1000
        end = start + echo.size
        if self._echo.size < end:
            self._echo = np.concatenate([self._echo, np.zeros(end - self._echo.size)])
        self._echo[start:end] += echo

    async def _receive(self) -> None:
        assert self._ws is not None  # noqa: S101 - started in __aenter__
        player = self._player
        async for message in self._ws:
            if isinstance(message, bytes):
                player.buffer.append((player.turn, np.frombuffer(message, dtype="<i2")))
                continue
            event = decode_server(message)
            if isinstance(event, ReplyPaused | ReplyInterrupted):
                player.buffer.clear()  # the rest is dropped (sent again on a resume)
                player.played[event.turn_id] = event.audio_samples
            if isinstance(event, TranscriptEvent | EmotionEvent | ReplyText | ReplyResumed):
                player.turn = event.turn_id
            self.heard.append(Heard(self.now_s, event))
            self._changed.set()

    def done_turns(self) -> list[TurnDone]:
        return self.events(TurnDone)
