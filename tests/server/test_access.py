"""Access control: the bearer token (header, query, ``start``), the Origin allow-list, TLS,
private and public HTTP routes, and refusing to serve beyond loopback without a token.

Pure decisions are tested directly; every rule is also tested on a real server over a real
socket.
"""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
import ssl
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus
from websockets.typing import Origin

from tests.conftest import REPO, make_config
from voice_agent.config import ServerConfig, describe
from voice_agent.engines import Engines
from voice_agent.errors import ConfigError, ProtocolError
from voice_agent.server.access import (
    AccessPolicy,
    Credential,
    RedactTokens,
    build_policy,
    is_loopback,
    presented_token,
    refusal,
    resolve_token,
)
from voice_agent.server.protocol import Start, decode_client
from voice_agent.server.ws import VoiceServer

TOKEN = "s3cret-Token-for-tests"


class Req:
    def __init__(self, path: str = "/", **headers: str) -> None:
        self.path = path
        self.headers = headers


# --- pure decisions ---------------------------------------------------------------------


def test_token_check_is_ok_missing_or_wrong_and_hidden_from_repr() -> None:
    policy = AccessPolicy(token=TOKEN)
    assert policy.check(TOKEN) is Credential.OK
    assert policy.check(None) is Credential.MISSING
    assert policy.check(TOKEN + "x") is Credential.WRONG
    assert policy.check("") is Credential.WRONG
    assert policy.check("é") is Credential.WRONG  # non-ASCII must not raise
    assert AccessPolicy().check(None) is Credential.OK
    assert TOKEN not in repr(policy)


def test_token_is_read_from_header_or_query() -> None:
    assert presented_token(Req(Authorization=f"Bearer {TOKEN}")) == (TOKEN, True)
    assert presented_token(Req(Authorization=f"bearer  {TOKEN} ")) == (TOKEN, True)
    assert presented_token(Req(f"/?token={TOKEN}&x=1")) == (TOKEN, True)
    assert presented_token(Req("/")) == (None, False)
    assert presented_token(Req(Authorization=f"Basic {TOKEN}")) == (None, True)


def test_refusal_rules() -> None:
    policy = AccessPolicy(token=TOKEN, origins=frozenset({"https://kiosk.example"}))
    good = {"Authorization": f"Bearer {TOKEN}"}
    assert refusal(policy, Req(**good), upgrade=False) is None
    assert refusal(policy, Req("/"), upgrade=True) is None  # may still authenticate in start
    assert refusal(policy, Req("/status"), upgrade=False) == (401, "unauthorized\n")
    assert refusal(policy, Req("/?token=nope"), upgrade=True) == (401, "unauthorized\n")
    assert refusal(policy, Req(Authorization="Basic x"), upgrade=True) == (401, "unauthorized\n")
    assert refusal(policy, Req(Origin="https://evil.example", **good), upgrade=True) == (
        403, "origin not allowed\n")
    assert refusal(policy, Req(Origin="https://KIOSK.example/", **good), upgrade=True) is None
    # The default admits no browser page at all (a same-host rule would admit DNS rebinding).
    assert not AccessPolicy().origin_allowed("http://127.0.0.1:8765")
    assert AccessPolicy(origins=frozenset({"*"})).origin_allowed("http://anything")


