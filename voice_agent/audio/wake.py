"""The wake phrase: a streaming detector that says on which 10 ms frame a phrase was spoken.

:class:`MicroWakeDetector` runs one of the four microWakeWord models that ship in the
``pymicro-wakeword`` wheel (with its TFLite runtime; nothing is downloaded): the TFLite Micro
audio frontend turns every 10 ms of 16 kHz audio into 40 log-mel features, the streaming model
takes three feature frames (30 ms) per call and keeps its own state, and the decision is the
mean of the last ``sliding_window`` probabilities against a cutoff (as ESPHome and
wyoming-microwakeword do). After a detection the window is cleared and further detections are
ignored for ``refractory_s``: one spoken phrase is one detection.

No audio is kept: the only samples held are the fewer than 160 the feature frontend has not
consumed yet (input that is not a whole number of 10 ms frames).
"""

from __future__ import annotations

import json
import math
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np

from voice_agent.audio.pcm import Int16Array
from voice_agent.errors import ConfigError, ModelError

if TYPE_CHECKING:
    from pymicro_wakeword import MicroWakeWord

    from voice_agent.config import WakeConfig

RATE = 16_000
FRAME_SAMPLES = 160
"""The detector's step: 10 ms at 16 kHz (the feature frontend's hop)."""
FRAME_BYTES = FRAME_SAMPLES * 2

WAKE_PHRASES: dict[str, str] = {
    "okay_nabu": "Okay Nabu",
    "hey_jarvis": "Hey Jarvis",
    "hey_mycroft": "Hey Mycroft",
    "alexa": "Alexa",
}
"""The phrases the embedded models know: config name -> how it is said."""


@dataclass(frozen=True)
class WakeTuning:
    """Decision settings for one model."""

    probability_cutoff: float
    """A detection needs the window's mean probability above this."""
    sliding_window: int
    """How many model outputs (30 ms apart) are averaged."""


DEFAULT_TUNING: dict[str, WakeTuning] = {
    "okay_nabu": WakeTuning(0.7, 3),
    "hey_jarvis": WakeTuning(0.93, 5),
    "hey_mycroft": WakeTuning(0.85, 3),
    "alexa": WakeTuning(0.93, 3),
}
"""The settings used when ``wake.probability_cutoff`` / ``wake.sliding_window`` are 0, chosen
by ``benchmarks/wake.py`` (2 h of speech and noise, 11 voices; README "Wake phrase"). The
models' own (0.85/0.97/0.95/0.9, window 5) missed more at the same false accepts."""


class WakeDetector(Protocol):
    """Streaming wake-phrase detection on 16 kHz int16 audio."""

    phrase: str
    """The model's name (``okay_nabu``...)."""

    def process(self, frame: Int16Array) -> bool:
        """Feed the next audio (normally one 10 ms frame of 160 samples; any length works).
        True when the phrase was detected in it."""
        ...

    def reset(self) -> None:
        """Forget everything heard so far (a new stream)."""
        ...


def normalize_phrase(name: str) -> str:
    """``"Okay Nabu"``, ``"okay-nabu"`` and ``"okay_nabu"`` are the same phrase."""
    return "_".join(name.strip().lower().replace("-", " ").replace("_", " ").split())


def check_phrase(name: str) -> str:
    """The model name for ``name``, or a coded :class:`ConfigError` listing the valid ones."""
    key = normalize_phrase(name)
    if key not in WAKE_PHRASES:
        raise ConfigError(f"unknown wake phrase {name!r}: one of {', '.join(WAKE_PHRASES)}")
    return key


class WakeDecision:
    """The decision part, pure: model probabilities in, detections out.

    Counts in model steps (one per ``stride`` feature frames, 30 ms), so it can be replayed
    over a recorded probability stream (``benchmarks/wake.py`` sweeps the settings so)."""

    def __init__(self, cutoff: float, window: int, refractory_steps: int) -> None:
        self.cutoff = cutoff
        self.window = window
        self.refractory_steps = refractory_steps
        self._recent: deque[float] = deque(maxlen=window)
        self._quiet = 0
        self.mean = 0.0

    def step(self, probability: float) -> bool:
        if self._quiet > 0:  # after a detection: ignored, and the window refills after it
            self._quiet -= 1
            self.mean = 0.0
            return False
        self._recent.append(probability)
        if len(self._recent) < self.window:
            self.mean = 0.0
            return False
        self.mean = math.fsum(self._recent) / self.window
        if self.mean <= self.cutoff:
            return False
        # One phrase, one detection: the probabilities stay high for a few steps after it.
        self._recent.clear()
        self._quiet = self.refractory_steps
        return True

    def reset(self) -> None:
        self._recent.clear()
        self._quiet = 0
        self.mean = 0.0


