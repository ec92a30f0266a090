"""``voice-agent --mic``: talk to the appliance through the workstation's sound device.

Full duplex (issue 9) when ``frontend.echo_cancellation`` and ``barge_in.enabled`` are on (the
defaults): one duplex stream at 16 kHz, 10 ms blocks. Its callback writes the reply to the
loudspeaker and hands the loop what it captured together with exactly what it wrote; the loop
gives the written block to the session as the echo reference (``Session.reference(written,
0)``: it plays while the block captured with it is recorded) and then the captured block. The
canceller gets the loudspeaker's signal sample for sample in step with the microphone, and the
person can interrupt the reply by speaking over it.

The reply is paced by the same :class:`~voice_agent.playback.PlaybackClock` as for a
WebSocket client, and the device is the playback clock: every block reports how much of the
turn's reply has been written to the device (``driver.played``), so what counts as heard is
what reached the loudspeaker (give or take the device's output latency, a few tens of ms).
``reply_paused`` / ``reply_interrupted`` drop what the player has buffered; a resume sends it
again from where it paused.

``--half-duplex`` (or echo cancellation or barge-in off) keeps the old behaviour: input is
ignored (counted as dropped, ``muted``) while the reply plays and ``ECHO_TAIL_S`` after.

Where there is no PortAudio library or no sound device, a one-line error says so.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from voice_agent.aio import wait_within
from voice_agent.appliance import Appliance, SessionOptions
from voice_agent.audio.frontend import FRAME_SAMPLES
from voice_agent.audio.pcm import PIPELINE_RATE, bytes_to_int16
from voice_agent.config import Config, PlaybackConfig
from voice_agent.engines import Engines
from voice_agent.errors import DeviceError
from voice_agent.playback import PlaybackClock
from voice_agent.server.protocol import (
    ErrorEvent,
    ReplyInterrupted,
    ReplyPaused,
    ReplyText,
    ServerEvent,
    TranscriptEvent,
    TurnDone,
    WakeEvent,
)

ECHO_TAIL_S = 0.3
"""Half-duplex: input stays muted this long after playback ends (room reverberation)."""

PLAYER_MAX_S = 5.0
"""Reply audio the player may hold. The pump keeps it near ``playback.lead_ms``; more than
this is a bug or a stalled device, and what does not fit is dropped and counted."""

QUEUE_S = 2.0
"""Captured blocks (with what was played meanwhile) waiting for the event loop, in seconds
of audio: a busy machine stalls the loop now and then, and a dropped block loses the echo
reference of what was played in it too. Beyond this, blocks are dropped and counted."""

DEVICE_TIMEOUT_S = 5.0
"""A device that delivers no block for this long has gone away (unplugged, suspended)."""

EventHook = Callable[[ServerEvent], None]


def open_sounddevice(module: Any = None) -> Any:
    """Import sounddevice (or take ``module``, a stand-in with the same interface) and check
    for input and output devices, or raise DeviceError."""
    sounddevice = module
    if sounddevice is None:
        try:
            import sounddevice as imported
        except OSError:
            raise DeviceError(
                "no PortAudio library found (install it: apt-get install libportaudio2)"
            ) from None
        sounddevice = imported
    try:
        sounddevice.query_devices(kind="input")
        sounddevice.query_devices(kind="output")
    except (sounddevice.PortAudioError, ValueError) as exc:
        raise DeviceError(f"no usable sound device: {exc}") from None
    return sounddevice


@dataclass(frozen=True)
class Block:
    """One device callback's worth: what was captured, and what was played meanwhile."""

    captured: bytes
    written: bytes
    """PCM written to the loudspeaker in the same callback (zeros where nothing played)."""
    played: tuple[int, int] | None
    """``(turn_id, samples)``: the turn whose reply was written, and how much of it has been
    written so far; None when no reply audio was written."""


