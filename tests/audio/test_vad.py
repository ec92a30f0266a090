"""Endpointing (a pure state machine over speech flags) and the WebRTC VAD on real speech."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from voice_agent.audio.frontend import FRAME_SAMPLES
from voice_agent.audio.pcm import Int16Array, read_audio
from voice_agent.audio.vad import (
    FRAME_MS,
    ConfirmedVad,
    Endpointer,
    EndpointEvent,
    SpeechDiscarded,
    SpeechEnd,
    SpeechStart,
    WebRtcVad,
    make_vad,
)
from voice_agent.config import VadConfig

SHARED_AUDIO = Path(__file__).resolve().parents[2] / ".." / "shared" / "audio"


def frame(index: int) -> Int16Array:
    """A frame whose every sample is its index, so utterance audio can be traced back."""
    return np.full(FRAME_SAMPLES, index, dtype=np.int16)


def frame_indices(audio: Int16Array) -> list[int]:
    assert audio.size % FRAME_SAMPLES == 0
    frames = audio.reshape(-1, FRAME_SAMPLES)
    assert np.all(frames == frames[:, :1]), "utterance audio is not made of whole frames"
    return [int(v) for v in frames[:, 0]]


def run(endpointer: Endpointer, flags: list[bool], first: int = 0) -> list[EndpointEvent]:
    events: list[EndpointEvent] = []
    for offset, speech in enumerate(flags):
        events.extend(endpointer.push(frame(first + offset), speech))
    return events


def config(**changes: object) -> VadConfig:
    values = {
        "start_speech_ms": 60,
        "end_silence_ms": 450,
        "pre_roll_ms": 300,
        "min_utterance_ms": 200,
        "max_utterance_s": 20.0,
    }
    values.update(changes)
    vad = VadConfig(**values)  # type: ignore[arg-type]
    vad.validate()
    return vad


# --- Endpointer: examples -------------------------------------------------------------


def test_frame_is_ten_ms() -> None:
    assert FRAME_MS == 10
    assert FRAME_SAMPLES == 160


def test_start_needs_start_speech_ms_of_speech() -> None:
    endpointer = Endpointer(config(start_speech_ms=60))
    assert run(endpointer, [False] * 50 + [True] * 5) == []
    assert not endpointer.in_speech
    events = endpointer.push(frame(55), True)
    # The first speech frame was frame 50, i.e. it began at 500 ms.
    assert events == [SpeechStart(at_ms=500)]
    assert endpointer.in_speech


def test_isolated_clicks_do_not_start_a_turn() -> None:
    endpointer = Endpointer(config(start_speech_ms=60))
    # One speech frame in every 3: never 6 speech frames within the 12-frame start window.
    flags = [i % 3 == 0 for i in range(300)]
    assert run(endpointer, flags) == []


def test_utterance_has_pre_roll_speech_and_trailing_silence() -> None:
    endpointer = Endpointer(config())
    silence_before, speech, silence_after = 80, 120, 45
    flags = [False] * silence_before + [True] * speech + [False] * silence_after
    events = run(endpointer, flags)
    assert [type(e) for e in events] == [SpeechStart, SpeechEnd]
    start, end = events
    assert isinstance(start, SpeechStart) and isinstance(end, SpeechEnd)
    assert start.at_ms == silence_before * FRAME_MS
    assert end.reason == "silence"
    assert end.speech_end_ms == (silence_before + speech) * FRAME_MS
    assert end.at_ms == (silence_before + speech + silence_after) * FRAME_MS
    # 300 ms of pre-roll, counted back from the frame where the start was detected (the
    # 6th speech frame), then everything up to the end decision.
    detected = silence_before + 6 - 1
    first = detected - 30 + 1
    last = silence_before + speech + silence_after - 1
    assert frame_indices(end.audio) == list(range(first, last + 1))
    pre_roll_frames = silence_before - first
    assert end.audio.size == (pre_roll_frames + speech + silence_after) * FRAME_SAMPLES


@pytest.mark.parametrize("pre_roll_ms", [0, 10, 50])
def test_pre_roll_shorter_than_start_keeps_the_speech_that_started_the_turn(
    pre_roll_ms: int,
) -> None:
    endpointer = Endpointer(config(start_speech_ms=60, pre_roll_ms=pre_roll_ms))
    events = run(endpointer, [False] * 20 + [True] * 30 + [False] * 45)
    end = events[-1]
    assert isinstance(end, SpeechEnd)
    # Audio begins at the first speech frame (SpeechStart.at_ms), not 50 ms into the speech.
    assert frame_indices(end.audio)[0] == 20
    assert events[0] == SpeechStart(at_ms=200)


def test_short_pause_does_not_end_the_turn() -> None:
    endpointer = Endpointer(config(end_silence_ms=450))
    flags = [True] * 50 + [False] * 44 + [True] * 50 + [False] * 45
    events = run(endpointer, flags)
    assert [type(e) for e in events] == [SpeechStart, SpeechEnd]
    end = events[1]
    assert isinstance(end, SpeechEnd)
    assert end.speech_end_ms == (50 + 44 + 50) * FRAME_MS
    assert end.at_ms == len(flags) * FRAME_MS


def test_pre_roll_is_limited_to_audio_since_the_last_turn() -> None:
    endpointer = Endpointer(config(pre_roll_ms=300))
    first_turn = [True] * 30 + [False] * 45
    second_turn = [False] * 3 + [True] * 30 + [False] * 45
    events = run(endpointer, first_turn + second_turn)
    ends = [e for e in events if isinstance(e, SpeechEnd)]
    assert len(ends) == 2
    # The second utterance starts right after the first one ended: nothing is repeated.
    assert frame_indices(ends[1].audio)[0] == len(first_turn)


def test_max_length_cuts_the_utterance() -> None:
    endpointer = Endpointer(config(max_utterance_s=1.0))
    events = run(endpointer, [True] * 100)
    assert [type(e) for e in events] == [SpeechStart, SpeechEnd]
    end = events[1]
    assert isinstance(end, SpeechEnd)
    assert end.reason == "max_length"
    assert end.audio.size == 100 * FRAME_SAMPLES
    assert end.at_ms == end.speech_end_ms == 100 * FRAME_MS
    # Speech that goes on starts a new utterance, without losing frames in between.
    more = run(endpointer, [True] * 100, first=100)
    assert [type(e) for e in more] == [SpeechStart, SpeechEnd]
    second = more[1]
    assert isinstance(second, SpeechEnd)
    assert frame_indices(second.audio) == list(range(100, 200))


def test_too_short_burst_is_discarded() -> None:
    endpointer = Endpointer(config(min_utterance_ms=200))
    events = run(endpointer, [False] * 10 + [True] * 15 + [False] * 45)
    assert [type(e) for e in events] == [SpeechStart, SpeechDiscarded]
    discarded = events[1]
    assert isinstance(discarded, SpeechDiscarded)
    assert discarded.reason == "too_short"
    assert discarded.at_ms == 70 * FRAME_MS
    assert not endpointer.in_speech


def test_burst_of_exactly_min_utterance_is_kept() -> None:
    endpointer = Endpointer(config(min_utterance_ms=200))
    events = run(endpointer, [True] * 20 + [False] * 45)
    assert [type(e) for e in events] == [SpeechStart, SpeechEnd]


def test_flush_closes_an_open_utterance() -> None:
    endpointer = Endpointer(config())
    assert endpointer.flush() == []
    run(endpointer, [False] * 5 + [True] * 40 + [False] * 10)
    events = endpointer.flush()
    assert len(events) == 1
    end = events[0]
    assert isinstance(end, SpeechEnd)
    assert end.reason == "flush"
    assert end.at_ms == 55 * FRAME_MS
    assert end.speech_end_ms == 45 * FRAME_MS
    assert frame_indices(end.audio) == list(range(55))
    assert endpointer.flush() == []
    assert not endpointer.in_speech


def test_flush_discards_a_too_short_open_utterance() -> None:
    endpointer = Endpointer(config(min_utterance_ms=200))
    run(endpointer, [True] * 8)
    events = endpointer.flush()
    assert len(events) == 1
    assert isinstance(events[0], SpeechDiscarded)


# --- Endpointer: any flag sequence ----------------------------------------------------

runs = st.lists(st.tuples(st.booleans(), st.integers(1, 60)), max_size=30)
configs = st.builds(
    config,
    start_speech_ms=st.sampled_from([10, 30, 60, 100]),
    end_silence_ms=st.sampled_from([100, 200, 450]),
    pre_roll_ms=st.sampled_from([0, 50, 300]),
    min_utterance_ms=st.sampled_from([0, 100, 200]),
    max_utterance_s=st.sampled_from([1.0, 2.0]),
)


@settings(max_examples=300, deadline=None)
@given(vad=configs, flag_runs=runs, do_flush=st.booleans())
def test_endpointer_events_are_consistent_for_any_flags(
    vad: VadConfig, flag_runs: list[tuple[bool, int]], do_flush: bool
) -> None:
    flags = [flag for flag, count in flag_runs for _ in range(count)]
    start_frames = max(1, vad.start_speech_ms // FRAME_MS)
    end_frames = max(1, vad.end_silence_ms // FRAME_MS)
    pre_roll = max(start_frames, vad.pre_roll_ms // FRAME_MS)
    max_frames = int(vad.max_utterance_s * 1000) // FRAME_MS
    min_frames = vad.min_utterance_ms // FRAME_MS

    endpointer = Endpointer(vad)
    timeline: list[tuple[int, EndpointEvent]] = []
    for index, speech in enumerate(flags):
        timeline.extend((index, e) for e in endpointer.push(frame(index), speech))
        assert len(timeline) < 2 or timeline[-1][0] != timeline[-2][0], "two events at once"
    if do_flush:
        timeline.extend((len(flags) - 1, e) for e in endpointer.flush())
        assert not endpointer.in_speech

    open_at: int | None = None  # frame index where the open utterance was detected
    resume = 0  # first frame not consumed by an earlier utterance
    for index, event in timeline:
        if isinstance(event, SpeechStart):
            assert open_at is None, "two starts without an end"
            assert flags[index], "a start is detected on a speech frame"
            window = flags[max(resume, index - 2 * start_frames + 1) : index + 1]
            assert sum(window) >= start_frames
            assert event.at_ms == (index + 1 - start_frames) * FRAME_MS
            open_at = index
            continue
        assert open_at is not None, "an end without a start"
        assert event.at_ms == (index + 1) * FRAME_MS
        speech_frames = start_frames + sum(flags[open_at + 1 : index + 1])
        if isinstance(event, SpeechDiscarded):
            assert speech_frames < min_frames
        else:
            assert isinstance(event, SpeechEnd)
            assert speech_frames >= min_frames
            indices = frame_indices(event.audio)
            first = max(resume, open_at - pre_roll + 1)
            assert indices == list(range(first, index + 1))
            last_speech = event.speech_end_ms // FRAME_MS - 1
            assert open_at <= last_speech <= index
            assert flags[last_speech]
            assert not any(flags[last_speech + 1 : index + 1])
            trailing = index - last_speech
            if event.reason == "silence":
                assert trailing == end_frames
            elif event.reason == "max_length":
                assert len(indices) == max_frames
                assert trailing < end_frames
            else:
                assert event.reason == "flush"
                assert do_flush and index == len(flags) - 1
        open_at = None
        resume = index + 1
    assert (open_at is not None) == endpointer.in_speech


# --- the real VAD ---------------------------------------------------------------------


def test_make_vad_picks_webrtc_confirmed_by_silero_by_default() -> None:
    assert isinstance(make_vad(VadConfig()), ConfirmedVad)
    assert isinstance(make_vad(VadConfig(confirm_probability=0)), WebRtcVad)


def test_webrtc_vad_rejects_silence_and_faint_noise() -> None:
    vad = WebRtcVad(2)
    assert not vad.is_speech(np.zeros(FRAME_SAMPLES, dtype=np.int16))
    rng = np.random.default_rng(0)
    quiet = rng.normal(0, 2, FRAME_SAMPLES).astype(np.int16)
    assert not vad.is_speech(quiet)


def _labelled_valid_wav() -> tuple[Int16Array, np.typing.NDArray[np.bool_]]:
    manifest = SHARED_AUDIO / "manifest.tsv"
    wav = SHARED_AUDIO / "vad" / "valid.wav"
    if not manifest.is_file() or not wav.is_file():
        pytest.skip(f"shared audio not available at {SHARED_AUDIO}")
    line = next(
        row for row in manifest.read_text(encoding="utf-8").splitlines()
        if row.startswith("vad/valid.wav\t")
    )
    label_text = line.split("\t")[3]
    # "[0-2s chunk] speech(start end pairs, s rel. to chunk)=0.38 2; [2-4s chunk] ...=none"
    labels = np.zeros(0, dtype=bool)
    for part in label_text.removeprefix("VAD labels:").split(";"):
        span, _, pairs = part.partition("=")
        chunk = span.strip().split("]")[0].lstrip("[").split("s")[0]
        chunk_start, chunk_end = (float(v) for v in chunk.split("-"))
        chunk_labels = np.zeros(round((chunk_end - chunk_start) * 100), dtype=bool)
        values = [float(v) for v in pairs.split()] if pairs.strip() != "none" else []
        for begin, end in zip(values[::2], values[1::2], strict=True):
            chunk_labels[round(begin * 100) : round(end * 100)] = True
        labels = np.concatenate([labels, chunk_labels])
    samples, rate = read_audio(wav)
    assert rate == 16000
    return samples, labels


def test_webrtc_vad_agrees_with_labels_on_real_speech() -> None:
    samples, labels = _labelled_valid_wav()
    assert labels.size == 800 and labels.any() and not labels.all()
    vad = WebRtcVad(2)
    predicted = np.array([
        vad.is_speech(samples[i * FRAME_SAMPLES : (i + 1) * FRAME_SAMPLES])
        for i in range(labels.size)
    ])
    agreement = float(np.mean(predicted == labels))
    recall = float(np.mean(predicted[labels]))
    # Measured: 96.8% frame agreement and 99.8% recall at aggressiveness 2.
    assert agreement > 0.90
    assert recall > 0.95


def test_endpointer_finds_the_labelled_utterances() -> None:
    samples, labels = _labelled_valid_wav()
    vad, endpointer = WebRtcVad(2), Endpointer(VadConfig())
    events: list[EndpointEvent] = []
    for i in range(labels.size):
        chunk = samples[i * FRAME_SAMPLES : (i + 1) * FRAME_SAMPLES]
        events.extend(endpointer.push(chunk, vad.is_speech(chunk)))
    ends = [e for e in events if isinstance(e, SpeechEnd)]
    starts = [e for e in events if isinstance(e, SpeechStart)]
    # Labelled speech: 0.38-2.70 s and 4.10-5.88 s. Measured: starts at 390/4070 ms, ends
    # of speech at 2780/6020 ms.
    assert [s.at_ms for s in starts] == pytest.approx([380, 4100], abs=100)
    assert [e.speech_end_ms for e in ends] == pytest.approx([2700, 5880], abs=250)
    assert all(e.reason == "silence" for e in ends)
