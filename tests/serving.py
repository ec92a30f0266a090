"""Real ``voice-agent serve`` processes in tests: waiting for the URL they listen on."""

from __future__ import annotations

import contextlib
import queue
import re
import subprocess
import threading
import time

LISTENING = re.compile(r"listening on (wss?://\S+)")


def wait_listening(process: subprocess.Popen[str], timeout_s: float = 180
                   ) -> tuple[str, list[str]]:
    """Read ``serve``'s log (its stderr) until it says where it listens; returns that URL and
    the log so far. Raises AssertionError, with the log, when it exits or times out first.

    A thread reads the pipe: select() on a buffered pipe misses lines that an earlier
    readline() already pulled into Python's buffer."""
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in process.stderr or ()],
                     daemon=True).start()
    deadline = time.monotonic() + timeout_s
    log: list[str] = []
    while time.monotonic() < deadline and process.poll() is None:
        with contextlib.suppress(queue.Empty):
            log.append(lines.get(timeout=1))
            if match := LISTENING.search(log[-1]):
                return match.group(1), log
    raise AssertionError("server did not start:\n" + "".join(log))
