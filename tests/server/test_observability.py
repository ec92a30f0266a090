"""What an operator sees of a real server on port 0 after real turns on real speech:
``/metrics``, ``/readyz``, the audit log, and the audit log after a SIGKILL."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families
from websockets.asyncio.client import ClientConnection, connect

from tests.conftest import harvard_clips, make_config
from tests.serving import wait_listening
from tests.test_audit import rows as audit_rows
from voice_agent.audio.pcm import read_audio
from voice_agent.client import stream_samples
from voice_agent.engines import Engines
from voice_agent.llm.chain import LlmChain
from voice_agent.server.ws import VoiceServer

pytestmark = pytest.mark.slow


def http_get(port: int, path: str, token: str | None = None) -> tuple[int, str, str]:
    """Status, content type and body of a real HTTP GET."""
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}")
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.headers["Content-Type"], response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.headers["Content-Type"], error.read().decode()


async def get(port: int, path: str, token: str | None = None) -> tuple[int, str, str]:
    return await asyncio.to_thread(http_get, port, path, token)


def samples_of(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


@contextlib.asynccontextmanager
async def audited_server(engines: Engines, path: Path, **audit: object
                         ) -> AsyncIterator[VoiceServer]:
    async with VoiceServer(engines, make_config(audit={"path": str(path), **audit})) as server:
        yield server


async def one_turn(port: int, clip_index: int = 0) -> dict[str, Any]:
    samples, rate = read_audio(harvard_clips()[clip_index].path, rate=None)
    result = await stream_samples(samples, rate, f"ws://127.0.0.1:{port}",
                                  trailing_silence_s=1.5, realtime=False, timeout_s=90)
    assert len(result.turns) == 1, result.turns
    return result.turns[0]


@pytest.mark.timeout(180)
async def test_metrics_after_a_real_turn(engines: Engines, tmp_path: Path) -> None:
    async with audited_server(engines, tmp_path / "audit.sqlite3") as server:
        turn = await one_turn(server.port)
        assert turn["status"] == "ok"
        status, content_type, body = await get(server.port, "/metrics")
    assert status == 200 and content_type.startswith("text/plain; version=0.0.4")
    got = samples_of(body)
    for stage in ("endpoint_wait", "asr", "llm_first_token", "first_audio", "voice_to_voice"):
        assert got[(f"voice_agent_{stage}_seconds_count", ())] >= 1, stage
    wait_s = turn["timings_ms"]["endpoint_wait_ms"] / 1000
    assert got[("voice_agent_endpoint_wait_seconds_sum", ())] == pytest.approx(wait_s)
    assert got[("voice_agent_turns_total", (("status", "ok"),))] == 1
    assert got[("voice_agent_sessions_open", ())] == 0  # the client ended its session
    assert got[("voice_agent_input_samples_processed_total", ())] > 16000
    engine = engines.llm.primary.name
    assert got[("voice_agent_llm_breaker_open", (("engine", engine),))] == 0
    for stage in ("asr", "llm", "tts"):
        assert got[("voice_agent_model_load_seconds", (("stage", stage),))] > 0


@pytest.mark.timeout(120)
async def test_sessions_and_errors_are_counted_while_open(engines: Engines,
                                                          tmp_path: Path) -> None:
    async with audited_server(engines, tmp_path / "a.sqlite3") as server:
        async with connect(f"ws://127.0.0.1:{server.port}") as ws:
            await ws.send(json.dumps({"type": "start", "sample_rate": 16000}))
            await ws.send("{not json")
            await ws.send(json.dumps({"type": "ping", "id": "x"}))
            while json.loads(await asyncio.wait_for(ws.recv(), 10))["type"] != "pong":
                pass
            got = samples_of((await get(server.port, "/metrics"))[2])
            assert got[("voice_agent_sessions_open", ())] == 1
            assert got[("voice_agent_errors_total", (("code", "bad_json"),))] == 1
        await asyncio.sleep(0.5)  # the server notices the close
        got = samples_of((await get(server.port, "/metrics"))[2])
        assert got[("voice_agent_sessions_open", ())] == 0


@pytest.mark.timeout(60)
async def test_metrics_need_the_token_when_one_is_set(engines: Engines) -> None:
    config = make_config(server={"host": "127.0.0.1", "port": 0, "token": "s3cret-token"})
    async with VoiceServer(engines, config) as server:
        assert (await get(server.port, "/metrics"))[0] == 401
        assert (await get(server.port, "/metrics", "wrong"))[0] == 401
        status, _, body = await get(server.port, "/metrics", "s3cret-token")
        assert status == 200 and "voice_agent_turns_total" in body
        assert (await get(server.port, "/readyz"))[0] == 200  # probes need no token


@pytest.mark.timeout(60)
async def test_readyz_is_503_when_every_breaker_is_open(engines: Engines) -> None:
    # A chain of its own around the real engine: the shared chain's breaker is left alone.
    config = make_config()
    chain = LlmChain([engines.llm.primary], config.llm)
    own = dataclasses.replace(engines, llm=chain)
    async with VoiceServer(own, config) as server:
        assert (await get(server.port, "/readyz"))[0] == 200
        for _ in range(config.llm.breaker_consecutive_failures):
            chain.record(chain.primary, success=False)
        status, _, body = await get(server.port, "/readyz")
        assert (status, body) == (503, "no LLM engine available\n")
        assert (await get(server.port, "/healthz"))[:1] == (200,)  # alive all the same
        got = samples_of((await get(server.port, "/metrics"))[2])
        assert got[("voice_agent_llm_breaker_open", (("engine", chain.primary.name),))] == 1
        chain.links[0].breaker.probed(True, time.monotonic())  # a probe brings it back
        assert (await get(server.port, "/readyz"))[0] == 200


@pytest.mark.timeout(240)
async def test_audit_rows_for_each_turn_without_text_by_default(engines: Engines,
                                                                tmp_path: Path) -> None:
    path = tmp_path / "audit.sqlite3"
    async with audited_server(engines, path) as server:
        turns = [await one_turn(server.port, i) for i in (0, 1)]
    rows = audit_rows(path)
    assert [(r["turn_id"], r["status"]) for r in rows] == [(t["turn_id"], t["status"])
                                                           for t in turns]
    assert rows[0]["session_id"] != rows[1]["session_id"]
    for row, turn in zip(rows, turns, strict=True):
        assert row["client"] == "127.0.0.1"
        assert row["engine"] == turn["engine"] == engines.llm.primary.name
        assert json.loads(row["timings_ms"]) == turn["timings_ms"]
        assert json.loads(row["error_codes"]) == []
        assert 0 < row["ended_at"] - row["started_at"] < 60
        assert abs(row["ended_at"] - time.time()) < 300
        assert row["transcript"] is None and row["reply_text"] is None
        assert turn["transcript"].split()[0].encode() not in path.read_bytes()


@pytest.mark.timeout(180)
async def test_audit_text_only_when_configured(engines: Engines, tmp_path: Path) -> None:
    path = tmp_path / "audit.sqlite3"
    async with audited_server(engines, path, text=True) as server:
        turn = await one_turn(server.port)
    [row] = audit_rows(path)
    assert (row["transcript"], row["reply_text"]) == (turn["transcript"], turn["reply_text"])
    assert row["transcript"]


# --- SIGKILL mid-conversation ---------------------------------------------------------


def start_serve(audit: Path) -> tuple[subprocess.Popen[str], str]:
    env = {**os.environ, "VOICE_AGENT_AUDIT__PATH": str(audit)}
    process = subprocess.Popen([sys.executable, "-m", "voice_agent", "serve", "--port", "0"],
                               stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
                               env=env)
    try:
        url, _ = wait_listening(process)
    except AssertionError:
        process.kill()
        raise
    return process, url


async def speak(ws: ClientConnection, clip_index: int) -> None:
    """One utterance and 1.5 s of silence, in real time. Sent as fast as possible, the
    third utterance could pass the server's input burst allowance (``server.input_burst_s``)
    and be dropped as too fast: on a slow machine no turn came and the session ended idle."""
    samples, _ = read_audio(harvard_clips()[clip_index].path)
    audio = np.concatenate([samples, np.zeros(24000, np.int16)])
    for start in range(0, audio.size, 320):
        await ws.send(audio[start:start + 320].astype("<i2").tobytes())
        await asyncio.sleep(0.02)


async def until(ws: ClientConnection, kind: str) -> dict[str, Any]:
    while True:
        message = await asyncio.wait_for(ws.recv(), 90)
        if isinstance(message, str) and (event := json.loads(message))["type"] == kind:
            return dict(event)


@pytest.mark.timeout(300)
async def test_every_finished_turn_survives_sigkill(tmp_path: Path) -> None:
    path = tmp_path / "audit.sqlite3"
    process, url = start_serve(path)
    try:
        finished = []
        async with connect(url, max_size=None) as ws:
            await ws.send(json.dumps({"type": "start", "sample_rate": 16000}))
            for index in range(3):
                await speak(ws, index)
                finished.append(await until(ws, "turn_done"))
            # Killed the moment the last turn_done arrived, the session still open: a turn
            # whose end the client saw must already be in the log.
            process.send_signal(signal.SIGKILL)
            assert process.wait(timeout=30) == -signal.SIGKILL
    finally:
        if process.poll() is None:
            process.kill()
    rows = audit_rows(path)  # opens the WAL the killed process left behind
    assert [r["turn_id"] for r in rows] == [t["turn_id"] for t in finished] == [1, 2, 3]
    assert {r["session_id"] for r in rows} and len({r["session_id"] for r in rows}) == 1
    assert [r["status"] for r in rows] == [t["status"] for t in finished]
