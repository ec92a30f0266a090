"""LLM engine that streams from an OpenAI-compatible HTTP server (vLLM, llama.cpp, Ollama).

For sites that serve the model from a GPU box on their own network. Only the standard library
(``http.client``) is used: no new runtime dependency for an appliance that mostly runs local.

Every reply opens its own connection. A TCP handshake on a LAN costs far less than a token,
and it makes cancellation simple and certain: closing the socket is how the server learns that
nobody listens any more (vLLM and llama.cpp abort a request whose client has gone).
"""

from __future__ import annotations

import contextlib
import http.client
import ipaddress
import json
import os
import re
import socket
import ssl
import threading
import time
from collections.abc import Generator, Iterator, Sequence
from typing import Any
from urllib.parse import urlsplit

from voice_agent.config import LlmConfig
from voice_agent.errors import ConfigError, EngineError, EngineTimeout, EngineTruncated
from voice_agent.llm.base import ChatMessage
from voice_agent.llm.r1 import PromptPolicy, is_deepseek_r1
from voice_agent.llm.text import THINK_CLOSE, THINK_OPEN

API_KEY_ENV = "VOICE_AGENT_OPENAI_API_KEY"
"""Where the API key comes from when none is passed: keys do not belong in config files."""

_READ_SIZE = 65536
_MAX_LINE_BYTES = 1 << 20
_CANCEL_POLL_S = 0.05
_EXCERPT_CHARS = 200
_HOST = re.compile(r"^[A-Za-z0-9._-]+$")


def _error(message: str, code: str, *, transient: bool = True) -> EngineError:
    err = EngineError(message, code=code)
    err.transient = transient
    return err


class _SseDecoder:
    """Incremental server-sent-events parser: bytes in, ``data`` payloads out.

    Works on any split of the stream (mid-line, mid-JSON, mid-UTF-8 character): lines are
    cut on bytes and decoded whole. Comments (``: ping``), ``event``/``id``/``retry`` fields
    and blank keepalives are dropped; multi-line ``data`` is joined with newlines (the spec).
    """

    def __init__(self) -> None:
        self._buffer = b""
        self._data: list[str] = []

    def feed(self, chunk: bytes) -> list[str]:
        *lines, self._buffer = (self._buffer + chunk).split(b"\n")
        if len(self._buffer) > _MAX_LINE_BYTES:
            raise _error("SSE line longer than 1 MiB", "llm_bad_response")
        payloads: list[str] = []
        for raw in lines:
            line = raw.rstrip(b"\r").decode("utf-8", errors="replace")
            if not line:
                if self._data:
                    payloads.append("\n".join(self._data))
                    self._data = []
            elif not line.startswith(":"):
                name, _, value = line.partition(":")
                if name == "data":
                    self._data.append(value.removeprefix(" "))
        return payloads

    def finish(self) -> list[str]:
        """Payloads of an event the server did not end with a blank line before closing."""
        payloads = self.feed(b"\n\n") if self._buffer or self._data else []
        self._buffer, self._data = b"", []
        return payloads


class _CancelWatch:
    """Shuts the socket down as soon as ``cancel`` is set.

    A read blocked on a silent server (a long prefill, a queue) cannot be interrupted any
    other way; without this, barge-in would wait for the next token or the read timeout, and
    the server would go on computing a reply nobody hears.
    """

    def __init__(self, sock: socket.socket, cancel: threading.Event) -> None:
        self._sock = sock
        self._cancel = cancel
        self._lock = threading.Lock()
        self._done = False
        threading.Thread(target=self._run, name="openai-http-cancel", daemon=True).start()

    def _run(self) -> None:
        while not self._cancel.wait(_CANCEL_POLL_S):
            if self._done:
                return
        with self._lock:  # never touch a socket the stream has already closed
            if not self._done:
                # The plain socket's shutdown, also under TLS: it wakes a blocked recv.
                with contextlib.suppress(OSError):
                    socket.socket.shutdown(self._sock, socket.SHUT_RDWR)

    def stop(self) -> None:
        with self._lock:
            self._done = True


