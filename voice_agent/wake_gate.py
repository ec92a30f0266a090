"""The wake phrase as a gate on the session's input (``[wake]``, issue 9). No I/O, no clock
but the stream time passed in.

Until the phrase is heard, nothing is listened to: frames go to the detector only, never to
the VAD, ASR or the model. Once it is heard the person has ``follow_up_ms`` to start
speaking, and after each answer as long again to go on without it; then the gate closes.
"""

from __future__ import annotations

from voice_agent.audio.pcm import Int16Array
from voice_agent.audio.wake import WakeDetector
from voice_agent.server.protocol import WakeEvent


class WakeGate:
    def __init__(self, detector: WakeDetector, *, follow_up_ms: int) -> None:
        self._detector = detector
        self._follow_up_ms = follow_up_ms
        self._open_until_ms: int | None = None
        """Speech is taken until then (None: the phrase has not been heard since it closed)."""

    def closed(self, now_ms: int) -> bool:
        """Whether input is for the detector only (ask only while nobody speaks or is
        answered: a conversation under way keeps the gate open)."""
        return self._open_until_ms is None or now_ms > self._open_until_ms

    def listen(self, frame: Int16Array, now_ms: int) -> tuple[list[WakeEvent], bool]:
        """A frame while closed: the events to send, and whether the phrase was just heard
        (what comes after it is listened to; the phrase itself is not part of the question)."""
        events: list[WakeEvent] = []
        phrase = self._detector.phrase
        if self._open_until_ms is not None:  # the follow-up window just ran out
            self._open_until_ms = None
            self._detector.reset()
            events.append(WakeEvent(state="asleep", phrase=phrase, audio_ms=now_ms))
        if not self._detector.process(frame):
            return events, False
        self._open_until_ms = now_ms + self._follow_up_ms
        events.append(WakeEvent(state="awake", phrase=phrase, audio_ms=now_ms))
        return events, True

    def answered(self, now_ms: int) -> None:
        """A turn has ended: the person may go on without the phrase for a while."""
        if self._open_until_ms is not None:
            self._open_until_ms = now_ms + self._follow_up_ms
