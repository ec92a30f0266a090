"""The Wyoming server's address: ``tcp://HOST:PORT`` (a module of its own so the config can
check it without importing the ``wyoming`` package)."""

from __future__ import annotations

from urllib.parse import urlsplit

from voice_agent.errors import ConfigError


def parse_uri(uri: str) -> tuple[str, int]:
    """``(host, port)`` of ``tcp://HOST:PORT``; port 0 picks a free one."""
    parts = urlsplit(uri)
    try:
        port = parts.port
    except ValueError:
        port = None
    if parts.scheme != "tcp" or not parts.hostname or port is None:
        raise ConfigError(f"wyoming.uri must be tcp://HOST:PORT, got {uri!r}")
    return parts.hostname, port