def test_the_own_kiosk_page_is_admitted_only_where_dns_rebinding_cannot_work() -> None:
    loopback = AccessPolicy(own_page=True)
    for host in ("127.0.0.1:8765", "localhost:8765", "[::1]:8765", "LOCALHOST:8765"):
        assert loopback.origin_allowed(f"http://{host.lower()}", host), host
    # A rebinding page: its name now resolves to 127.0.0.1, so its Host is that name.
    assert not loopback.origin_allowed("http://evil.example:8765", "evil.example:8765")
    # Another page on this machine (another port or scheme) is another origin.
    assert not loopback.origin_allowed("http://127.0.0.1:3000", "127.0.0.1:8765")
    assert not loopback.origin_allowed("https://127.0.0.1:8765", "127.0.0.1:8765")
    assert not loopback.origin_allowed("http://127.0.0.1:8765", None)
    assert not AccessPolicy().origin_allowed("http://127.0.0.1:8765", "127.0.0.1:8765")
    # With a token a rebinding page cannot get in anyway (it never has the token), so the
    # page works under any name the kiosk reaches the appliance by.
    tokened = AccessPolicy(token=TOKEN, own_page=True, tls=True)
    assert tokened.origin_allowed("https://kiosk.example:8765", "kiosk.example:8765")
    assert not tokened.origin_allowed("http://kiosk.example:8765", "kiosk.example:8765")
    assert refusal(tokened, Req(Origin="https://kiosk.example", Host="kiosk.example"),
                   upgrade=True) is None
    assert refusal(loopback, Req(Origin="http://evil.example", Host="evil.example"),
                   upgrade=True) == (403, "origin not allowed\n")


def test_loopback_detection() -> None:
    for host in ("127.0.0.1", "127.0.0.2", "::1", "localhost", "[::1]"):
        assert is_loopback(host), host
    for host in ("0.0.0.0", "", "::", "192.168.1.20", "kiosk.local"):
        assert not is_loopback(host), host


def test_exposed_host_without_token_is_refused_unless_anonymous_is_explicit() -> None:
    with pytest.raises(ConfigError, match="not loopback"):
        build_policy(ServerConfig(host="0.0.0.0"))
    assert build_policy(ServerConfig(host="0.0.0.0", allow_anonymous=True)).token is None
    assert build_policy(ServerConfig(host="0.0.0.0", token=TOKEN)).token == TOKEN
    assert build_policy(ServerConfig()).token is None  # loopback may go without


def test_token_file_and_systemd_credentials(tmp_path: Path) -> None:
    (tmp_path / "voice-agent-token").write_text(f"  {TOKEN}\n")
    absolute = ServerConfig(token_file=str(tmp_path / "voice-agent-token"))
    assert resolve_token(absolute, env={}) == TOKEN
    relative = ServerConfig(token_file="voice-agent-token")
    assert resolve_token(relative, env={"CREDENTIALS_DIRECTORY": str(tmp_path)}) == TOKEN
    with pytest.raises(ConfigError, match="not both"):
        resolve_token(ServerConfig(token=TOKEN, token_file="x"), env={})
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(ConfigError, match="empty"):
        resolve_token(ServerConfig(token_file=str(tmp_path / "empty")), env={})
    with pytest.raises(ConfigError, match="cannot be read"):
        resolve_token(ServerConfig(token_file=str(tmp_path / "missing")), env={})


def test_token_from_environment_is_masked_in_describe() -> None:
    from voice_agent.config import load_config

    config = load_config(env={"VOICE_AGENT_SERVER__TOKEN": TOKEN})
    assert config.server.token == TOKEN
    assert TOKEN not in repr(config)
    assert TOKEN not in json.dumps(describe(config))


def test_start_token_is_never_shown() -> None:
    start = decode_client(json.dumps({"type": "start", "sample_rate": 16000, "token": TOKEN}))
    assert isinstance(start, Start) and start.token == TOKEN
    assert TOKEN not in repr(start)
    with pytest.raises(ProtocolError) as caught:
        decode_client(json.dumps({"type": "start", "sample_rate": 16000, "token": [TOKEN]}))
    assert TOKEN not in str(caught.value)


def test_log_filter_redacts_tokens() -> None:
    record = logging.LogRecord("websockets.server", logging.DEBUG, __file__, 1,
                               "< GET /?token=%s HTTP/1.1 < Authorization: Bearer %s",
                               (TOKEN, TOKEN), None)
    RedactTokens().filter(record)
    assert TOKEN not in record.getMessage()
    assert "[redacted]" in record.getMessage()


# --- on a real server -------------------------------------------------------------------


@asynccontextmanager
async def running(engines: Engines, **server: Any) -> AsyncIterator[VoiceServer]:
    config = make_config(server={"host": "127.0.0.1", "port": 0, **server})
    async with VoiceServer(engines, config) as voice:
        yield voice