class MicroWakeDetector:
    """:class:`WakeDetector` on a microWakeWord model (one instance per audio stream)."""

    def __init__(self, phrase: str, *, probability_cutoff: float = 0.0, sliding_window: int = 0,
                 refractory_s: float = 2.0) -> None:
        from pymicro_features import MicroFrontend

        self.phrase = check_phrase(phrase)
        self.spoken = WAKE_PHRASES[self.phrase]
        tuning = DEFAULT_TUNING[self.phrase]
        self._model = _load_model(self.phrase)
        self.stride: int = self._model.stride
        """Feature frames per model call (3: one call per 30 ms)."""
        self._decision = WakeDecision(
            probability_cutoff or tuning.probability_cutoff,
            sliding_window or tuning.sliding_window,
            round(refractory_s * RATE / (FRAME_SAMPLES * self.stride)),
        )
        self._frontend = MicroFrontend()
        self._pending = np.zeros(0, dtype=np.int16)
        self._consumed = 0
        self._features = 0
        self.detected_at: int | None = None
        """Stream sample at which the last detection was made (input samples consumed then)."""

    @property
    def probability(self) -> float:
        """The latest windowed probability (0 until the window is full)."""
        return self._decision.mean

    def process(self, frame: Int16Array) -> bool:
        detected = False
        for consumed, probability in self._steps(frame):
            if self._decision.step(probability):
                detected = True
                self.detected_at = consumed
        return detected

    def model_outputs(self, audio: Int16Array) -> list[tuple[int, float]]:
        """The raw model outputs ``audio`` completes, continuing the stream, nothing decided:
        (stream samples consumed, probability), one per ``stride`` frames (what
        ``benchmarks/wake.py`` replays through :class:`WakeDecision`)."""
        return list(self._steps(audio))

    def _steps(self, audio: Int16Array) -> Iterator[tuple[int, float]]:
        """(stream samples consumed, raw probability) for each model call ``audio`` completes."""
        samples = np.concatenate([self._pending, audio]) if self._pending.size else audio
        raw = samples.astype("<i2", copy=False).tobytes()
        used = 0
        try:
            while len(raw) - used >= FRAME_BYTES:
                result = self._frontend.process_samples(raw[used:used + FRAME_BYTES])
                used += result.samples_read * 2
                if not result.features:
                    continue
                features = np.asarray(result.features, dtype=np.float32).reshape(1, 1, -1)
                probability = self._model.process_streaming_prob(features)
                self._features += 1
                # The model runs on every stride-th feature frame; in between it buffers.
                if probability is not None and self._features % self.stride == 0:
                    yield self._consumed + used // 2, probability
        finally:
            self._consumed += used // 2
            self._pending = np.array(samples[used // 2:], dtype=np.int16)

    def reset(self) -> None:
        self._frontend.reset()
        self._model.reset()  # reloads the interpreter: the streaming state lives in it
        self._decision.reset()
        self._pending = np.zeros(0, dtype=np.int16)
        self._consumed = 0
        self._features = 0
        self.detected_at = None

    def close(self) -> None:
        self._model.close()


def _load_model(phrase: str) -> MicroWakeWord:
    import pymicro_wakeword
    from pymicro_wakeword import MicroWakeWord

    package = Path(pymicro_wakeword.__file__).parent
    config = json.loads((package / "models" / f"{phrase}.json").read_text(encoding="utf-8"))
    library = next(iter((package / "lib").glob("*tensorflowlite_c.*")), None)
    if library is None:
        raise ModelError("the wake phrase runtime (libtensorflowlite_c) is missing from "
                         "pymicro-wakeword")
    # Window 1: the raw probability per call; averaging and the cutoff are WakeDecision's.
    return MicroWakeWord(
        phrase,
        wake_word=config["wake_word"],
        tflite_model=package / "models" / config["model"],
        probability_cutoff=1.0,
        sliding_window_size=1,
        trained_languages=config.get("trained_languages", []),
        libtensorflowlite_c_path=library,
    )


def load_wake_detector(name: str, *, probability_cutoff: float = 0.0, sliding_window: int = 0,
                       refractory_s: float = 2.0) -> MicroWakeDetector:
    """A detector for ``name`` (one of :data:`WAKE_PHRASES`); unknown -> ``ConfigError``.
    0 for the cutoff or the window takes the model's tuned value (:data:`DEFAULT_TUNING`)."""
    return MicroWakeDetector(name, probability_cutoff=probability_cutoff,
                             sliding_window=sliding_window, refractory_s=refractory_s)


def wake_detector(config: WakeConfig) -> MicroWakeDetector | None:
    """The detector ``[wake]`` asks for, or None when no phrase is set."""
    if not config.phrase:
        return None
    return load_wake_detector(config.phrase, probability_cutoff=config.probability_cutoff,
                              sliding_window=config.sliding_window,
                              refractory_s=config.refractory_s)
