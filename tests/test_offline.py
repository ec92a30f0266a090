"""Nothing leaves the machine: a served appliance answering real turns, watched by strace.

``voice-agent serve`` runs under ``strace -f`` (every thread and child) recording each
``connect``, ``sendto`` and ``sendmsg``; every socket address in the log must be loopback,
and nothing may go to a DNS resolver (port 53 on any address: a local stub resolver is
loopback too) or to nscd/systemd-resolved over a Unix socket. HOME is a fresh folder, so the
test also sees whether onnxruntime's telemetry wrote its device id under ``~/.cache``.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import speech_clips
from tests.serving import wait_listening
from voice_agent.client import stream_file
from voice_agent.offline import ENV_DEFAULTS, enforce_offline


@dataclass(frozen=True)
class Address:
    family: str
    host: str
    port: int | None
    line: str


_INET = re.compile(r'sa_family=AF_INET, sin_port=htons\((\d+)\), sin_addr=inet_addr\("([^"]+)"\)')
_INET6 = re.compile(
    r'sa_family=AF_INET6, sin6_port=htons\((\d+)\),.*?inet_pton\(AF_INET6, "([^"]+)"')
_UNIX = re.compile(r'sa_family=AF_UNIX, sun_path=(@?"[^"]*")')
_FAMILY = re.compile(r"sa_family=(AF_\w+)")

# Where a resolver listens on this host: nscd, systemd-resolved's varlink socket.
RESOLVER_SOCKETS = ("/nscd/", "/systemd/resolve/")
DNS_PORTS = {53, 853, 5353}


def addresses(log: str) -> list[Address]:
    """Every socket address a ``connect``/``sendto``/``sendmsg`` named in an strace log."""
    found: list[Address] = []
    for line in log.splitlines():
        for match in _INET.finditer(line):
            found.append(Address("AF_INET", match.group(2), int(match.group(1)), line))
        for match in _INET6.finditer(line):
            found.append(Address("AF_INET6", match.group(2), int(match.group(1)), line))
        for match in _UNIX.finditer(line):
            found.append(Address("AF_UNIX", match.group(1).lstrip("@").strip('"'), None, line))
        for family in _FAMILY.findall(line):
            if family not in ("AF_INET", "AF_INET6", "AF_UNIX", "AF_NETLINK"):
                found.append(Address(family, "?", None, line))
    return found


def _loopback(host: str) -> bool:
    try:
        address = ipaddress.ip_address(host.split("%")[0])
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped.is_loopback
    return address.is_loopback


def violations(log: str) -> list[str]:
    """What in an strace log leaves the machine or asks a resolver (empty: nothing)."""
    bad: list[str] = []
    for address in addresses(log):
        if address.family in ("AF_INET", "AF_INET6"):
            if not _loopback(address.host) or address.port in DNS_PORTS:
                bad.append(address.line)
        elif address.family == "AF_UNIX":
            if any(hint in address.host for hint in RESOLVER_SOCKETS):
                bad.append(address.line)
        else:
            bad.append(address.line)
    return bad


def test_violations_parser_on_real_strace_lines() -> None:
    log = "\n".join([
        # The telemetry look-up this guards against, as strace 6 prints it.
        '812 connect(31, {sa_family=AF_INET, sin_port=htons(53), '
        'sin_addr=inet_addr("10.255.255.53")}, 16) = 0',
        '812 sendto(31, "\\1\\2\\1\\0\\0\\1\\0\\0\\0\\0\\0\\0\\6mobile\\6events\\4data\\tmicrosoft'
        '\\3com\\0\\0\\1\\0\\1", 49, MSG_NOSIGNAL, NULL, 0) = 49',
        '813 connect(7, {sa_family=AF_INET, sin_port=htons(53), '
        'sin_addr=inet_addr("127.0.0.53")}, 16) = 0',
        '814 connect(8, {sa_family=AF_INET6, sin6_port=htons(443), sin6_flowinfo=htonl(0), '
        'inet_pton(AF_INET6, "2603:1030::5", &sin6_addr), sin6_scope_id=0}, 28) = -1',
        '815 connect(9, {sa_family=AF_UNIX, sun_path="/var/run/nscd/socket"}, 110) = -1 ENOENT',
        '816 sendmsg(9, {msg_name={sa_family=AF_INET, sin_port=htons(443), '
        'sin_addr=inet_addr("20.42.65.92")}, msg_namelen=16}, 0) = 10',
    ])
    # The query itself (the sendto after connect) names no address: the connect is caught.
    assert len(violations(log)) == 5
    fine = "\n".join([
        '900 connect(5, {sa_family=AF_INET, sin_port=htons(8765), '
        'sin_addr=inet_addr("127.0.0.1")}, 16) = 0',
        '900 connect(6, {sa_family=AF_INET6, sin6_port=htons(8765), sin6_flowinfo=htonl(0), '
        'inet_pton(AF_INET6, "::ffff:127.0.0.1", &sin6_addr), sin6_scope_id=0}, 28) = 0',
        '900 connect(7, {sa_family=AF_UNIX, sun_path="/run/user/0/bus"}, 110) = 0',
        '900 sendto(8, "\\x81\\x05hello", 7, 0, NULL, 0) = 7',
        '900 sendto(9, [{nlmsg_len=20, nlmsg_type=RTM_GETADDR}], 20, 0, '
        '{sa_family=AF_NETLINK, nl_pid=0, nl_groups=00000000}, 12) = 20',
    ])
    assert violations(fine) == []
    assert [a.host for a in addresses(fine)][:2] == ["127.0.0.1", "::ffff:127.0.0.1"]


def test_enforce_offline_sets_the_switches(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ENV_DEFAULTS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("DO_NOT_TRACK", "0")  # an operator's explicit choice is kept
    enforce_offline()
    enforce_offline()  # idempotent
    assert os.environ["HF_HUB_OFFLINE"] == "1"
    assert os.environ["ORT_DISABLE_TELEMETRY"] == "1"
    assert os.environ["DO_NOT_TRACK"] == "0"
    hub = sys.modules.get("huggingface_hub.constants")
    if hub is not None:  # imported before us: its import-time copy is switched too
        assert hub.HF_HUB_OFFLINE


@contextlib.contextmanager
def traced_serve(trace: Path, home: Path) -> Iterator[str]:
    """``voice-agent serve --port 0`` under strace with HOME=home; yields its URL."""
    env = {k: v for k, v in os.environ.items()
           if k not in ENV_DEFAULTS and not k.startswith("XDG_")}
    env["HOME"] = str(home)
    command = ["strace", "-f", "-qq", "-s", "128", "-e", "trace=connect,sendto,sendmsg",
               "-o", str(trace), sys.executable, "-m", "voice_agent", "serve", "--port", "0"]
    process = subprocess.Popen(command, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL,
                               text=True, env=env)
    try:
        url, _ = wait_listening(process, timeout_s=240)
        yield url
    finally:
        # SIGTERM the traced server itself (strace's child), then strace ends with it.
        children = Path(f"/proc/{process.pid}/task/{process.pid}/children")
        pids = children.read_text().split() if children.exists() else []
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid), signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_serving_real_turns_sends_nothing_off_the_machine(tmp_path: Path) -> None:
    if shutil.which("strace") is None:
        pytest.skip("strace is not installed (scripts/bootstrap installs it)")
    trace, home = tmp_path / "trace.log", tmp_path / "home"
    home.mkdir()
    clips = speech_clips()[:2]
    with traced_serve(trace, home) as url:
        results = [asyncio.run(stream_file(clip.path, url)) for clip in clips]
        # onnxruntime's client sends its batch a little after the sessions run.
        time.sleep(5)
    for result in results:
        assert result.reply_text, result.events  # real turns were served
    log = trace.read_text(encoding="utf-8", errors="replace")
    assert re.search(r"\b(sendto|sendmsg)\(", log), "strace recorded nothing: not traced?"
    assert violations(log) == []
    assert not (home / ".cache" / "Microsoft").exists(), sorted(
        str(p.relative_to(home)) for p in home.rglob("*"))