async def first_event(ws: ClientConnection) -> dict[str, Any]:
    while True:
        message = await asyncio.wait_for(ws.recv(), 10)
        if isinstance(message, str):
            event: dict[str, Any] = json.loads(message)
            return event


async def start(ws: ClientConnection, **fields: Any) -> dict[str, Any]:
    await ws.send(json.dumps({"type": "start", "sample_rate": 16000, **fields}))
    return await first_event(ws)


async def refused_status(url: str, **kwargs: Any) -> int:
    with pytest.raises(InvalidStatus) as caught:
        async with connect(url, open_timeout=10, **kwargs):
            pass
    return caught.value.response.status_code


def http_get(url: str, headers: dict[str, str] | None = None,
             context: ssl.SSLContext | None = None) -> tuple[int, str]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10, context=context) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


@pytest.mark.slow
@pytest.mark.timeout(60)
async def test_token_in_header_query_or_start_opens_a_session(engines: Engines) -> None:
    async with running(engines, token=TOKEN) as voice:
        url = f"ws://127.0.0.1:{voice.port}"
        async with connect(url, additional_headers={"Authorization": f"Bearer {TOKEN}"}) as ws:
            assert (await start(ws))["type"] == "ready"
        async with connect(f"{url}/?token={TOKEN}") as ws:
            assert (await start(ws))["type"] == "ready"
        async with connect(url) as ws:
            assert (await start(ws, token=TOKEN))["type"] == "ready"


@pytest.mark.slow
@pytest.mark.timeout(60)
async def test_wrong_or_missing_token_is_refused(engines: Engines) -> None:
    async with running(engines, token=TOKEN) as voice:
        url = f"ws://127.0.0.1:{voice.port}"
        # A wrong credential on the upgrade: 401 at once.
        assert await refused_status(
            url, additional_headers={"Authorization": "Bearer wrong"}) == 401
        assert await refused_status(f"{url}/?token=wrong") == 401
        # None on the upgrade: the start message must carry it.
        for fields in ({}, {"token": "not-the-Token-42"}):
            async with connect(url) as ws:
                event = await start(ws, **fields)
                assert event["type"] == "error" and event["code"] == "unauthorized"
                assert "not-the-Token-42" not in json.dumps(event)
                with pytest.raises(ConnectionClosed):
                    await first_event(ws)
                assert ws.close_code == 1008
        # Audio before start is not a way around it.
        async with connect(url) as ws:
            await ws.send(b"\x00\x00" * 320)
            assert (await first_event(ws))["code"] == "not_started"
            assert (await start(ws))["code"] == "unauthorized"