class Player:
    """The reply on its way to the loudspeaker: a bounded buffer the device callback reads.

    Each piece remembers its turn and where it starts in that turn's reply, so the callback
    can say how much of which reply it has written."""

    def __init__(self, max_samples: int) -> None:
        self._pieces: collections.deque[tuple[int, int, bytes]] = collections.deque()
        self._queued = 0
        """Bytes in ``_pieces``."""
        self._max_bytes = 2 * max_samples
        self._lock = threading.Lock()
        self.dropped_samples = 0
        self.last_played = 0.0
        """``time.monotonic()`` of the last block with reply audio in it."""

    def play(self, turn_id: int, offset: int, pcm: bytes) -> None:
        """Queue ``pcm`` (16 kHz int16), samples ``offset``… of turn ``turn_id``'s reply."""
        with self._lock:
            if self._queued + len(pcm) > self._max_bytes:
                self.dropped_samples += len(pcm) // 2
                return
            self._pieces.append((turn_id, offset, pcm))
            self._queued += len(pcm)

    def clear(self) -> None:
        """Drop everything not yet written (the reply paused or was interrupted)."""
        with self._lock:
            self._pieces.clear()
            self._queued = 0

    @property
    def busy(self) -> bool:
        with self._lock:
            queued = self._queued > 0
        return queued or time.monotonic() - self.last_played < ECHO_TAIL_S

    def read(self, samples: int) -> tuple[bytes, tuple[int, int] | None]:
        """The next ``samples`` to write (zero-padded) and ``(turn_id, written so far)`` of
        the last reply they came from. Called from the device's thread."""
        need = 2 * samples
        out = bytearray()
        played: tuple[int, int] | None = None
        with self._lock:
            while len(out) < need and self._pieces:
                turn_id, offset, pcm = self._pieces[0]
                take = pcm[: need - len(out)]
                out += take
                self._queued -= len(take)
                played = (turn_id, offset + len(take) // 2)
                if len(take) < len(pcm):
                    self._pieces[0] = (turn_id, offset + len(take) // 2, pcm[len(take):])
                else:
                    self._pieces.popleft()
        if played is not None:
            self.last_played = time.monotonic()
        out += bytes(need - len(out))
        return bytes(out), played


class TerminalOutput:
    """Prints the conversation and hands the reply to the player.

    The pump hands audio over at the clock's position (``clock.turn_id``, ``clock.sent`` are
    where this piece starts in which reply), so each piece is queued with its place."""

    def __init__(self, player: Player, clock: PlaybackClock,
                 on_event: EventHook | None = None) -> None:
        self._player = player
        self._clock = clock
        self._on_event = on_event

    async def event(self, event: ServerEvent) -> None:
        if self._on_event is not None:
            self._on_event(event)
        if isinstance(event, ReplyPaused | ReplyInterrupted):
            self._player.clear()  # stop now; a resume sends it again from the pause
        if isinstance(event, TranscriptEvent) and event.text:
            print(f"\nyou: {event.text}\nassistant: ", end="", flush=True)
        elif isinstance(event, ReplyText):
            print(event.delta, end="", flush=True)
        elif isinstance(event, ReplyInterrupted):
            print(" [interrupted]", end="", flush=True)
        elif isinstance(event, TurnDone) and event.status == "cancelled":
            self._player.clear()
        elif isinstance(event, WakeEvent):
            line = ("[awake: listening]" if event.state == "awake"
                    else f"[asleep: say '{event.phrase}']")
            print(f"\n{line}", flush=True)
        elif isinstance(event, ErrorEvent):
            print(f"\n[error {event.code}] {event.message}", file=sys.stderr, flush=True)

    async def audio(self, pcm: bytes) -> None:
        self._player.play(self._clock.turn_id or 0, self._clock.sent, pcm)


def is_full_duplex(config: Config, *, half_duplex: bool = False) -> bool:
    """Full duplex needs the echo canceller and barge-in; ``--half-duplex`` turns it off."""
    return (not half_duplex and config.frontend.echo_cancellation
            and config.barge_in.enabled)


async def run_mic(engines: Engines, config: Config, *, sounddevice_module: Any = None,
                  stop: asyncio.Event | None = None, half_duplex: bool = False,
                  on_event: EventHook | None = None) -> dict[str, int]:
    """Talk through the sound device until ``stop`` is set (or forever: Ctrl-C).

    ``sounddevice_module``: a stand-in for the ``sounddevice`` module (a simulated device);
    ``on_event``: told every event before it is printed. Returns the input statistics
    (samples processed, dropped by reason, reply samples the player dropped)."""
    sounddevice = open_sounddevice(sounddevice_module)
    loop = asyncio.get_running_loop()
    duplex = is_full_duplex(config, half_duplex=half_duplex)
    # A loudspeaker always plays in real time: lead_ms = 0 (unpaced, for recording clients)
    # would queue the whole reply in the player, beyond a barge-in's reach.
    clock = PlaybackClock(PIPELINE_RATE,
                          lead_ms=config.playback.lead_ms or PlaybackConfig().lead_ms)
    player = Player(round(PLAYER_MAX_S * PIPELINE_RATE))
    blocks: asyncio.Queue[Block] = asyncio.Queue(maxsize=round(QUEUE_S * 100))  # 10 ms each

    def offer(block: Block) -> None:
        try:
            blocks.put_nowait(block)
        except asyncio.QueueFull:
            session.drop(block.captured, "queue_full")

    def on_block(indata: Any, outdata: Any, count: int, time_info: Any, status: Any) -> None:
        written, played = player.read(count)
        outdata[:] = written
        # RuntimeError: the loop has closed, the stream is being torn down.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(offer, Block(bytes(indata), written, played))

    async def on_close(reason: str) -> None:
        return None

    # The reply is made at 16 kHz, so what is written to the device is the reference as is;
    # half-duplex runs no canceller (it never gets a reference).
    appliance = Appliance(engines, config)
    options = SessionOptions(full_duplex=duplex, echo_reference=False)
    driver = await appliance.open_session(
        options, TerminalOutput(player, clock, on_event), on_close, clock=clock)
    session = driver.session
    stream = sounddevice.RawStream(
        samplerate=PIPELINE_RATE, channels=1, dtype="int16", blocksize=FRAME_SAMPLES,
        latency="low", callback=on_block,
    )
    mode = ("full duplex: speak over it to interrupt" if duplex
            else "half-duplex: the microphone is muted while it speaks")
    print(f"voice-agent: listening on the microphone ({mode}; Ctrl-C stops)", file=sys.stderr)
    appliance.start()
    with stream:
        try:
            while stop is None or not stop.is_set():
                try:
                    block = await wait_within(blocks.get(), DEVICE_TIMEOUT_S)
                except TimeoutError:
                    raise DeviceError(
                        f"the sound device delivered no audio for {DEVICE_TIMEOUT_S:g} s"
                    ) from None
                if duplex:
                    if block.played is not None:
                        session.reference(bytes_to_int16(block.written), 0)
                else:
                    session.muted = player.busy
                if block.played is not None:
                    driver.played(*block.played)
                await driver.execute(session.audio(block.captured))
        finally:
            await appliance.stop()
            await driver.stop()
    stats = session.input_stats()
    if player.dropped_samples:
        stats["dropped_player_full"] = player.dropped_samples
    return stats
