"""A wake phrase gates the appliance (``[wake]``): over a real socket, with the real detector
and engines, in real time."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from tests.conftest import make_config
from tests.test_turn_emotion import spoken
from voice_agent.engines import Engines
from voice_agent.room_client import Room, RoomClient
from voice_agent.server.protocol import SpeechStarted, TranscriptEvent, TurnDone, WakeEvent
from voice_agent.server.ws import VoiceServer
from voice_agent.wer import word_error_rate

QUESTION = "What is the capital of France?"
QUIET_ROOM = Room(rir=np.array([1.0]), echo_db=-90.0)
"""No echo to speak of: this is about the gate."""


def answered(e: object) -> bool:
    return isinstance(e, TurnDone) and e.status == "ok"


@pytest.mark.slow
@pytest.mark.timeout(180)
async def test_nothing_is_heard_before_the_phrase_and_follow_ups_need_none(
        engines: Engines) -> None:
    question = spoken(engines, QUESTION, 0.8)
    phrase = spoken(engines, "Okay Nabu.", 0.8)
    config = make_config(wake={"phrase": "okay_nabu", "follow_up_s": 3.0})
    async with VoiceServer(engines, config) as server, \
            RoomClient(f"ws://127.0.0.1:{server.port}", QUIET_ROOM) as client:
        client.say(question, after_s=0.3)
        await asyncio.sleep(4.0)
        assert not client.events(SpeechStarted), "speech before the phrase was listened to"
        assert not client.events(TranscriptEvent)

        client.say(phrase, after_s=0.2)
        awake = await client.wait_for(lambda e: isinstance(e, WakeEvent), 10)
        assert isinstance(awake.event, WakeEvent)
        assert (awake.event.state, awake.event.phrase) == ("awake", "okay_nabu")

        client.say(question, after_s=0.3)
        first = await client.wait_for(answered, 60)
        heard = client.events(TranscriptEvent)
        assert len(heard) == 1 and word_error_rate(QUESTION, heard[0].text) <= 0.2, heard
        assert "okay" not in heard[0].text.lower(), "the phrase is not part of the question"

        mark = len(client.heard)
        client.say(question, after_s=0.5)  # within wake.follow_up_s of the answer
        await client.wait_for(answered, 60, since=mark)
        assert first.at_s < client.heard[-1].at_s

        asleep = await client.wait_for(
            lambda e: isinstance(e, WakeEvent) and e.state == "asleep", 15, since=mark)
        mark = len(client.heard)
        client.say(question, after_s=0.3)
        await asyncio.sleep(4.0)
        assert not [h for h in client.heard[mark:] if isinstance(h.event, SpeechStarted)]
        assert asleep.at_s > first.at_s