@pytest.mark.slow
@pytest.mark.timeout(60)
async def test_token_is_needed_on_loopback_too_and_never_logged(
        engines: Engines, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    async with running(engines, token=TOKEN) as voice:
        url = f"ws://127.0.0.1:{voice.port}"
        async with connect(f"{url}/?token={TOKEN}") as ws:
            assert (await start(ws))["type"] == "ready"
        async with connect(url, additional_headers={"Authorization": f"Bearer {TOKEN}"}) as ws:
            assert (await start(ws))["type"] == "ready"
        async with connect(url) as ws:
            assert (await start(ws, token=TOKEN))["type"] == "ready"
        assert await refused_status(url, additional_headers={"Authorization": f"Bearer {TOKEN}x"}
                                    ) == 401
    # The server's records (the test's own client logs what it sends; that is not the server).
    server_log = "\n".join(r.getMessage() for r in caplog.records
                           if not r.name.startswith("websockets.client"))
    assert "GET /" in server_log  # the websockets server debug log was on
    assert TOKEN not in server_log


@pytest.mark.slow
@pytest.mark.timeout(60)
async def test_cross_origin_browser_page_is_refused(engines: Engines) -> None:
    async with running(engines, origins=["https://kiosk.example"]) as voice:
        url = f"ws://127.0.0.1:{voice.port}"
        assert await refused_status(url, origin=Origin("https://evil.example")) == 403
        async with connect(url, origin=Origin("https://kiosk.example")) as ws:
            assert (await start(ws))["type"] == "ready"
        async with connect(url) as ws:  # no Origin: not a browser
            assert (await start(ws))["type"] == "ready"
    async with running(engines) as voice:  # default: no browser origin at all
        url = f"ws://127.0.0.1:{voice.port}"
        assert await refused_status(url, origin=Origin("https://kiosk.example")) == 403


@pytest.mark.slow
@pytest.mark.timeout(60)
async def test_status_and_metrics_need_the_token_health_does_not(engines: Engines) -> None:
    async with running(engines, token=TOKEN) as voice:
        base = f"http://127.0.0.1:{voice.port}"
        for path in ("/status", "/metrics"):
            status, _ = await asyncio.to_thread(http_get, base + path)
            assert status == 401, path
            status, _ = await asyncio.to_thread(
                http_get, base + path, {"Authorization": "Bearer wrong"})
            assert status == 401, path
            status, body = await asyncio.to_thread(
                http_get, base + path, {"Authorization": f"Bearer {TOKEN}"})
            assert status == 200, path
        status, body = await asyncio.to_thread(http_get, f"{base}/status?token={TOKEN}")
        assert status == 200 and "llm" in json.loads(body)
        for path in ("/healthz", "/readyz"):
            status, body = await asyncio.to_thread(http_get, base + path)
            assert status in (200, 503), path
            # Nothing private: no sessions, engines, model names or addresses.
            assert len(body) < 80 and "llama" not in body and "session" not in body, body


@pytest.mark.slow
@pytest.mark.timeout(30)
async def test_exposed_server_without_token_does_not_start(engines: Engines) -> None:
    voice = VoiceServer(engines, make_config(server={"host": "0.0.0.0", "port": 0}))
    with pytest.raises(ConfigError, match="not loopback"):
        await voice.start()
    await voice.stop()


@pytest.mark.timeout(60)
def test_cli_serve_refuses_an_exposed_host_without_token_in_one_line(tmp_path: Path) -> None:
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    proc = subprocess.run(
        [sys.executable, "-m", "voice_agent", "serve", "--host", "0.0.0.0", "--port", "0"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=50, check=False)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "config_invalid" in lines[0] and "token" in lines[0], lines


# --- TLS --------------------------------------------------------------------------------


def self_signed(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1/localhost and its key, made here with openssl."""
    cert, key = directory / "cert.pem", directory / "key.pem"
    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make a test certificate")
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-days", "1", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
         "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    return cert, key


@pytest.mark.slow
@pytest.mark.timeout(60)
async def test_tls_serves_wss_and_https(engines: Engines, tmp_path: Path) -> None:
    from voice_agent.client import connect_options

    cert, key = self_signed(tmp_path)
    async with running(engines, tls_cert=str(cert), tls_key=str(key), token=TOKEN) as voice:
        url = f"wss://127.0.0.1:{voice.port}"
        async with connect(url, **connect_options(url, token=TOKEN, ca_file=str(cert))) as ws:
            assert (await start(ws))["type"] == "ready"
        # Without trusting the certificate, the handshake fails.
        with pytest.raises(ssl.SSLCertVerificationError):
            async with connect(url, open_timeout=10):
                pass
        # Plain ws:// to the TLS port is no WebSocket.
        with pytest.raises((InvalidHandshake, ConnectionClosed, OSError)):
            async with connect(f"ws://127.0.0.1:{voice.port}", open_timeout=10) as ws:
                await start(ws, token=TOKEN)
        context = ssl.create_default_context(cafile=str(cert))
        status, body = await asyncio.to_thread(
            http_get, f"https://127.0.0.1:{voice.port}/healthz", None, context)
        assert (status, body) == (200, "ok\n")


def test_bad_tls_files_are_a_config_error(tmp_path: Path) -> None:
    from voice_agent.server.access import ssl_context

    (tmp_path / "bad.pem").write_text("not a certificate")
    with pytest.raises(ConfigError, match="tls"):
        ssl_context(ServerConfig(tls_cert=str(tmp_path / "bad.pem")))
    assert ssl_context(ServerConfig()) is None
