"""The end-of-turn judges: Smart Turn v3 on real speech, the text check, loading failures."""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import make_config
from voice_agent.asr import WhisperAsr
from voice_agent.audio.pcm import PIPELINE_RATE, Int16Array, last_speech_sample, read_audio
from voice_agent.audio.turn_end import (
    SmartTurnV3,
    combined_probability,
    last_window,
    load_turn_end_model,
    log_mel_features,
    text_complete_probability,
)
from voice_agent.bench import shared_audio_dir
from voice_agent.engines import Engines
from voice_agent.models import Manifest

SILENCE = np.zeros(int(0.2 * PIPELINE_RATE), np.int16)
# Harvard sentences read by two speakers, each a whole statement with a falling end.
SENTENCES = ("spk1_snt5", "spk2_snt1", "spk2_snt4", "spk2_snt5")


@pytest.fixture(scope="module")
def smart() -> SmartTurnV3:
    model = load_turn_end_model(Manifest.load())
    assert isinstance(model, SmartTurnV3)
    return model


@pytest.fixture(scope="module")
def timed_asr() -> WhisperAsr:
    config = make_config()
    return WhisperAsr(Manifest.load().resolve("asr", "default").path, config.asr,
                      word_timestamps=True)


def _sentence(name: str) -> Int16Array:
    shared = shared_audio_dir()
    if shared is None:
        pytest.skip("needs real speech (../shared/audio)")
    audio, _ = read_audio(shared / "speech" / f"{name}.wav")
    return audio[: last_speech_sample(audio, PIPELINE_RATE)]


def _cut_in_middle(audio: Int16Array, asr: WhisperAsr) -> Int16Array:
    words = asr.transcribe(audio).words
    assert len(words) >= 4
    k = len(words) // 2
    cut_s = (words[k - 1].end_s + words[k].start_s) / 2
    return audio[: int(cut_s * PIPELINE_RATE)]


# --- Smart Turn v3, the real model on real speech


@pytest.mark.slow
@pytest.mark.timeout(120)
@pytest.mark.parametrize("name", SENTENCES)
def test_a_whole_sentence_scores_complete_and_its_first_half_does_not(
    name: str, smart: SmartTurnV3, timed_asr: WhisperAsr
) -> None:
    whole = _sentence(name)
    half = _cut_in_middle(whole, timed_asr)
    p_whole = smart.complete_probability(np.concatenate([whole, SILENCE]))
    p_half = smart.complete_probability(np.concatenate([half, SILENCE]))
    assert p_whole >= 0.7, (name, p_whole)
    assert p_half <= 0.4, (name, p_half)


@pytest.mark.timeout(60)
def test_features_are_exactly_pipecats(smart: SmartTurnV3) -> None:
    """The features the model was trained on: pipecat's own extractor (vendored from
    transformers' WhisperFeatureExtractor), loaded from the installed wheel's file."""
    spec = importlib.util.find_spec("pipecat")
    assert spec is not None and spec.submodule_search_locations
    path = Path(next(iter(spec.submodule_search_locations)))
    source = path / "audio" / "turn" / "smart_turn" / "_whisper_features.py"
    loader_spec = importlib.util.spec_from_file_location("_pipecat_whisper_features", source)
    assert loader_spec is not None and loader_spec.loader is not None
    reference = importlib.util.module_from_spec(loader_spec)
    loader_spec.loader.exec_module(reference)
    rng = np.random.default_rng(7)
    # Lengths around the frame edges of the shortcut for leading padding, and past 8 s.
    for n in (0, 1, 199, 200, 201, 559, 560, 561, 16_000, 127_999, 128_000, 200_000):
        audio = (rng.standard_normal(n) * 3000).astype(np.int16)
        window = last_window(audio)
        expected = reference.compute_whisper_log_mel_features(window)
        got = log_mel_features(window, leading_zeros=128_000 - min(n, 128_000))
        assert got.shape == (80, 800)
        np.testing.assert_array_equal(got, expected, err_msg=f"{n} samples")


