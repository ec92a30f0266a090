"""The echo gate: speech over the reply is what the reply's echo does not explain."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from voice_agent.audio.double_talk import EchoGate, band_powers

FRAME = 160


def speechy(rng: np.random.Generator, seconds: float, level: float) -> np.ndarray:
    """Noise with a syllable-rate envelope: enough like speech for a power model."""
    n = int(16000 * seconds)
    envelope = 0.5 + 0.5 * np.sin(2 * np.pi * 4 * np.arange(n) / 16000) ** 2
    return rng.standard_normal(n) * envelope * level


def echo_of(reference: np.ndarray, delay: int, gain: float, tail: int) -> np.ndarray:
    """A delayed, decaying (reverberant) copy: what a room and a canceller leave."""
    room = np.exp(-np.arange(tail) / (tail / 4)) * np.random.default_rng(9).standard_normal(tail)
    room /= np.sqrt(np.sum(room**2))
    wet = np.convolve(reference, room)[: reference.size]
    return np.concatenate([np.zeros(delay), wet])[: reference.size] * gain


def frames(x: np.ndarray) -> list[np.ndarray]:
    return [np.clip(x[i:i + FRAME], -32768, 32767).astype(np.int16)
            for i in range(0, x.size - FRAME + 1, FRAME)]


def test_with_nothing_playing_the_vad_decides() -> None:
    gate = EchoGate()
    loud = np.full(FRAME, 3000, dtype=np.int16)
    silent = np.zeros(FRAME, dtype=np.int16)
    assert gate.frame(silent, loud, True) is True
    assert gate.frame(silent, loud, False) is False


def test_the_echo_is_not_speech_and_a_person_over_it_is() -> None:
    rng = np.random.default_rng(1)
    reply = speechy(rng, 6.0, 3000)
    leftover = echo_of(reply, delay=960, gain=0.3, tail=4000)  # 60 ms late, reverberant
    person = np.zeros_like(reply)
    # A second of a person at 4 s, 10 dB over what the canceller left of the reply.
    person[16000 * 4 : 16000 * 5] = speechy(rng, 1.0, 3000)
    gate = EchoGate()
    heard = [gate.frame(r, c, True) for r, c in zip(frames(reply), frames(leftover + person),
                                                        strict=True)]
    # After 0.5 s; the person's first 300 ms (the reply is paused well within them, and the
    # rest of what they say is judged by its words).
    learned, talking = heard[50:400], heard[400:430]
    assert sum(learned) / len(learned) < 0.05, "the echo alone passed as speech"
    assert sum(talking) / len(talking) > 0.8, "the person over the echo was not heard"


def test_more_leftover_echo_is_learned_not_taken_for_a_person() -> None:
    # The canceller leaves 6 dB more of the reply after 2 s (its suppressor settling, a
    # louder passage): the model must catch up, not lock itself out as if someone spoke.
    rng = np.random.default_rng(2)
    reply = speechy(rng, 8.0, 3000)
    leftover = echo_of(reply, delay=960, gain=0.3, tail=4000)
    leftover[16000 * 2:] *= 2.0
    gate = EchoGate()
    heard = [gate.frame(r, c, True) for r, c in zip(frames(reply), frames(leftover),
                                                        strict=True)]
    settled = heard[16000 * 3 // FRAME:]  # a second after the change
    assert sum(settled) / len(settled) < 0.05, "the louder echo kept passing as speech"


@settings(max_examples=50, deadline=None)
@given(steps=st.lists(st.tuples(
    arrays(np.int16, st.integers(0, 400)), arrays(np.int16, st.integers(0, 400)),
    st.booleans()), min_size=1, max_size=30))
def test_any_frames_give_a_bounded_answer(
        steps: list[tuple[np.ndarray, np.ndarray, bool]]) -> None:
    gate = EchoGate()
    for reference, cleaned, speech in steps:
        heard = gate.frame(reference, cleaned, speech)
        assert heard in (True, False)
        assert not heard or speech, "the gate never makes speech out of silence"
        assert 0.0 <= gate.unexplained <= 1.0
    assert np.all(band_powers(steps[-1][0]) >= 0)
