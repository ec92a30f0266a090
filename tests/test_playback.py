"""The playback clock and what was heard of a reply: pure, no I/O."""

from __future__ import annotations

import math

from hypothesis import given
from hypothesis import strategies as st

from voice_agent.playback import PlaybackClock, SpokenSpan, heard_text

RATE = 16000


def test_a_client_that_never_reports_plays_what_it_gets_as_it_gets_it() -> None:
    clock = PlaybackClock(RATE, lead_ms=300)
    clock.begin(1, now=10.0)
    assert clock.wait_s(RATE // 10, 10.0) == 0.0
    assert clock.on_sent(RATE // 10 * 3, 10.0) == 0  # 300 ms: plays from now
    assert clock.wait_s(RATE // 10, 10.0) == 0.1  # the lead is full
    assert clock.played(10.1) == RATE // 10
    assert clock.wait_s(RATE // 10, 10.1) == 0.0
    assert clock.on_sent(RATE // 10, 10.1) == RATE // 5  # queued behind 200 ms
    assert clock.played(20.0) == clock.sent == RATE * 4 // 10  # never past what was sent
    # The buffer ran dry: new audio plays from when it arrives, not from a stale anchor.
    assert clock.on_sent(RATE, 20.0) == 0
    assert clock.played(20.5) == RATE * 4 // 10 + RATE // 2


def test_playback_reports_move_the_clock() -> None:
    clock = PlaybackClock(RATE, lead_ms=300)
    clock.begin(7, now=0.0)
    clock.on_sent(RATE, 0.0)
    clock.report(7, 1000, now=0.5)  # a slower client: behind the server's own estimate
    assert clock.played(0.5) == 1000
    assert clock.played(0.6) == 1000 + RATE // 10
    clock.report(6, 5, now=0.6)  # another turn's report changes nothing
    assert clock.played(0.6) == 1000 + RATE // 10
    clock.report(7, 10 * RATE, now=0.7)  # never past what was sent
    assert clock.played(0.7) == RATE


def test_pause_holds_the_position_and_resume_sends_the_rest_again() -> None:
    clock = PlaybackClock(RATE, lead_ms=300)
    clock.begin(1, now=0.0)
    clock.on_sent(RATE, 0.0)
    assert clock.pause(0.25) == RATE // 4
    assert clock.played(5.0) == RATE // 4
    assert math.isinf(clock.wait_s(1, 5.0))
    assert clock.resume(5.0) == RATE // 4
    assert clock.sent == RATE // 4  # what the client dropped goes out again
    assert clock.played(5.1) == RATE // 4  # nothing more was sent yet


def test_unpaced_counts_everything_sent_as_played() -> None:
    clock = PlaybackClock(RATE, lead_ms=0)
    clock.begin(1, now=0.0)
    clock.on_sent(10 * RATE, 0.0)
    assert clock.wait_s(RATE, 0.0) == 0.0
    assert clock.played(0.0) == 10 * RATE


SPANS = [SpokenSpan("Paris is lovely.", 0, 16000), SpokenSpan("It has a tower.", 16000, 30000),
         SpokenSpan("Go in spring.", 30000, 40000)]


def test_heard_text_is_cut_at_the_last_word_played() -> None:
    assert heard_text(SPANS, 0) == ""
    assert heard_text(SPANS, 16000) == "Paris is lovely."
    assert heard_text(SPANS, 30000) == "Paris is lovely. It has a tower."
    assert heard_text(SPANS, 40000) == "Paris is lovely. It has a tower. Go in spring."
    # "It " is 3 of 16 characters: heard once its share of the chunk's sound has played.
    assert heard_text(SPANS, 16000 + 14000 * 3 // 16) == "Paris is lovely. It"
    assert heard_text(SPANS, 16000 + 14000 * 3 // 16 - 1) == "Paris is lovely."


@given(played=st.integers(-10, 50000))
def test_heard_text_only_grows_and_is_a_prefix_of_the_reply(played: int) -> None:
    whole = " ".join(span.text for span in SPANS)
    heard = heard_text(SPANS, played)
    assert whole.startswith(heard)
    assert heard_text(SPANS, played + 500).startswith(heard)
