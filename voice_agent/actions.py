"""What the session asks its owner to do: the actions :class:`~voice_agent.session.Session`
returns, each a small frozen dataclass (``voice_agent.driver`` carries them out)."""

from __future__ import annotations

from dataclasses import dataclass, field

from voice_agent.audio.pcm import Int16Array
from voice_agent.server.protocol import ServerEvent


@dataclass(frozen=True)
class Emit:
    event: ServerEvent


@dataclass(frozen=True)
class StartTurn:
    turn_id: int
    audio: Int16Array = field(repr=False)
    endpoint_wait_ms: int
    """Stream time from the last speech frame to the end-of-turn decision."""
    text: str = ""
    """A typed turn's words (``audio`` is then empty): answered without ASR."""
    after_reply: bool = False
    """It began within ``barge_in.echo_tail_ms`` of the end of the reply played before it:
    its words must be the person's, not that reply's echo, to be answered."""


@dataclass(frozen=True)
class Speculate:
    """Start answering ``audio`` before the turn is decided; hold every output until a
    :class:`CommitTurn`, drop it all on an :class:`AbandonTurn`."""

    turn_id: int
    audio: Int16Array = field(repr=False)
    endpoint_wait_ms: int
    """Stream time from the last speech frame to the start of the speculation."""
    after_reply: bool = False
    """As :attr:`StartTurn.after_reply`."""


@dataclass(frozen=True)
class JudgeTurn:
    """Ask the end-of-turn model about the utterance at this pause; the answer comes back
    through :meth:`Session.judged` (until it does, the long silence applies)."""

    turn_id: int
    audio: Int16Array = field(repr=False)
    pause_at_ms: int
    """Which pause this is (stream time of the pause): a late answer to an earlier pause
    of the same utterance is ignored."""


@dataclass(frozen=True)
class CommitTurn:
    """The turn being speculated on is decided: release its output and let it finish."""

    turn_id: int
    endpoint_wait_ms: int


@dataclass(frozen=True)
class AbandonTurn:
    """Throw the turn's running work away unheard, with no ``turn_done``: the person went on
    speaking, and the same turn continues."""

    turn_id: int


@dataclass(frozen=True)
class Transcribe:
    """Transcribe the utterance so far for a ``transcript_partial`` (may be skipped)."""

    turn_id: int
    audio: Int16Array = field(repr=False)
    audio_ms: int


@dataclass(frozen=True)
class CancelTurn:
    turn_id: int
    reason: str


@dataclass(frozen=True)
class PauseReply:
    """Sound began over the turn's reply: hold it where it is (``reply_paused``)."""

    turn_id: int


@dataclass(frozen=True)
class ResumeReply:
    """The sound over the reply was not a turn: play on from where it paused."""

    turn_id: int


@dataclass(frozen=True)
class CheckBurst:
    """Transcribe the short burst heard over ``paused_turn``'s reply and tell the session
    whether it is a turn (:meth:`Session.burst_heard`)."""

    turn_id: int
    paused_turn: int
    audio: Int16Array = field(repr=False)
    long: bool = False
    """It has ``barge_in.confirm_ms`` of speech: Whisper's doubt about its words does not
    count (talking over a loud reply makes a person's words doubtful too)."""


@dataclass(frozen=True)
class Close:
    reason: str


Action = (Emit | StartTurn | Speculate | JudgeTurn | CommitTurn | AbandonTurn | Transcribe
          | CancelTurn | PauseReply | ResumeReply | CheckBurst | Close)
