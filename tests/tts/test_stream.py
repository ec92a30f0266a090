"""Streaming Piper: the window plan (pure), and the split voice against the whole one."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from piper import SynthesisConfig

from tests.conftest import make_config
from voice_agent.config import TtsConfig
from voice_agent.engines import Engines
from voice_agent.models import Manifest
from voice_agent.tts import piper as piper_module
from voice_agent.tts.piper import FIRST_WINDOW_FRAMES, HOP, PiperTts
from voice_agent.tts.stream import Window, decode_windows, split_voice

# --- the window plan --------------------------------------------------------------------


def test_windows_grow_and_carry_context() -> None:
    assert decode_windows(100, first=16, largest=40, context=10) == [
        Window(0, 26, 0, 16),
        Window(6, 58, 16, 48),
        Window(38, 98, 48, 88),
        Window(78, 100, 88, 100),
    ]
    assert decode_windows(0, first=16, largest=40, context=10) == []
    assert decode_windows(5, first=16, largest=40, context=10) == [Window(0, 5, 0, 5)]


@pytest.mark.parametrize(("first", "largest", "context", "growth"),
                         [(0, 8, 2, 2), (8, 4, 2, 2), (4, 8, -1, 2), (4, 8, 2, 0)])
def test_bad_window_settings_are_refused(first: int, largest: int, context: int,
                                         growth: int) -> None:
    with pytest.raises(ValueError, match="windows need"):
        decode_windows(10, first=first, largest=largest, context=context, growth=growth)


@given(frames=st.integers(0, 3000), first=st.integers(1, 64), extra=st.integers(0, 300),
       context=st.integers(0, 30), growth=st.integers(1, 4))
def test_windows_cover_every_frame_once_in_order(
    frames: int, first: int, extra: int, context: int, growth: int
) -> None:
    windows = decode_windows(frames, first=first, largest=first + extra, context=context,
                             growth=growth)
    kept = [frame for w in windows for frame in range(w.keep_from, w.keep_to)]
    assert kept == list(range(frames))
    for w in windows:
        assert 0 <= w.lo <= w.keep_from < w.keep_to <= w.hi <= frames
        assert w.keep_from - w.lo == min(context, w.keep_from)
        assert w.hi - w.keep_to == min(context, frames - w.keep_to)
    if windows:
        assert windows[0].keep_to - windows[0].keep_from == min(first, frames)


# --- the embedded voice -----------------------------------------------------------------

LONG = ("The pharmacy on Main Street opens at nine tomorrow morning and closes at six in the "
        "evening so you have plenty of time to go")


@pytest.fixture(scope="module")
def voice_files() -> tuple[str, str | None]:
    config = make_config()
    model = Manifest.load(config.models.manifest, config.models.directory or None).resolve(
        "tts", config.tts.voice)
    return model.path, model.config_path


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_split_voice_speaks_the_same_samples(voice_files: tuple[str, str | None]) -> None:
    """Without the generator's noise both paths are deterministic: the streamed windows,
    joined, are Piper's whole-sentence audio (to float precision), times the one gain."""
    path, config_path = voice_files
    assert split_voice(path) is not None
    tts = PiperTts(path, config_path, TtsConfig())
    assert tts.streaming and 1.0 < tts._gain < 3.0
    tts._voice.config.noise_scale = tts._voice.config.noise_w_scale = 0.0
    streamed = np.concatenate(list(tts._stream(LONG, threading.Event(), 1.0, gain=1.0)))
    ids = tts._voice.phonemes_to_ids(tts._voice.phonemize(LONG)[0])
    whole = tts._voice.phoneme_ids_to_audio(ids, SynthesisConfig(noise_scale=0.0,
                                                                 noise_w_scale=0.0))
    assert isinstance(whole, np.ndarray)
    whole = whole.reshape(-1)
    assert streamed.size == whole.size
    assert float(np.abs(streamed - whole).max()) < 2e-3


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_a_long_sentence_starts_with_a_short_window(engines: Engines) -> None:
    """The first piece of a 25-word sentence is the first window (about 0.19 s), not the
    whole 6 s sentence: its audio does not wait for the rest to be made."""
    pieces = list(engines.tts.synthesize(LONG, threading.Event()))
    total = sum(p.size for p in pieces)
    assert pieces[0].size == FIRST_WINDOW_FRAMES * HOP
    assert total / engines.tts.sample_rate > 4.0
    assert len(pieces) >= 4
    audio = np.concatenate(pieces)
    assert 0.3 * 32767 < np.abs(audio).max() <= 32767


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_a_short_first_chunk_sounds_soon(engines: Engines) -> None:
    """A five-word first chunk's first audio (speed is for benches: a generous bound on a
    loaded 2-core machine); measured here about 70 ms, from 210 ms for the whole chunk."""
    list(engines.tts.synthesize("Warm up.", threading.Event()))
    started = time.perf_counter()
    pieces = engines.tts.synthesize("The pharmacy opens at nine", threading.Event())
    first = next(pieces)
    assert time.perf_counter() - started < 1.0
    assert first.size > 0 and list(pieces)


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_whole_sentences_without_streaming(voice_files: tuple[str, str | None]) -> None:
    path, config_path = voice_files
    tts = PiperTts(path, config_path, TtsConfig(stream=False))
    assert not tts.streaming
    pieces = list(tts.synthesize("Hello there. How are you today?", threading.Event()))
    assert len(pieces) == 2  # one per sentence
    assert all(p.dtype == np.int16 for p in pieces)


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_a_voice_that_cannot_be_split_is_spoken_whole(
    voice_files: tuple[str, str | None], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(piper_module, "split_voice", lambda _path: None)
    path, config_path = voice_files
    tts = PiperTts(path, config_path, TtsConfig())
    assert not tts.streaming
    assert list(tts.synthesize("Still speaks.", threading.Event()))
