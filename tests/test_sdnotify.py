"""sd_notify client against real AF_UNIX datagram sockets (filesystem and abstract)."""

from __future__ import annotations

import asyncio
import os
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from voice_agent import sdnotify


def _drain(sock: socket.socket) -> list[bytes]:
    """Every datagram already queued on ``sock``, without waiting."""
    got: list[bytes] = []
    timeout = sock.gettimeout()
    sock.setblocking(False)
    try:
        while True:
            got.append(sock.recv(4096))
    except BlockingIOError:
        return got
    finally:
        sock.settimeout(timeout)


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


@pytest.fixture
def path_socket(tmp_path: Path, clean_env: pytest.MonkeyPatch) -> Iterator[socket.socket]:
    """A datagram socket bound to a file in tmp_path, named in $NOTIFY_SOCKET."""
    path = tmp_path / "notify.sock"
    if len(os.fsencode(path)) >= 108:  # sun_path limit
        pytest.skip(f"tmp_path too long for an AF_UNIX socket: {path}")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        sock.settimeout(2.0)
        clean_env.setenv("NOTIFY_SOCKET", str(path))
        yield sock


@pytest.fixture
def abstract_socket(clean_env: pytest.MonkeyPatch) -> Iterator[socket.socket]:
    """A datagram socket in the Linux abstract namespace, named ``@...`` in $NOTIFY_SOCKET."""
    name = f"voice-agent-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(b"\0" + name.encode())
        sock.settimeout(2.0)
        clean_env.setenv("NOTIFY_SOCKET", "@" + name)
        yield sock


def test_notify_without_systemd_returns_false(clean_env: pytest.MonkeyPatch) -> None:
    assert sdnotify.notify("READY=1") is False


@pytest.mark.parametrize("value", ["", "relative/notify.sock", "@", "vsock:2:1234"])
def test_notify_unsupported_socket_value_returns_false(
    clean_env: pytest.MonkeyPatch, value: str
) -> None:
    clean_env.setenv("NOTIFY_SOCKET", value)
    assert sdnotify.notify("READY=1") is False


def test_notify_missing_socket_file_returns_false_without_raising(
    tmp_path: Path, clean_env: pytest.MonkeyPatch
) -> None:
    clean_env.setenv("NOTIFY_SOCKET", str(tmp_path / "nobody-listens.sock"))
    assert sdnotify.notify("READY=1") is False


def test_ready_and_watchdog_reach_path_socket(path_socket: socket.socket) -> None:
    assert sdnotify.notify("READY=1") is True
    assert path_socket.recv(4096) == b"READY=1"
    assert sdnotify.notify("WATCHDOG=1") is True
    assert path_socket.recv(4096) == b"WATCHDOG=1"


def test_ready_and_watchdog_reach_abstract_socket(abstract_socket: socket.socket) -> None:
    assert sdnotify.notify("READY=1") is True
    assert abstract_socket.recv(4096) == b"READY=1"
    assert sdnotify.notify("WATCHDOG=1") is True
    assert abstract_socket.recv(4096) == b"WATCHDOG=1"


def test_multiline_state_is_one_datagram(path_socket: socket.socket) -> None:
    assert sdnotify.notify("READY=1\nSTATUS=serving on 127.0.0.1:8765") is True
    assert path_socket.recv(4096) == b"READY=1\nSTATUS=serving on 127.0.0.1:8765"


def test_watchdog_interval_absent(clean_env: pytest.MonkeyPatch) -> None:
    assert sdnotify.watchdog_interval_s() is None


def test_watchdog_interval_is_half_the_timeout(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("WATCHDOG_USEC", "30000000")
    assert sdnotify.watchdog_interval_s() == pytest.approx(15.0)
    clean_env.setenv("WATCHDOG_PID", str(os.getpid()))
    assert sdnotify.watchdog_interval_s() == pytest.approx(15.0)


@pytest.mark.parametrize(
    ("usec", "pid"),
    [("30000000", "1"), ("30000000", "not-a-pid"), ("0", ""), ("-5", ""), ("soon", "")],
)
def test_watchdog_interval_rejected(clean_env: pytest.MonkeyPatch, usec: str, pid: str) -> None:
    if pid == "1" and os.getpid() == 1:
        pytest.skip("running as PID 1")
    clean_env.setenv("WATCHDOG_USEC", usec)
    if pid:
        clean_env.setenv("WATCHDOG_PID", pid)
    assert sdnotify.watchdog_interval_s() is None


async def test_watchdog_loop_pings_from_the_event_loop(abstract_socket: socket.socket) -> None:
    task = asyncio.create_task(sdnotify.watchdog_loop(0.05))
    try:
        await asyncio.sleep(0.18)
        pings = _drain(abstract_socket)
        assert pings and set(pings) == {b"WATCHDOG=1"}
        assert 2 <= len(pings) <= 6

        # A blocked event loop must stop the pings: that is how systemd notices a hang.
        time.sleep(0.3)
        assert _drain(abstract_socket) == []

        # Once the loop runs again, the overdue ping goes out at once, and the missed ones
        # are not replayed in a burst (that would be 6 here).
        resumed = time.monotonic()
        late: list[bytes] = []
        while not late and time.monotonic() - resumed < 2.0:
            await asyncio.sleep(0.002)
            late = _drain(abstract_socket)
        assert time.monotonic() - resumed < 0.5
        assert late in ([b"WATCHDOG=1"], [b"WATCHDOG=1"] * 2)  # 2 only on a loaded machine
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_watchdog_loop_rejects_non_positive_interval() -> None:
    with pytest.raises(ValueError):
        await sdnotify.watchdog_loop(0)
