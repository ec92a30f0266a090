"""Who may use the appliance: the bearer token, the Origin allow-list, TLS, and whether the
configured address may be served at all.

Decisions are pure functions of the settings and the request's path and headers; the server
(``ws.py``) only turns them into HTTP responses or closes. The token is resolved once at
start, compared in constant time, and never logged or echoed: :class:`AccessPolicy` keeps it
out of its ``repr`` and :class:`RedactTokens` scrubs it from the websockets library's logs.
"""

from __future__ import annotations

import enum
import hmac
import ipaddress
import logging
import os
import re
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from http import HTTPStatus
from pathlib import Path
from typing import Protocol
from urllib.parse import parse_qs, urlsplit

from voice_agent.config import ServerConfig
from voice_agent.errors import ConfigError

PUBLIC_PATHS = frozenset({"/healthz", "/readyz"})
"""HTTP paths anyone may read: they say only whether the process is up and ready."""


class Credential(enum.Enum):
    OK = "ok"
    """The right token (or none is needed)."""
    MISSING = "missing"
    """No token presented."""
    WRONG = "wrong"
    """A token was presented and it is not the right one (or the header is malformed)."""


@dataclass(frozen=True)
class AccessPolicy:
    token: str | None = field(default=None, repr=False)
    """The bearer token clients must present; None: no authentication."""
    origins: frozenset[str] = frozenset()
    """Browser origins allowed (normalized, lower case); ``*`` allows any."""
    own_page: bool = False
    """Admit the kiosk page this server serves (``server.page``): see :meth:`origin_allowed`."""
    tls: bool = False
    """Served over TLS: the page's own origin is ``https://``."""

    def check(self, presented: str | None) -> Credential:
        if self.token is None:
            return Credential.OK
        if presented is None:
            return Credential.MISSING
        # Constant time: the comparison's duration says nothing about how much was right.
        if hmac.compare_digest(presented.encode("utf-8"), self.token.encode("utf-8")):
            return Credential.OK
        return Credential.WRONG

    def origin_allowed(self, origin: str | None, host: str | None = None) -> bool:
        """A request without ``Origin`` (not a browser) is allowed; a browser page when its
        origin is listed, or when it is this server's own page (``own_page``): ``Origin``
        equal to the scheme and ``Host`` of the request. A bare same-host rule would let a
        DNS-rebinding page in (its ``Host`` is the attacker's name, resolved to us), so
        the own page is admitted only where that cannot work: a token is required (the
        rebinding page, another origin, never has it) or ``Host`` is a loopback name."""
        if origin is None:
            return True
        normalized = normalize_origin(origin)
        if "*" in self.origins or normalized in self.origins:
            return True
        if not self.own_page or not host:
            return False
        own = f"{'https' if self.tls else 'http'}://{host.strip().lower()}"
        if normalized != own:
            return False
        return self.token is not None or is_loopback(urlsplit(own).hostname or "")


class _Request(Protocol):
    @property
    def path(self) -> str: ...

    @property
    def headers(self) -> Mapping[str, str]: ...


def normalize_origin(origin: str) -> str:
    return origin.strip().rstrip("/").lower()


def presented_token(request: _Request) -> tuple[str | None, bool]:
    """The token a request carries (``Authorization: Bearer``, else ``?token=``) and whether
    the request tried to carry one at all (a malformed header counts as a wrong token)."""
    header = request.headers.get("Authorization")
    if header is not None:
        scheme, _, value = header.strip().partition(" ")
        if scheme.lower() != "bearer" or not value.strip():
            return None, True
        return value.strip(), True
    query = parse_qs(urlsplit(request.path).query, keep_blank_values=True)
    if "token" in query:
        return query["token"][0], True
    return None, False


def request_credential(policy: AccessPolicy, request: _Request) -> Credential:
    token, tried = presented_token(request)
    if tried and token is None:
        return Credential.WRONG if policy.token is not None else Credential.OK
    return policy.check(token)


def refusal(policy: AccessPolicy, request: _Request, *, upgrade: bool
            ) -> tuple[HTTPStatus, str] | None:
    """Why an HTTP request (``upgrade``: a WebSocket upgrade) is refused, or None.

    Every non-public route calls this. A missing credential on an upgrade is let through to
    the ``start`` message (browsers cannot set headers and may prefer not to put the token
    in a URL); a wrong one is refused at once.
    """
    if not policy.origin_allowed(request.headers.get("Origin"), request.headers.get("Host")):
        return HTTPStatus.FORBIDDEN, "origin not allowed\n"
    credential = request_credential(policy, request)
    if credential is Credential.WRONG or (credential is Credential.MISSING and not upgrade):
        return HTTPStatus.UNAUTHORIZED, "unauthorized\n"
    return None


def route(path: str) -> str:
    """The path without its query string."""
    return urlsplit(path).path


def is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a hostname or "" (every interface): assume it is reachable


def resolve_token(config: ServerConfig, env: Mapping[str, str] | None = None) -> str | None:
    """``server.token``, else the contents of ``server.token_file`` (stripped). A relative
    ``token_file`` is looked up in ``$CREDENTIALS_DIRECTORY`` when systemd provides one
    (``LoadCredential=``), else taken as given."""
    if config.token and config.token_file:
        raise ConfigError("set server.token or server.token_file, not both")
    if config.token:
        return config.token
    if not config.token_file:
        return None
    environ = os.environ if env is None else env
    path = Path(config.token_file)
    credentials = environ.get("CREDENTIALS_DIRECTORY")
    if not path.is_absolute() and credentials:
        path = Path(credentials) / path
    try:
        token = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"server.token_file {path} cannot be read: "
                          f"{exc.strerror if isinstance(exc, OSError) else 'not text'}"
                          ) from None
    if not token:
        raise ConfigError(f"server.token_file {path} is empty")
    return token


def build_policy(config: ServerConfig, env: Mapping[str, str] | None = None) -> AccessPolicy:
    """The access policy for ``config``; refuses (``ConfigError``, one line) to serve beyond
    loopback without a token unless ``server.allow_anonymous`` says so."""
    token = resolve_token(config, env)
    if token is None and not is_loopback(config.host) and not config.allow_anonymous:
        raise ConfigError(
            f"server.host {config.host or '(all interfaces)'} is not loopback and no token is "
            "set: set server.token or server.token_file, or server.allow_anonymous = true")
    return AccessPolicy(token=token,
                        origins=frozenset(normalize_origin(o) for o in config.origins),
                        own_page=config.page, tls=bool(config.tls_cert))


def ssl_context(config: ServerConfig) -> ssl.SSLContext | None:
    """A TLS server context from ``server.tls_cert``/``server.tls_key`` (PEM), or None."""
    if not config.tls_cert:
        return None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(config.tls_cert, config.tls_key or None)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"server.tls_cert/tls_key cannot be loaded: {exc}") from None
    return context


_SECRETS = re.compile(r"(?i)(token=)[^&\s\"']+|(bearer\s+)\S+")


class RedactTokens(logging.Filter):
    """Scrubs ``?token=…`` and ``Bearer …`` from log records (the websockets library logs
    request lines and headers at debug level)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        redacted = _SECRETS.sub(lambda m: (m.group(1) or m.group(2)) + "[redacted]", message)
        if redacted != message:
            record.msg, record.args = redacted, None
        return True
