"""Shared fixtures: the real engines (loaded once), a real server on port 0, speech clips."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from tests.voices import real_sentence
from voice_agent.audio.pcm import Int16Array
from voice_agent.bench import Clip, load_clips, shared_audio_dir
from voice_agent.config import Config, load_config
from voice_agent.engines import Engines, load_engines
from voice_agent.server.ws import VoiceServer

REPO = Path(__file__).resolve().parent.parent
FIXTURES = REPO / "fixtures"


def make_config(**overrides: dict[str, object]) -> Config:
    """Defaults, with a loopback server on a free port, and the reply unpaced
    (``playback.lead_ms = 0``) unless a test asks for pacing: most tests read whole replies
    and need not wait for them to play in real time."""
    sections = {"server": {"host": "127.0.0.1", "port": 0}, "playback": {"lead_ms": 0},
                **overrides}
    sections.setdefault("llm", {})
    sections["llm"] = {"seed": 1234, **sections["llm"]}  # repeatable replies
    return load_config(env={}, overrides=sections)


SHARED_FIRST_TOKEN_TIMEOUT_S = 10.0
"""The shared engines' first-output limit. They serve every test on a shared CI machine,
where the product's 3 s turned a slow moment into failed turns in unrelated tests (and a
breaker opened on them). Timeouts are tested with engines of their own (test_fallback,
test_scheduler, test_turn)."""


@pytest.fixture(scope="session")
def engines() -> Iterator[Engines]:
    loaded = load_engines(make_config(llm={"first_token_timeout_s": SHARED_FIRST_TOKEN_TIMEOUT_S}))
    yield loaded
    loaded.close()


@pytest.fixture(scope="session")
async def server(engines: Engines) -> AsyncIterator[VoiceServer]:
    async with VoiceServer(engines, make_config()) as running:
        yield running


@pytest.fixture(scope="session")
def server_url(server: VoiceServer) -> str:
    return f"ws://127.0.0.1:{server.port}"


def fixture_clips() -> list[Clip]:
    return [c for c in load_clips(FIXTURES / "manifest.tsv", source="fixtures")
            if "_" not in c.path.stem]


def speech_clips() -> list[Clip]:
    """Real human speech from ../shared/audio when present, else the project's fixtures."""
    shared = shared_audio_dir()
    if shared is None:
        return fixture_clips()
    return load_clips(shared / "manifest.tsv", source="shared", prefix="speech/")


def harvard_clips() -> list[Clip]:
    return [c for c in speech_clips() if c.path.name.startswith("spk")] or fixture_clips()


@pytest.fixture(scope="module")
def sentence() -> Int16Array:
    """A real spoken sentence (see ``tests.voices.real_sentence``)."""
    return real_sentence()
