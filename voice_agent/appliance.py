"""The appliance: the engines, and what every session shares, behind every transport.

One :class:`Appliance` per process owns the loaded engines, admission (the started-session
cap), the metrics and the observer that feeds them, and the LLM probes. Every transport (the
native WebSocket, OpenAI Realtime, the microphone) opens its sessions here with its own
:class:`SessionOptions`, so a session is built one way whoever asked for it: the same
frontend, VAD, turn-taking, barge-in, wake phrase and runner, on the same models.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from voice_agent.audio.double_talk import session_listeners
from voice_agent.audio.frontend import make_frontend
from voice_agent.audio.pcm import PIPELINE_RATE
from voice_agent.audio.vad import SILERO_MODELS, SILERO_PER_SESSION
from voice_agent.audio.wake import wake_detector
from voice_agent.barge_in import BurstJudge
from voice_agent.config import Config
from voice_agent.driver import SessionDriver
from voice_agent.engines import Engines
from voice_agent.metrics import Metrics
from voice_agent.output import TurnOutput
from voice_agent.playback import PlaybackClock
from voice_agent.server.limits import SessionSlots
from voice_agent.server.observe import Observer
from voice_agent.server.protocol import TurnDone
from voice_agent.session import Session
from voice_agent.turn import TurnRunner


@dataclass(frozen=True)
class SessionOptions:
    """What one session asks for; the rest comes from the config."""

    input_rate: int = PIPELINE_RATE
    """Rate of the PCM the client sends."""
    output_rate: int = PIPELINE_RATE
    """Rate the reply is made at for the client."""
    reasoning: bool = False
    """Also emit the model's reasoning (``reasoning`` events)."""
    turn_detection: bool = True
    """The appliance finds the turns; off, the client commits each one."""
    instructions: str | None = None
    """This session's system prompt (None: ``llm.system_prompt``)."""
    full_duplex: bool = True
    """Listen over its own voice (echo cancellation and barge-in, as configured). Off: the
    input is not listened to while the reply plays (half-duplex) and no canceller runs."""
    echo_reference: bool = True
    """The reply sent is the echo canceller's reference (off where the sound device itself
    gives what it played: ``--mic``)."""


class Appliance:
    """The engines and everything sessions share; see the module docstring."""

    def __init__(self, engines: Engines, config: Config) -> None:
        self.engines = engines
        self.config = config
        self.sessions = SessionSlots(config.server.max_sessions)
        """The started-session cap, claimed by each transport once a session is admitted."""
        self.metrics = Metrics(engines.llm, engines.load_seconds)
        self.observer = Observer(self.metrics)
        self._probes: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start probing LLM engines whose breaker is open (idempotent)."""
        if self._probes is None:
            self._probes = asyncio.create_task(self.engines.llm.probe_forever())

    async def stop(self) -> None:
        if self._probes is not None:
            self._probes.cancel()
            await asyncio.gather(self._probes, return_exceptions=True)
            self._probes = None

    async def open_session(
        self, options: SessionOptions, out: TurnOutput,
        on_close: Callable[[str], Awaitable[None]], *,
        turn_gate: Callable[[], bool] | None = None,
        on_turn_done: Callable[[TurnDone], None] | None = None,
        clock: PlaybackClock | None = None,
    ) -> SessionDriver:
        """A new session's driver: its session (the input side) and runner (the turns),
        carrying their actions out to ``out``. ``turn_gate``: asked before each turn (turns
        per minute); ``on_turn_done``: told every turn's end (metrics, audit); ``clock``:
        the reply's pacing (default: ``playback.lead_ms`` ahead at the output rate)."""
        config = self.config
        # Loading a Silero model releases the interpreter's lock: off the loop, a burst of
        # new sessions never stalls the running ones.
        await asyncio.to_thread(SILERO_MODELS.preload, SILERO_PER_SESSION)
        frontend_config = (config.frontend if options.full_duplex
                           else dataclasses.replace(config.frontend, echo_cancellation=False))
        vad, over_reply = session_listeners(config.vad, config.barge_in)
        session = Session(
            vad_config=config.vad,
            frontend=make_frontend(frontend_config),
            vad=vad,
            input_rate=options.input_rate,
            turn_gate=turn_gate,
            turn_config=config.turn,
            judge_pauses=self.engines.turn_end is not None,
            barge_in=config.barge_in.enabled and options.full_duplex,
            barge_in_config=config.barge_in,
            wake=wake_detector(config.wake),
            wake_follow_up_ms=round(config.wake.follow_up_s * 1000),
            over_reply=over_reply,
            turn_detection=options.turn_detection,
        )
        runner = TurnRunner(self.engines, config, options.output_rate,
                            send_reasoning=options.reasoning)
        if options.instructions is not None:
            runner.instructions = options.instructions
        return SessionDriver(
            session, runner, out, on_close, on_turn_done=on_turn_done,
            clock=clock or PlaybackClock(options.output_rate, lead_ms=config.playback.lead_ms),
            echo_reference=options.echo_reference,
            burst_judge=BurstJudge.configured(config.barge_in))
