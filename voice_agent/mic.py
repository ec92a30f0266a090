"""``voice-agent --mic``: talk to the appliance through the workstation's sound device.

Without echo cancellation an open speaker would make the appliance answer itself, so this
loop is half-duplex: microphone input is ignored (and counted as dropped) while a reply is
playing. Where there is no PortAudio library or no sound device, a one-line error says so.
"""

from __future__ import annotations

import asyncio
import collections
import sys
import threading
import time
from typing import Any

from voice_agent.audio.frontend import FRAME_SAMPLES, make_frontend
from voice_agent.audio.pcm import PIPELINE_RATE
from voice_agent.audio.vad import make_vad
from voice_agent.config import Config
from voice_agent.driver import SessionDriver
from voice_agent.engines import Engines
from voice_agent.errors import DeviceError
from voice_agent.server.protocol import (
    ErrorEvent,
    ReplyText,
    ServerEvent,
    TranscriptEvent,
    TurnDone,
)
from voice_agent.session import Session
from voice_agent.turn import TurnRunner

ECHO_TAIL_S = 0.3
"""Input stays muted this long after playback ends (room reverberation)."""


def open_sounddevice() -> Any:
    """Import sounddevice and check for input and output devices, or raise DeviceError."""
    try:
        import sounddevice
    except OSError:
        raise DeviceError(
            "no PortAudio library found (install it: apt-get install libportaudio2)"
        ) from None
    try:
        sounddevice.query_devices(kind="input")
        sounddevice.query_devices(kind="output")
    except (sounddevice.PortAudioError, ValueError) as exc:
        raise DeviceError(f"no usable sound device: {exc}") from None
    return sounddevice


class Player:
    """Plays PCM through an output stream fed from a byte buffer (callback thread)."""

    def __init__(self, sounddevice: Any, rate: int) -> None:
        self._buffer: collections.deque[bytes] = collections.deque()
        self._pending = b""
        self._lock = threading.Lock()
        self.last_played = 0.0
        self._stream = sounddevice.RawOutputStream(
            samplerate=rate, channels=1, dtype="int16", callback=self._callback
        )

    def __enter__(self) -> Player:
        self._stream.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stream.stop()
        self._stream.close()

    def play(self, pcm: bytes) -> None:
        with self._lock:
            self._buffer.append(pcm)

    def stop(self) -> None:
        with self._lock:
            self._buffer.clear()
            self._pending = b""

    @property
    def busy(self) -> bool:
        with self._lock:
            queued = bool(self._buffer or self._pending)
        return queued or time.monotonic() - self.last_played < ECHO_TAIL_S

    def _callback(self, outdata: Any, frames: int, time_info: Any, status: Any) -> None:
        need = len(outdata)
        with self._lock:
            data = self._pending
            while len(data) < need and self._buffer:
                data += self._buffer.popleft()
            chunk, self._pending = data[:need], data[need:]
        if chunk:
            self.last_played = time.monotonic()
        outdata[: len(chunk)] = chunk
        outdata[len(chunk):] = b"\x00" * (need - len(chunk))


class TerminalOutput:
    """Prints the conversation and plays the reply."""

    def __init__(self, player: Player) -> None:
        self._player = player

    async def event(self, event: ServerEvent) -> None:
        if isinstance(event, TranscriptEvent) and event.text:
            print(f"\nyou: {event.text}\nassistant: ", end="", flush=True)
        elif isinstance(event, ReplyText):
            print(event.delta, end="", flush=True)
        elif isinstance(event, TurnDone) and event.status == "cancelled":
            self._player.stop()
        elif isinstance(event, ErrorEvent):
            print(f"\n[error {event.code}] {event.message}", file=sys.stderr, flush=True)

    async def audio(self, pcm: bytes) -> None:
        self._player.play(pcm)


async def run_mic(engines: Engines, config: Config) -> None:
    sounddevice = open_sounddevice()
    loop = asyncio.get_running_loop()
    frames: asyncio.Queue[bytes] = asyncio.Queue(maxsize=config.server.input_queue_frames)
    session = Session(
        vad_config=config.vad,
        frontend=make_frontend(config.frontend.noise_suppression, config.frontend.auto_gain_dbfs),
        vad=make_vad(config.vad),
        input_rate=PIPELINE_RATE,
        barge_in=False,
        turn_config=config.turn,
        judge_pauses=engines.turn_end is not None,
    )

    def offer(data: bytes) -> None:
        try:
            frames.put_nowait(data)
        except asyncio.QueueFull:
            session.dropped["queue_full"] += len(data) // 2

    def on_input(indata: Any, count: int, time_info: Any, status: Any) -> None:
        loop.call_soon_threadsafe(offer, bytes(indata))

    async def on_close(reason: str) -> None:
        return None

    with Player(sounddevice, engines.tts.sample_rate) as player:
        runner = TurnRunner(engines, config, engines.tts.sample_rate)
        driver = SessionDriver(session, runner, TerminalOutput(player), on_close)
        stream = sounddevice.RawInputStream(
            samplerate=PIPELINE_RATE, channels=1, dtype="int16", blocksize=FRAME_SAMPLES,
            callback=on_input,
        )
        print("voice-agent: listening on the microphone (Ctrl-C stops)", file=sys.stderr)
        probes = asyncio.create_task(engines.llm.probe_forever())
        with stream:
            try:
                while True:
                    data = await frames.get()
                    session.muted = player.busy
                    await driver.execute(session.audio(data))
            finally:
                probes.cancel()
                await driver.stop()
