"""The ``voice-agent`` commands as a user runs them: real processes, real models."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import harvard_clips, speech_clips
from tests.serving import wait_listening
from voice_agent.audio.pcm import read_audio
from voice_agent.wer import pooled_word_error_rate, word_error_rate

pytestmark = pytest.mark.slow

CLI = [sys.executable, "-m", "voice_agent"]


def run_cli(*args: str, timeout: float = 300, env: dict[str, str] | None = None
            ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout,
                          env=env, check=False)


@contextlib.contextmanager
def served(*args: str) -> Iterator[str]:
    """``voice-agent serve --port 0 ARGS`` as a real process; yields its URL."""
    process = subprocess.Popen([*CLI, "serve", "--port", "0", *args], stderr=subprocess.PIPE,
                               stdout=subprocess.DEVNULL, text=True)
    try:
        url, _ = wait_listening(process)
        yield url
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0, "serve did not stop cleanly on SIGTERM"


@pytest.fixture(scope="module")
def serve_url() -> Iterator[str]:
    with served() as url:
        yield url


def test_client_against_served_appliance(serve_url: str, tmp_path: Path) -> None:
    clip = speech_clips()[1]
    reply = tmp_path / "reply.wav"
    done = run_cli("client", str(clip.path), "--url", serve_url, "--json", "-o", str(reply),
                   "--output-rate", "22050")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert word_error_rate(clip.reference, result["transcript"]) < 0.35, result["transcript"]
    assert result["reply_text"]
    assert result["reply_audio_seconds"] > 0.5
    assert result["voice_to_voice_ms"] > 0  # its budget is checked by `voice-agent bench`
    assert {e["type"] for e in result["events"]} >= {
        "ready", "speech_started", "speech_stopped", "transcript", "reply_text", "turn_done",
        "session_end"}
    audio, rate = read_audio(reply, rate=None)
    assert rate == 22050
    assert audio.size / rate == pytest.approx(result["reply_audio_seconds"], abs=0.01)


def test_transcribe_harvard_sentences_word_error_rate() -> None:
    clips = harvard_clips()
    done = run_cli("transcribe", *(str(c.path) for c in clips))
    assert done.returncode == 0, done.stderr
    heard = dict(line.split("\t", 1) for line in done.stdout.strip().splitlines())
    wer = pooled_word_error_rate((c.reference, heard[str(c.path)]) for c in clips)
    assert wer < 0.10, heard


def test_say_speaks_text_that_transcribes_back(tmp_path: Path) -> None:
    out = tmp_path / "hello.wav"
    text = "The quick brown fox jumps over the lazy dog."
    done = run_cli("say", text, "-o", str(out))
    assert done.returncode == 0, done.stderr
    back = run_cli("transcribe", str(out))
    assert word_error_rate(text, back.stdout) < 0.3, back.stdout


def test_mic_without_a_sound_device_is_one_clear_line() -> None:
    env = {**os.environ, "AUDIODEV": "none"}
    done = run_cli("--mic", timeout=60, env=env)
    if done.returncode == 0:
        pytest.skip("this machine has a working sound device")
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "[no_audio_device]" in lines[0], done.stderr


def test_bad_input_file_is_a_coded_error(tmp_path: Path) -> None:
    bogus = tmp_path / "not-audio.wav"
    bogus.write_bytes(b"this is not a wav file")
    done = run_cli("transcribe", str(bogus))
    assert done.returncode == 2
    assert "[bad_audio]" in done.stderr and "Traceback" not in done.stderr


def test_bad_config_is_a_coded_error(tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text("[vad]\nend_silence_ms = 5\n")
    done = run_cli("serve", "--config", str(config))
    assert done.returncode == 2
    assert "[config_invalid]" in done.stderr and "end_silence_ms" in done.stderr


def test_bench_prints_a_table_and_writes_json(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    done = run_cli("bench", "--clips", "2", "--json", str(out))
    assert done.returncode == 0, done.stderr
    assert "voice-to-voice (client)" in done.stdout and "p95 ms" in done.stdout
    assert "answered by: llama_cpp:smollm2-135m-instruct-q4_1 2" in done.stdout
    assert "TTFT" in done.stderr and "TTFW" in done.stderr
    assert "[2/2]" in done.stderr  # progress is shown
    report = json.loads(out.read_text())
    assert report["summary_ms"]["voice_to_voice_ms"]["n"] == 2
    assert len(report["clips"]) == 2 and report["peak_rss_mb"] > 0


def test_doctor_checks_the_embedded_models() -> None:
    done = run_cli("doctor")
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("ok (sha256 verified)") == 4  # ASR, LLM, TTS, end of turn


def test_serve_falls_back_when_the_primary_server_is_not_there(tmp_path: Path) -> None:
    """The issue's own command: nothing listens on port 9, so every turn is answered by the
    embedded model, and the turn says so. After three refused turns the primary's breaker
    is open, and turns stop paying for the refused connection."""
    primary = "openai:http://127.0.0.1:9/v1#x"
    with served("--llm", primary, "--llm", "llama_cpp:default") as url:
        turns = []
        for clip in speech_clips()[:4]:
            done = run_cli("client", str(clip.path), "--url", url, "--json",
                           "-o", str(tmp_path / "reply.wav"))
            assert done.returncode == 0, done.stdout[-3000:] + done.stderr
            result = json.loads(done.stdout)
            assert result["reply_text"] and result["reply_audio_seconds"] > 0.5
            turns += [e for e in result["events"] if e["type"] == "turn_done"]
        status_url = url.replace("ws://", "http://") + "/status"
        with urllib.request.urlopen(status_url, timeout=10) as response:
            status = json.load(response)
    assert len(turns) == 4, json.dumps(turns)
    fallback = "llama_cpp:smollm2-135m-instruct-q4_1"  # `default`, by its manifest name
    assert all(t["status"] == "ok" and t["engine"] == fallback for t in turns), json.dumps(turns)
    assert not any("[speaker" in t["reply_text"].lower() for t in turns), json.dumps(turns)
    # A turn whose answer was started early (speculation) and begun again when the person
    # went on pays the refusal twice, so the breaker may open after fewer than three turns:
    # refused turns first, then none tried at all.
    refused = [t["fallbacks"] for t in turns]
    tried = sum(f == {primary: "llm_unreachable"} for f in refused)
    assert 1 <= tried <= 3 and refused == [{primary: "llm_unreachable"}] * tried + [{}] * (
        4 - tried), refused
    breakers = {b["engine"]: b["state"] for b in status["llm"]}
    assert breakers == {primary: "open", fallback: "closed"}
