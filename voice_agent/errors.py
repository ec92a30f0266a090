"""One error tree for the whole service.

Every error has a stable ``code`` (sent to clients, safe to match on) and a ``transient``
flag: transient errors are worth retrying (or falling back to another engine for the same
turn); permanent ones are not (bad input, a missing model file).
"""

from __future__ import annotations


class VoiceAgentError(Exception):
    """Base of every error the service reports."""

    code = "internal"
    transient = False

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code

    @property
    def message(self) -> str:
        return str(self)


class ConfigError(VoiceAgentError):
    """The configuration file or an override is invalid."""

    code = "config_invalid"


class ModelError(VoiceAgentError):
    """A model is missing, fails its checksum, or cannot be loaded."""

    code = "model_unavailable"


class ProtocolError(VoiceAgentError):
    """A client message is malformed or not allowed now. The session goes on."""

    code = "bad_message"


class AudioFormatError(ProtocolError):
    """Client audio is not 16-bit mono PCM at the announced rate."""

    code = "bad_audio"


class EngineError(VoiceAgentError):
    """An engine (ASR, LLM, TTS) failed while serving a turn."""

    code = "engine_failed"
    transient = True


class EngineTimeout(EngineError):
    """An engine did not answer within its time budget."""

    code = "engine_timeout"


class EngineTruncated(EngineError):
    """An LLM stream ended at its generation limit (``finish_reason = "length"``). Raised at
    the end of the stream, after every piece: the turn decides what of it may be spoken."""

    code = "llm_truncated"


class ClientGone(VoiceAgentError):
    """The client disconnected, or stopped reading for ``server.send_timeout_s`` (and was
    closed): nothing more can be sent to it. Its turns still end and are recorded."""

    code = "client_gone"
    transient = True


class Overloaded(VoiceAgentError):
    """The service refuses more work than its bounded queues allow."""

    code = "overloaded"
    transient = True


class Preempted(VoiceAgentError):
    """Speculative work gave the engine up to a committed turn (not an engine failure: the
    breaker never counts it; the turn asks again once it is committed)."""

    code = "preempted"
    transient = True


class DeviceError(VoiceAgentError):
    """No usable sound device (for ``--mic``)."""

    code = "no_audio_device"
