"""The wake phrase detector on real speech: the phrase said by Piper and by espeak-ng is
detected where it is said; narration and human speech never wake it; how the input is cut
into chunks does not matter; an unknown phrase is a coded config error."""

from __future__ import annotations

import shutil
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from voice_agent.audio.pcm import Int16Array, read_audio, resample
from voice_agent.audio.wake import (
    FRAME_SAMPLES,
    RATE,
    WAKE_PHRASES,
    MicroWakeDetector,
    WakeDecision,
    load_wake_detector,
    wake_detector,
)
from voice_agent.cli import _config, build_parser
from voice_agent.config import load_config
from voice_agent.engines import load_tts
from voice_agent.errors import ConfigError
from voice_agent.models import Manifest
from voice_agent.tts.piper import PiperTts

REPO = Path(__file__).resolve().parents[2]
SHARED = REPO.parent / "shared" / "audio"
needs_espeak = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="no espeak-ng")
SILENCE = np.zeros(RATE // 2, np.int16)


@pytest.fixture(scope="module")
def piper() -> PiperTts:
    config = load_config(env={})
    return load_tts(config, Manifest.load(config.models.manifest, config.models.directory or None))


def say(tts: PiperTts, text: str) -> Int16Array:
    audio = np.concatenate(list(tts.synthesize(text, threading.Event())))
    return resample(audio, tts.sample_rate, RATE)


def espeak(tmp_path: Path, text: str, voice: str) -> Int16Array:
    out = tmp_path / "say.wav"
    subprocess.run(["espeak-ng", "-v", voice, "-w", str(out), text], check=True,
                   capture_output=True)
    return read_audio(out)[0]


@pytest.fixture(scope="module")
def detector() -> Iterator[MicroWakeDetector]:
    made = load_wake_detector("okay_nabu")
    yield made
    made.close()


def detections(detector: MicroWakeDetector, audio: Int16Array, chunks: list[int] | None = None
               ) -> list[int]:
    """Stream samples at which the detector fired, feeding ``chunks`` sizes (10 ms frames
    by default, cycling)."""
    detector.reset()
    sizes = chunks or [FRAME_SAMPLES]
    fired = []
    position = 0
    index = 0
    while position < audio.size:
        size = sizes[index % len(sizes)]
        if detector.process(audio[position:position + size]):
            assert detector.detected_at is not None
            assert position < detector.detected_at <= position + size
            fired.append(detector.detected_at)
        position += size
        index += 1
    return fired


@pytest.mark.timeout(60)
def test_the_phrase_said_by_piper_is_detected_where_it_is_said(
        piper: PiperTts, detector: MicroWakeDetector) -> None:
    phrase = say(piper, "Okay Nabu.")
    before = say(piper, "I was just thinking about dinner.")
    audio = np.concatenate([SILENCE, before, SILENCE, phrase, SILENCE,
                            say(piper, "Turn on the lights."), SILENCE])
    start = SILENCE.size * 2 + before.size
    fired = detections(detector, audio)
    assert len(fired) == 1, fired
    assert start < fired[0] <= start + phrase.size + RATE // 2


@needs_espeak
@pytest.mark.timeout(60)
@pytest.mark.parametrize("voice", ["en-us", "en-gb"])
def test_the_phrase_said_by_espeak_is_detected(tmp_path: Path, detector: MicroWakeDetector,
                                               voice: str) -> None:
    audio = np.concatenate([SILENCE, espeak(tmp_path, "Okay Nabu.", voice), SILENCE])
    assert len(detections(detector, audio)) == 1


@pytest.mark.timeout(60)
@pytest.mark.parametrize("phrase", [p for p in WAKE_PHRASES if p != "okay_nabu"])
def test_each_model_hears_its_own_phrase_and_not_another(piper: PiperTts, phrase: str) -> None:
    model = load_wake_detector(phrase)
    try:
        own = np.concatenate([SILENCE, say(piper, f"{WAKE_PHRASES[phrase]}."), SILENCE])
        other = np.concatenate([SILENCE, say(piper, "Okay Nabu."), SILENCE])
        assert len(detections(model, own)) == 1
        assert detections(model, other) == []
    finally:
        model.close()


def human_speech() -> list[Int16Array]:
    if (SHARED / "narration").is_dir():
        paths = [*sorted((SHARED / "narration").glob("*.wav")),
                 *sorted((SHARED / "speech").glob("*.wav"))]
    else:
        paths = sorted((REPO / "fixtures").glob("utt0?.wav"))
    return [read_audio(p)[0] for p in paths]


@pytest.mark.timeout(120)
def test_narration_and_human_speech_never_wake_it(detector: MicroWakeDetector) -> None:
    speech = human_speech()
    assert speech
    # One stream, as a session would hear it: the clips back to back with pauses.
    audio = np.concatenate([np.concatenate([clip, SILENCE]) for clip in speech])
    assert detections(detector, audio) == []


@pytest.fixture(scope="module")
def two_phrases(piper: PiperTts) -> Int16Array:
    """The phrase twice, 3 s apart (past the refractory period): two detections."""
    phrase = say(piper, "Okay Nabu.")
    return np.concatenate([SILENCE, phrase, np.zeros(3 * RATE, np.int16), phrase, SILENCE])


@pytest.mark.timeout(120)
@settings(max_examples=12, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(chunks=st.lists(st.integers(1, 4000), min_size=1, max_size=6))
def test_detection_does_not_depend_on_how_the_input_is_chunked(
        detector: MicroWakeDetector, two_phrases: Int16Array, chunks: list[int]) -> None:
    expected = detections(detector, two_phrases)
    assert len(expected) == 2
    assert detections(detector, two_phrases, chunks) == expected


def test_an_unknown_phrase_is_a_coded_config_error() -> None:
    with pytest.raises(ConfigError) as raised:
        load_wake_detector("hey siri")
    assert raised.value.code == "config_invalid"
    for name in WAKE_PHRASES:
        assert name in raised.value.message
    with pytest.raises(ConfigError):
        load_config(env={}, overrides={"wake": {"phrase": "computer"}})


def test_names_are_forgiving_and_the_config_builds_the_detector() -> None:
    assert load_wake_detector("Okay Nabu").phrase == "okay_nabu"
    assert wake_detector(load_config(env={}).wake) is None  # no phrase by default
    made = wake_detector(load_config(env={}, overrides={"wake": {"phrase": "hey-jarvis"}}).wake)
    assert made is not None
    assert made.phrase == "hey_jarvis"


@pytest.mark.parametrize("argv", [["serve", "--wake", "alexa"], ["--wake", "alexa", "--mic"],
                                  ["mic", "--wake", "alexa"]])
def test_wake_option_sets_the_phrase(argv: list[str]) -> None:
    assert _config(build_parser().parse_args(argv)).wake.phrase == "alexa"


@pytest.mark.parametrize("values", [{"follow_up_s": -1}, {"probability_cutoff": 0.2},
                                    {"probability_cutoff": 1.0}, {"sliding_window": 99},
                                    {"refractory_s": 60}])
def test_wake_settings_out_of_range_are_rejected(values: dict[str, float]) -> None:
    with pytest.raises(ConfigError):
        load_config(env={}, overrides={"wake": values})


def test_decision_averages_a_window_and_holds_off_after_a_detection() -> None:
    decision = WakeDecision(cutoff=0.8, window=3, refractory_steps=10)
    # One high output is not enough: the mean of the window must pass the cutoff.
    assert [decision.step(p) for p in (0.1, 0.1, 1.0, 0.1, 0.1)] == [False] * 5
    fired = [decision.step(0.99) for _ in range(40)]
    # Sustained: the window refills after each refractory period; one detection per 13 steps.
    assert [i for i, f in enumerate(fired) if f] == [2, 15, 28]
    decision.reset()
    assert [decision.step(0.99) for _ in range(3)] == [False, False, True]
