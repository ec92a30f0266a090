"""A minimal sd_notify(3) client: readiness and watchdog pings for systemd.

Why not a dependency: the protocol is one datagram on an AF_UNIX socket named by
``$NOTIFY_SOCKET``; ``python-systemd`` needs libsystemd headers to build, and the appliance
should not grow a C dependency for twenty lines of socket code.

How the service uses it (``Type=notify`` + ``WatchdogSec=`` in the unit):

* ``notify("READY=1")`` only after the models are loaded and the listener is bound, so
  ``systemctl start`` (and units ordered after us) wait until the service can answer.
* ``watchdog_loop(watchdog_interval_s())`` as a task on the serving event loop. The pings
  come from the event loop itself, not from a helper thread, on purpose: a loop blocked by a
  stuck engine call or a deadlock stops the pings, and systemd kills and restarts the
  service ("the service never hangs silently"). A thread would keep pinging a dead service.
* ``notify("STOPPING=1")`` when a graceful shutdown starts, and ``STATUS=...`` lines for
  ``systemctl status``.

Outside systemd (tests, ``voice-agent --mic`` in a terminal) every call is a cheap no-op.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket

__all__ = ["notify", "watchdog_interval_s", "watchdog_loop"]

log = logging.getLogger(__name__)


def _socket_address(value: str) -> str | bytes | None:
    """The ``connect``/``sendto`` address for a ``$NOTIFY_SOCKET`` value.

    A leading ``@`` names a Linux abstract socket: its address starts with a NUL byte and has
    no file. Only absolute paths and abstract names are valid (as in libsystemd); anything
    else (e.g. ``vsock:``) is not supported here and is treated as "no socket".
    """
    if value.startswith("@") and len(value) > 1:
        return b"\0" + value[1:].encode()
    if value.startswith("/"):
        return value
    return None


def notify(state: str) -> bool:
    """Send ``state`` (e.g. ``"READY=1"``, ``"WATCHDOG=1"``, ``"STATUS=loading models"``;
    several assignments may be joined with newlines) to the service manager.

    Returns True when the datagram was sent, False when not running under systemd (no or
    unsupported ``$NOTIFY_SOCKET``) or when sending failed. It never raises: a lost
    notification must not take the service down (systemd reacts to the *absence* of
    READY/WATCHDOG, which is the right failure signal anyway).
    """
    value = os.environ.get("NOTIFY_SOCKET", "")
    address = _socket_address(value) if value else None
    if address is None:
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.sendto(state.encode(), address)
    except OSError as exc:
        log.warning("sd_notify(%r) to %s failed: %s", state, value, exc)
        return False
    return True


def watchdog_interval_s() -> float | None:
    """How often to send ``WATCHDOG=1``, in seconds, or None when no watchdog is asked for.

    systemd sets ``$WATCHDOG_USEC`` (the unit's ``WatchdogSec=``) and ``$WATCHDOG_PID``.
    The PID check matters because the environment is inherited: a child process (a worker,
    a subprocess) must not think the watchdog is its job. The result is half the timeout, as
    sd_watchdog_enabled(3) recommends, so one late ping does not trigger a restart.
    """
    usec = os.environ.get("WATCHDOG_USEC", "")
    pid = os.environ.get("WATCHDOG_PID", "")
    if pid:
        try:
            if int(pid) != os.getpid():
                return None
        except ValueError:
            return None
    try:
        timeout_us = int(usec)
    except ValueError:
        return None
    if timeout_us <= 0:
        return None
    return timeout_us / 1_000_000 / 2


async def watchdog_loop(interval_s: float) -> None:
    """Send ``WATCHDOG=1`` now and then every ``interval_s`` seconds until cancelled.

    Run it as a task on the event loop that serves sessions (see the module docstring for
    why it must not be a thread). Pings are sent even if one fails; the loop ends only by
    cancellation, which it lets propagate.
    """
    if interval_s <= 0:
        raise ValueError("watchdog interval must be > 0")
    loop = asyncio.get_running_loop()
    next_at = loop.time()
    while True:
        notify("WATCHDOG=1")
        # Schedule against the loop clock, not "sleep after send", so pings do not drift.
        # After a stall the overdue ping has just gone out; missed ones are not replayed.
        now = loop.time()
        next_at += interval_s
        if next_at <= now:
            next_at = now + interval_s
        await asyncio.sleep(next_at - loop.time())

