"""What a voice is compared with: typical values before a speaker is known, then their own.

A shout is only a shout against how that person usually sounds: a quiet speaker's "loud" is
another's normal, a microphone's gain moves every level, and a man's raised voice has the
pitch of a woman's calm one. So each cue of a turn is scored against a :class:`Reference`:

- **before any turn**, :data:`TYPICAL` values: a microphone level and spectral tilt measured
  on the human clips of ``shared/audio/speech``, and a pitch by gender range
  (:func:`typical_pitch_hz`: a voice under 165 Hz is taken for a low one, resting near
  120 Hz, else a high one, near 205 Hz: the textbook adult averages);
- **from then on**, the speaker's own baseline, learned quickly and robustly by
  :class:`EmotionTracker`: a low quantile (:data:`BASELINE_QUANTILE`) of their last turns,
  so one shouted turn barely moves it, blended with the typical value at weight
  ``n / (n + prior_turns)`` after ``n`` turns.

The typical microphone level is a guess (gain and distance move it by 15 dB and more) where
the speaker's own level is not, so :attr:`Reference.own_weight` tells the scoring how far
to trust a level difference.
"""

from __future__ import annotations

import math
import threading
from collections import deque
from dataclasses import dataclass

import numpy as np

from voice_agent.prosody import Prosody

__all__ = ["TYPICAL", "EmotionTracker", "Reference", "typical_pitch_hz"]

HIGH_VOICE_FROM_HZ = 165.0
"""A median pitch from here up is taken for a high (mostly female or child) voice."""
TYPICAL_LOW_VOICE_HZ, TYPICAL_HIGH_VOICE_HZ = 120.0, 205.0
"""Resting pitch of a low and a high adult voice (the shared clips: 114-150 and 190-248 Hz)."""
BASELINE_QUANTILE = 0.4
"""The baseline is this quantile of a speaker's turns: their resting voice. A conversation
holds more calm turns than agitated ones, and agitation pushes every cue up, so a quantile
under the median keeps a few loud turns from lifting the baseline they are judged by."""


@dataclass(frozen=True)
class Reference:
    """What a cue is compared with: typical values, or a speaker's own baseline."""

    loudness_dbfs: float
    pitch_range_semitones: float
    speaking_rate_wps: float
    pitch_hz: float = 0.0
    """0: by gender range (:func:`typical_pitch_hz`) of the voice being scored."""
    tilt_db: float = -7.5
    turns: int = 0
    """How many of the speaker's turns the baseline rests on (0: typical values only)."""
    own_weight: float = 0.0
    """The share of the speaker's own baseline in the blend, 0 (typical) .. 1."""


TYPICAL = Reference(loudness_dbfs=-26.0, pitch_range_semitones=7.5, speaking_rate_wps=3.0,
                    tilt_db=-7.5)
"""Medians of the 17 human clips of shared/audio/speech (read speech, close microphone):
-26.2 dBFS, 7.6 semitones, tilt -7.8 dB."""
TYPICAL_RATE_ZH = 4.5
"""Chinese is counted in characters (syllables): about 4-5 per second of speech."""


def typical_pitch_hz(pitch_hz: float) -> float:
    """The resting pitch of a voice in the gender range of ``pitch_hz`` (0 for 0)."""
    if pitch_hz <= 0:
        return 0.0
    return TYPICAL_HIGH_VOICE_HZ if pitch_hz >= HIGH_VOICE_FROM_HZ else TYPICAL_LOW_VOICE_HZ


def _semitones(hz: float) -> float:
    return 12 * math.log2(hz / 100.0)


def _hertz(semitones: float) -> float:
    return 100.0 * 2 ** (semitones / 12)


class EmotionTracker:
    """One speaker's baseline, from their last ``history`` turns.

    A session owns one; each turn is scored against :meth:`reference` before
    :meth:`update` adds it. Thread-safe: the analysis runs in a worker thread.
    """

    def __init__(self, *, history: int = 20, prior_turns: float = 2.0,
                 quantile: float = BASELINE_QUANTILE) -> None:
        """``history``: turns kept (a mood drifts; older turns stop counting).
        ``prior_turns``: how many turns the typical values weigh in the blend."""
        if history < 1 or prior_turns < 0 or not 0.0 <= quantile <= 1.0:
            raise ValueError("history >= 1, prior_turns >= 0 and quantile in [0, 1]")
        self.prior_turns, self.quantile = prior_turns, quantile
        self._turns: deque[dict[str, float]] = deque(maxlen=history)
        self._lock = threading.Lock()

    @property
    def turns(self) -> int:
        with self._lock:
            return len(self._turns)

    def reference(self, typical: Reference = TYPICAL, *, pitch_hz: float = 0.0) -> Reference:
        """The reference for a turn whose median pitch is ``pitch_hz``: ``typical`` blended
        with the baseline so far. The typical pitch is by the gender range of the speaker's
        own turns once there are any (a man's shout is not a woman's voice), else of this
        one."""
        with self._lock:
            turns = list(self._turns)

        def own(name: str) -> tuple[float, int]:
            values = [t[name] for t in turns if name in t]
            if not values:
                return math.nan, 0
            return float(np.quantile(values, self.quantile)), len(values)

        def blend(learned: tuple[float, int], base: float) -> float:
            value, n = learned
            return base if n == 0 else base + n / (n + self.prior_turns) * (value - base)

        own_pitch = own("pitch_st")
        typical_pitch = typical.pitch_hz or typical_pitch_hz(
            _hertz(own_pitch[0]) if own_pitch[1] else pitch_hz)
        pitch = typical_pitch
        if own_pitch[1] and typical_pitch:
            pitch = _hertz(blend(own_pitch, _semitones(typical_pitch)))
        n = len(turns)
        return Reference(
            loudness_dbfs=blend(own("loudness_dbfs"), typical.loudness_dbfs),
            pitch_range_semitones=blend(own("pitch_range_semitones"),
                                        typical.pitch_range_semitones),
            speaking_rate_wps=blend(own("speaking_rate_wps"), typical.speaking_rate_wps),
            pitch_hz=pitch, tilt_db=blend(own("tilt_db"), typical.tilt_db), turns=n,
            own_weight=n / (n + self.prior_turns) if n else 0.0)

    def update(self, cues: Prosody) -> None:
        """Add a turn's cues (those it has: no pitch in a whisper, no rate without words)."""
        if cues.speech_s <= 0:
            return
        values = {"loudness_dbfs": cues.loudness_dbfs, "tilt_db": cues.tilt_db}
        if cues.speaking_rate_wps > 0:
            values["speaking_rate_wps"] = cues.speaking_rate_wps
        if cues.pitch_hz > 0:
            values["pitch_st"] = _semitones(cues.pitch_hz)
            values["pitch_range_semitones"] = cues.pitch_range_semitones
        with self._lock:
            self._turns.append(values)