@pytest.mark.timeout(60)
def test_only_the_last_eight_seconds_count_and_any_length_is_judged(smart: SmartTurnV3) -> None:
    rng = np.random.default_rng(3)
    long = (rng.standard_normal(20 * PIPELINE_RATE) * 2000).astype(np.int16)
    assert smart.complete_probability(long) == smart.complete_probability(long[-8 * 16000:])
    for audio in (np.zeros(0, np.int16), np.zeros(160, np.int16), long[:100]):
        p = smart.complete_probability(audio)
        assert 0.0 <= p <= 1.0


# --- loading never stops the appliance


@pytest.mark.timeout(60)
def test_a_missing_model_file_gives_none_and_a_log_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    user = tmp_path / "manifest.toml"
    user.write_text('[turn.gone]\npath = "nowhere/smart-turn.onnx"\n', encoding="utf-8")
    with caplog.at_level(logging.WARNING, logger="voice_agent.audio.turn_end"):
        assert load_turn_end_model(Manifest.load(user), "gone") is None
    assert "end-of-turn model 'gone' not loaded" in caplog.text
    assert "file not found" in caplog.text


@pytest.mark.timeout(60)
def test_a_corrupt_model_file_gives_none_and_a_log_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "broken.onnx").write_bytes(b"not an onnx graph" * 64)
    user = tmp_path / "manifest.toml"
    user.write_text('[turn.broken]\npath = "broken.onnx"\n', encoding="utf-8")
    with caplog.at_level(logging.WARNING, logger="voice_agent.audio.turn_end"):
        assert load_turn_end_model(Manifest.load(user), "broken") is None
    assert "cannot load the Smart Turn model" in caplog.text


@pytest.mark.timeout(60)
def test_another_onnx_model_is_refused(tmp_path: Path) -> None:
    """Piper's voice is an ONNX too, with other inputs: not taken for an end-of-turn model."""
    voice = Manifest.load().resolve("tts", "default").path
    with pytest.raises(Exception, match="not a Smart Turn v3 model"):
        SmartTurnV3(voice)


@pytest.mark.slow
def test_the_engines_carry_the_model(engines: Engines) -> None:
    assert make_config().turn.endpoint == "smart"
    assert isinstance(engines.turn_end, SmartTurnV3)


# --- the text check


@pytest.mark.parametrize("text", [
    "I'd like to book a table for",
    "I'd like to book a table for...",
    "I went to the shop and",
    "I went to the shop and.",
    "Can you tell me about the",
    "What's the weather like in um",
    "So, uh",
    "I was thinking, er",
    "Call my mother because",
    "The meeting is at three, but",
    "Set a timer for ten minutes and then...",
    "It's about the,",
])
def test_unfinished_utterances_read_incomplete(text: str) -> None:
    assert text_complete_probability(text) <= 0.2, text


@pytest.mark.parametrize("text", [
    "I'd like to book a table for two.",
    "What time does the pharmacy open tomorrow?",
    "Turn off the lights in the kitchen.",
    "Thank you!",
    "Set a timer for ten minutes.",
])
def test_finished_utterances_read_complete(text: str) -> None:
    assert text_complete_probability(text) >= 0.7, text


@pytest.mark.parametrize("text", ["", "   ", "...", "¿?"])
def test_no_words_is_no_evidence(text: str) -> None:
    assert text_complete_probability(text) == 0.5


def test_a_word_that_usually_leads_on_is_doubtful() -> None:
    assert text_complete_probability("I think that") < 0.5
    assert text_complete_probability("So.") < 0.5
    assert text_complete_probability("Yes.") > 0.6
    # A question may end on a preposition: Whisper's "?" keeps it out of the veto.
    assert text_complete_probability("Who did you go with?") >= 0.5
    assert text_complete_probability("Who did you go with") <= 0.2


def test_the_text_vetoes_and_the_sound_decides_the_rest() -> None:
    assert combined_probability(0.99, text_complete_probability("a table for")) <= 0.1
    assert combined_probability(0.95, 0.85) >= 0.9
    assert combined_probability(0.05, 0.85) < 0.5
    for audio_p in np.linspace(0, 1, 11):
        for text_p in np.linspace(0, 1, 11):
            assert 0.0 <= combined_probability(audio_p, text_p) <= 1.0