class OpenAiHttpEngine:
    """Streams chat completions from ``{base_url}/chat/completions`` (``stream: true``).

    Reasoning that the server splits off (``delta.reasoning_content`` or ``delta.reasoning``,
    from vLLM/Ollama reasoning parsers) is yielded inside ``<think>…</think>`` so the
    pipeline's ReasoningFilter keeps it out of speech, exactly like a local R1 model's.

    Without such a parser, whether the server's template opened ``<think>`` is unknown, so
    for a model named like DeepSeek-R1 ``opens_reasoning`` defaults to None: its text is
    held as reasoning until a ``<think>``/``</think>`` tag or the end of the stream decides.
    """

    concurrency = 8
    """Calls in flight at once (``llm.scheduler``): the server batches them; more wait in
    this engine's queue. Matches the default ``server.max_sessions``."""

    def __init__(
        self,
        base_url: str,
        model: str,
        config: LlmConfig,
        *,
        api_key: str | None = None,
        connect_timeout_s: float = 2.0,
        read_timeout_s: float | None = None,
        name: str | None = None,
        opens_reasoning: bool | None = False,
    ) -> None:
        """``read_timeout_s`` (default: ``config.first_token_timeout_s`` until the first
        piece, then ``config.token_timeout_s``) bounds every wait for data, so a stalled
        server raises EngineTimeout instead of hanging the turn."""
        base_url = base_url.strip().rstrip("/")
        try:
            parts = urlsplit(base_url)
            port, host = parts.port, parts.hostname or ""
        except ValueError as exc:
            raise ConfigError(f"bad LLM server URL {base_url!r}: {exc}") from None
        scheme = parts.scheme.lower()
        if scheme not in ("http", "https"):
            raise ConfigError(f"LLM server URL must be http:// or https://, got {base_url!r}")
        if not _valid_host(host):
            raise ConfigError(f"LLM server URL has no valid host: {base_url!r}")
        if parts.username is not None or parts.password is not None:
            raise ConfigError(f"put the API key in {API_KEY_ENV}, not in the LLM server URL")
        if parts.query or parts.fragment:
            raise ConfigError(f"LLM server URL must not have a query or fragment: {base_url!r}")
        self._scheme, self._host = scheme, host
        self._port = port or (443 if scheme == "https" else 80)
        self._path = parts.path + "/chat/completions"
        self.model = model.strip() or "default"
        self.name = name or f"openai:{base_url}#{self.model}"
        self.opens_reasoning = opens_reasoning
        self.policy = PromptPolicy.for_template("", self.model, config)
        """R1 by name: DeepSeek's sampling, and the system prompt in the first user turn."""
        self._config = config
        self._api_key = api_key if api_key is not None else os.environ.get(API_KEY_ENV) or None
        self._connect_timeout_s = connect_timeout_s
        self._first_timeout_s = read_timeout_s or config.first_token_timeout_s
        self._token_timeout_s = read_timeout_s or config.token_timeout_s

    @classmethod
    def from_spec(cls, spec: str, config: LlmConfig) -> OpenAiHttpEngine:
        """``[openai:]http://host:port/v1#model`` (model optional: ``default``)."""
        spec = spec.strip().removeprefix("openai:")
        base_url, _, model = spec.partition("#")
        opens: bool | None = None if is_deepseek_r1("", model) else False
        return cls(base_url, model, config, opens_reasoning=opens)

    def __repr__(self) -> str:  # names the server, never the key
        return f"OpenAiHttpEngine({self.name!r})"

    def stream(self, messages: Sequence[ChatMessage], cancel: threading.Event) -> Iterator[str]:
        """Yield reply pieces; raise EngineError (coded, see the module's tests) on failure.

        Safe for concurrent sessions: each call has its own connection and the engine holds
        no mutable state, so the server (not a lock here) decides how requests interleave.
        """
        if cancel.is_set():
            return
        conn, sock = self._connect()
        watch = _CancelWatch(sock, cancel)
        waited = self._first_timeout_s
        replies = self._reply(conn, messages, cancel)
        try:
            for piece in replies:
                if waited != self._token_timeout_s:
                    waited = self._token_timeout_s
                    sock.settimeout(waited)
                yield piece
                if cancel.is_set():
                    return
        except Exception as exc:
            if cancel.is_set():  # whatever the shut-down socket raised: we asked for it
                return
            if isinstance(exc, EngineError):
                raise
            if isinstance(exc, TimeoutError):
                raise EngineTimeout(f"{self.name}: no data from the server for {waited:g} s"
                                    ) from None
            if isinstance(exc, OSError | http.client.HTTPException):
                raise _error(f"{self.name}: connection broke mid-reply: {exc!r}",
                             "llm_bad_response") from None
            raise
        finally:
            watch.stop()
            replies.close()
            conn.close()

    def _connect(self) -> tuple[http.client.HTTPConnection, socket.socket]:
        conn: http.client.HTTPConnection
        if self._scheme == "https":
            conn = http.client.HTTPSConnection(self._host, self._port,
                                               timeout=self._connect_timeout_s,
                                               context=ssl.create_default_context())
        else:
            conn = http.client.HTTPConnection(self._host, self._port,
                                              timeout=self._connect_timeout_s)
        try:
            conn.connect()
        except OSError as exc:
            conn.close()
            # A bad certificate will not fix itself; a refused or silent host may.
            raise _error(f"{self.name}: cannot connect: {exc!r}", "llm_unreachable",
                         transient=not isinstance(exc, ssl.SSLCertVerificationError)) from None
        sock: socket.socket = conn.sock  # set by connect()
        sock.settimeout(self._first_timeout_s)
        return conn, sock

    def _reply(self, conn: http.client.HTTPConnection, messages: Sequence[ChatMessage],
               cancel: threading.Event) -> Generator[str, None, None]:
        """Send the request, then yield reply pieces, reasoning wrapped in think tags."""
        progress = time.monotonic()  # a server may prefill before it sends headers
        limit = self._first_timeout_s
        conn.request("POST", self._path, body=json.dumps(self._body(messages)).encode(),
                     headers=self._headers())
        response = conn.getresponse()
        if response.status != 200:
            transient = response.status >= 500 or response.status in (408, 429)
            raise _error(f"{self.name}: HTTP {response.status} {response.reason}: "
                         f"{self._excerpt(response)}", "llm_http_error", transient=transient)
        if "json" in (response.getheader("Content-Type") or ""):
            raise _error(f"{self.name}: expected an event stream, got JSON: "
                         f"{self._excerpt(response)}", "llm_bad_response")
        decoder = _SseDecoder()
        thinking = False
        finish_reason = ""
        while not cancel.is_set():
            data = response.read1(_READ_SIZE)
            payloads = decoder.feed(data) if data else decoder.finish()
            for payload in payloads:
                if cancel.is_set():
                    return
                if payload.strip() == "[DONE]":
                    if thinking:
                        yield THINK_CLOSE
                    self._check_length(finish_reason)
                    return
                delta, reason = self._parse(payload)
                finish_reason = finish_reason or reason
                reasoning = delta.get("reasoning_content") or delta.get("reasoning")
                content = delta.get("content")
                if isinstance(reasoning, str) and reasoning:
                    yield reasoning if thinking else THINK_OPEN + reasoning
                    thinking = True
                if isinstance(content, str) and content:
                    yield THINK_CLOSE + content if thinking else content
                    thinking = False
                if reasoning or content:
                    progress, limit = time.monotonic(), self._token_timeout_s
            if not data:
                if thinking:
                    yield THINK_CLOSE
                if finish_reason or cancel.is_set():  # [DONE] is a formality after it
                    self._check_length(finish_reason)
                    return
                raise _error(f"{self.name}: the server closed the stream before the reply "
                             "ended (no [DONE]; llama-cpp-python does this when the prompt "
                             "exceeds its context)", "llm_bad_response")
            if time.monotonic() - progress > limit:  # keepalives alone do not count
                raise EngineTimeout(f"{self.name}: no tokens for {limit:g} s")

    def _check_length(self, finish_reason: str) -> None:
        """A stream the length limit cut off is not a whole reply: the turn must know (a
        reasoning model cut mid-thought has no answer to speak)."""
        if finish_reason == "length":
            raise EngineTruncated(f"{self.name}: the reply reached the generation limit "
                                  f"({self.policy.generation_limit(self._config)} tokens)")

    def _parse(self, payload: str) -> tuple[dict[str, Any], str]:
        """The delta of one chunk and its finish_reason ("" while the reply goes on)."""
        try:
            chunk = json.loads(payload)
        except ValueError:
            raise _error(f"{self.name}: malformed JSON in the event stream: "
                         f"{payload[:_EXCERPT_CHARS]!r}", "llm_bad_response") from None
        if not isinstance(chunk, dict):
            raise _error(f"{self.name}: unexpected event {payload[:_EXCERPT_CHARS]!r}",
                         "llm_bad_response")
        if "error" in chunk:  # vLLM and others report failures mid-stream this way
            raise _error(f"{self.name}: server error mid-stream: "
                         f"{self._redact(json.dumps(chunk['error']))[:_EXCERPT_CHARS]}",
                         "llm_http_error")
        choices = chunk.get("choices")
        if not isinstance(choices, list) or not choices:
            return {}, ""  # e.g. a final usage-only chunk
        choice = choices[0] if isinstance(choices[0], dict) else {}
        delta = choice.get("delta")
        reason = choice.get("finish_reason")
        return (delta if isinstance(delta, dict) else {}), (str(reason) if reason else "")

    def _body(self, messages: Sequence[ChatMessage]) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.model,
            "messages": self.policy.payload(messages),
            "stream": True,
            "max_tokens": self.policy.generation_limit(self._config),
            "temperature": self.policy.temperature,
            "top_p": self.policy.top_p,
        }
        if self._config.seed >= 0:  # vLLM, llama.cpp and Ollama honour it: repeatable tests
            body["seed"] = self._config.seed
        return body

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json", "Accept": "text/event-stream",
                   "User-Agent": "voice-agent"}
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        return headers

    def _excerpt(self, response: http.client.HTTPResponse) -> str:
        """A short, one-line, key-free piece of an error body for the message."""
        try:
            body = response.read(4 * _EXCERPT_CHARS).decode("utf-8", errors="replace")
        except (OSError, http.client.HTTPException):
            body = ""
        return self._redact(" ".join(body.split()))[:_EXCERPT_CHARS] or "(empty body)"

    def _redact(self, text: str) -> str:
        return text.replace(self._api_key, "***") if self._api_key else text


def _valid_host(host: str) -> bool:
    if ":" in host:
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            return False
        return True
    return bool(_HOST.match(host))
