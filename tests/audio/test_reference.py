"""EchoTimeline: reference audio on the input timeline, checked against a plain model."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from voice_agent.audio.reference import EchoTimeline, InputGaps


class _Model:
    """The same rules written the obvious way: a dict from sample to value."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.cursor = 0
        self.values: dict[int, int] = {}
        self.cut_ahead = 0
        self.cut_late = 0

    def place(self, start: int, samples: list[int]) -> None:
        for i, value in enumerate(samples):
            at = start + i
            if at < self.cursor:
                self.cut_late += 1
            elif at >= self.cursor + self.size:
                self.cut_ahead += 1
            else:
                self.values[at] = value

    def take(self, start: int, n: int) -> list[int]:
        if start > self.cursor:
            self.values = {k: v for k, v in self.values.items() if k >= start}
            self.cursor = start
        return [self.values.get(start + i, 0) if start + i >= self.cursor else 0
                for i in range(n)]

    def clear_from(self, start: int) -> None:
        self.values = {k: v for k, v in self.values.items() if k < start}


_samples = st.lists(st.integers(-32768, 32767), max_size=40)
_ops = st.lists(
    st.one_of(
        st.tuples(st.just("place"), st.integers(-10, 120), _samples),
        st.tuples(st.just("take"), st.integers(-10, 120), st.integers(0, 40)),
        st.tuples(st.just("clear"), st.integers(-10, 120), st.just(0)),
    ),
    max_size=30,
)


@settings(max_examples=300, deadline=None)
@given(size=st.integers(1, 50), ops=_ops)
def test_timeline_matches_the_plain_model(size: int, ops: list[tuple[str, int, object]]) -> None:
    timeline, model = EchoTimeline(size), _Model(size)
    for op, start, arg in ops:
        if op == "place":
            assert isinstance(arg, list)
            timeline.place(start, np.array(arg, dtype=np.int16))
            model.place(start, arg)
        elif op == "take":
            assert isinstance(arg, int)
            got = timeline.take(start, arg)
            assert got.dtype == np.int16 and got.size == arg
            assert got.tolist() == model.take(start, arg)
        else:
            timeline.clear_from(start)
            model.clear_from(start)
        assert timeline.cut_ahead_samples == model.cut_ahead
        assert timeline.cut_late_samples == model.cut_late
        assert timeline.cursor == model.cursor
        assert timeline.cursor <= timeline.placed_until <= timeline.cursor + size


def test_frames_come_back_in_step_with_the_input() -> None:
    reply = np.arange(1, 801, dtype=np.int16)
    timeline = EchoTimeline(16_000)
    timeline.place(320, reply)  # starts playing 20 ms into the input stream
    frames = [timeline.take(i * 160, 160) for i in range(8)]
    assert not frames[0].any() and not frames[1].any()
    assert np.array_equal(np.concatenate(frames[2:7]), reply)
    assert not frames[7].any()
    assert timeline.placed_until == timeline.cursor


def test_audio_too_far_ahead_is_cut_and_counted() -> None:
    timeline = EchoTimeline(1_000)
    timeline.place(600, np.ones(1_000, dtype=np.int16))
    assert timeline.cut_ahead_samples == 600
    assert timeline.take(0, 1_000).sum() == 400
    assert timeline.placed_until == 1_000


def test_a_later_place_overwrites_and_clear_drops_the_rest() -> None:
    timeline = EchoTimeline(1_000)
    timeline.place(0, np.full(300, 5, dtype=np.int16))
    timeline.place(100, np.full(100, 7, dtype=np.int16))
    timeline.clear_from(250)
    got = timeline.take(0, 300)
    assert got[:100].tolist() == [5] * 100
    assert got[100:200].tolist() == [7] * 100
    assert got[200:250].tolist() == [5] * 50
    assert not got[250:].any()


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError):
        EchoTimeline(0)
    with pytest.raises(ValueError):
        EchoTimeline(10).take(0, -1)


# --- InputGaps: where a client stopped sending -------------------------------------------


def stream(gaps: InputGaps, chunks: list[tuple[int, float]]) -> list[int]:
    """``(samples, arrival time)`` pairs through ``gaps``; the gap reported for each."""
    return [gaps.arrived(samples, at) for samples, at in chunks]


@given(st.lists(st.floats(0.0, 0.2), min_size=1, max_size=200),
       st.sampled_from([160, 320, 1024, 8000]))
@settings(max_examples=60, deadline=None)
def test_a_stream_in_real_time_with_jitter_has_no_gap(jitter: list[float], chunk: int) -> None:
    gaps = InputGaps(16000, max_late_s=0.5)
    times = [(i + 1) * chunk / 16000 + late for i, late in enumerate(jitter)]
    assert stream(gaps, [(chunk, at) for at in times]) == [0] * len(times)


def test_a_stream_a_little_slower_than_real_time_never_adds_up_to_a_gap() -> None:
    gaps = InputGaps(16000, max_late_s=0.5)
    # 20 ms of audio every 21 ms for two minutes: 6 s behind by the end.
    assert not any(stream(gaps, [(320, i * 0.021) for i in range(6000)]))


def test_silence_from_the_client_is_a_gap_of_its_length() -> None:
    gaps = InputGaps(16000, max_late_s=0.5)
    before = [(320, i * 0.02) for i in range(1, 51)]  # 1 s, on time
    assert not any(stream(gaps, before))
    # Nothing for 4 s (a reply played), then the next 20 ms.
    assert gaps.arrived(320, 1.0 + 4.0 + 0.02) == 4 * 16000
    assert gaps.arrived(320, 5.04) == 0  # and on time again


def test_a_pause_after_a_file_sent_fast_is_still_seen() -> None:
    gaps = InputGaps(16000, max_late_s=0.5)
    gaps.arrived(320, 0.0)
    gaps.arrived(16000 * 60, 0.1)  # a minute of audio in 100 ms
    assert gaps.arrived(320, 10.0) > 8 * 16000


def test_input_gaps_refuse_nonsense() -> None:
    with pytest.raises(ValueError):
        InputGaps(0, max_late_s=0.5)
    with pytest.raises(ValueError):
        InputGaps(16000, max_late_s=0)
