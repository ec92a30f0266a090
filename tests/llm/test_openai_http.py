"""OpenAI-compatible HTTP engine: a real llama.cpp server, and scripted servers for faults.

The real server (llama-cpp-python's, on the embedded SmolLM2 GGUF) shows the engine works
against an actual implementation; the tiny stdlib servers below misbehave on purpose, one
precise fault each, which no real server can be asked to do on cue.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import json
import select
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from voice_agent.config import LlmConfig
from voice_agent.errors import ConfigError, EngineError, EngineTimeout, EngineTruncated
from voice_agent.llm.base import ChatMessage
from voice_agent.llm.openai_http import API_KEY_ENV, OpenAiHttpEngine, _SseDecoder
from voice_agent.llm.text import ReasoningFilter
from voice_agent.models import Manifest

CONFIG = LlmConfig(seed=1234, max_tokens=32, temperature=0.0)
QUESTION = [
    ChatMessage("system", "You are a helpful assistant. Answer in one short sentence."),
    ChatMessage("user", "What is the capital of France?"),
]
READ_TIMEOUT_S = 0.5


def collect(engine: OpenAiHttpEngine, cancel: threading.Event | None = None,
            messages: list[ChatMessage] = QUESTION) -> list[str]:
    return list(engine.stream(messages, cancel or threading.Event()))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def raises_engine_error(engine: OpenAiHttpEngine, pieces: list[str] | None = None
                        ) -> EngineError:
    """Stream until the engine raises; pieces yielded before that go into ``pieces``."""
    with pytest.raises(EngineError) as caught:
        for piece in engine.stream(QUESTION, threading.Event()):
            if pieces is not None:
                pieces.append(piece)
    return caught.value


# --- a real llama.cpp server ---------------------------------------------------------------

SERVER_KEY = "test-key-4d1f"


@pytest.fixture(scope="module")
def llama_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``python -m llama_cpp.server`` on the embedded GGUF, on a free loopback port."""
    model = Manifest.load().resolve("llm", "default").path
    port = free_port()
    log_path = tmp_path_factory.mktemp("llama_server") / "server.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "llama_cpp.server", "--model", str(model),
             "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "1024",
             "--api_key", SERVER_KEY,
             # One thread: with more, llama.cpp's spinning thread barrier makes the first
             # request take 10+ s on a busy 2-core CI machine (measured); 1 thread: ~1 s.
             "--n_threads", "1", "--n_threads_batch", "1"],
            stdout=log, stderr=subprocess.STDOUT)
    base_url = f"http://127.0.0.1:{port}/v1"
    try:
        wait_until_up(base_url, proc, log_path)
        collect(real_engine(base_url))  # warm-up: the first request is the slowest
        yield base_url
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def wait_until_up(base_url: str, proc: subprocess.Popen[bytes], log_path: Path) -> None:
    deadline = time.monotonic() + 60
    request = urllib.request.Request(f"{base_url}/models",
                                     headers={"Authorization": f"Bearer {SERVER_KEY}"})
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"llama.cpp server exited: {log_path.read_text(errors='replace')}")
        with contextlib.suppress(OSError), urllib.request.urlopen(request, timeout=2) as answer:
            if answer.status == 200:
                return
        time.sleep(0.2)
    pytest.fail(f"llama.cpp server not up in 60 s: {log_path.read_text(errors='replace')}")


REAL_CONFIG = dataclasses.replace(CONFIG, first_token_timeout_s=60.0, token_timeout_s=30.0)
"""These tests are about behaviour, not speed: generous timeouts for a loaded CI machine."""


def real_engine(base_url: str, model: str = "smollm2", **kwargs: Any) -> OpenAiHttpEngine:
    kwargs.setdefault("api_key", SERVER_KEY)
    return OpenAiHttpEngine(base_url, model, kwargs.pop("config", REAL_CONFIG), **kwargs)


@pytest.mark.slow
def test_real_server_streams_an_answer(llama_server: str) -> None:
    pieces = collect(real_engine(llama_server))
    assert len(pieces) >= 3
    assert all(pieces)
    text = "".join(pieces)
    assert any(ch.isalpha() for ch in text), text
    assert "Paris" in text, text


@pytest.mark.slow
def test_real_server_cancel_after_first_piece_stops_within_1s(llama_server: str) -> None:
    engine = real_engine(llama_server, config=dataclasses.replace(REAL_CONFIG, max_tokens=400))
    cancel = threading.Event()
    story = [ChatMessage("user", "Tell me a very long story about a dragon and a knight.")]
    stream = engine.stream(story, cancel)
    assert next(stream)
    cancel.set()
    started = time.monotonic()
    after = list(stream)
    assert time.monotonic() - started < 1.0
    assert len(after) <= 1
    # The server took the disconnect in stride: the next request is answered normally.
    assert "".join(collect(engine)).strip()


@pytest.mark.slow
def test_real_server_serves_any_model_name(llama_server: str) -> None:
    """llama-cpp-python serves its one model whatever ``model`` says (it echoes the name
    back); vLLM and Ollama answer 404 instead, which is a permanent llm_http_error."""
    assert "".join(collect(real_engine(llama_server, model="no-such-model"))).strip()


@pytest.mark.slow
def test_real_server_wrong_key_is_permanent(llama_server: str) -> None:
    err = raises_engine_error(real_engine(llama_server, api_key="wrong-key"))
    assert (err.code, err.transient) == ("llm_http_error", False)
    assert "401" in str(err) and "Invalid API key" in str(err)
    assert "wrong-key" not in str(err)


@pytest.mark.slow
def test_real_server_wrong_path_is_permanent(llama_server: str) -> None:
    err = raises_engine_error(real_engine(llama_server.replace("/v1", "/v9")))
    assert (err.code, err.transient) == ("llm_http_error", False)
    assert "404" in str(err)


@pytest.mark.slow
def test_real_server_prompt_over_context_is_a_bad_response(llama_server: str) -> None:
    """llama-cpp-python answers 200 and then closes an empty event stream when the prompt
    exceeds n_ctx (it raises only once streaming began): no [DONE], so llm_bad_response."""
    engine = real_engine(llama_server)
    with pytest.raises(EngineError) as caught:
        collect(engine, messages=[ChatMessage("user", "hello world " * 800)])
    assert (caught.value.code, caught.value.transient) == ("llm_bad_response", True)


# --- nothing listening ---------------------------------------------------------------------

def test_closed_port_is_unreachable_within_connect_timeout() -> None:
    engine = OpenAiHttpEngine(f"http://127.0.0.1:{free_port()}/v1", "m", CONFIG,
                              connect_timeout_s=1.0)
    started = time.monotonic()
    err = raises_engine_error(engine)
    assert time.monotonic() - started < 1.0 + 0.5
    assert (err.code, err.transient) == ("llm_unreachable", True)


def test_silent_host_is_unreachable_within_connect_timeout() -> None:
    """192.0.2.1 (TEST-NET-1) is never routed: the connect times out or fails at once."""
    engine = OpenAiHttpEngine("http://192.0.2.1:8000/v1", "m", CONFIG, connect_timeout_s=0.3)
    started = time.monotonic()
    err = raises_engine_error(engine)
    assert time.monotonic() - started < 0.3 + 0.5
    assert (err.code, err.transient) == ("llm_unreachable", True)


def test_unknown_host_is_unreachable() -> None:
    err = raises_engine_error(OpenAiHttpEngine("http://no-such-host.invalid/v1", "m", CONFIG))
    assert (err.code, err.transient) == ("llm_unreachable", True)


# --- scripted servers for faults -----------------------------------------------------------

class Handler(BaseHTTPRequestHandler):
    """Records the request, then runs the server's script; helpers to misbehave precisely."""

    protocol_version = "HTTP/1.1"
    server: FaultServer

    def do_POST(self) -> None:
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        self.server.requests.append((self.path, dict(self.headers), json.loads(body)))
        self.close_connection = True
        try:
            self.server.script(self)
        except ConnectionError:  # a write after the client hung up
            self.server.client_closed.set()

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def start_stream(self, *, chunked: bool = False,
                     content_type: str = "text/event-stream") -> None:
        self.chunked = chunked
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Transfer-Encoding" if chunked else "Connection",
                         "chunked" if chunked else "close")
        self.end_headers()

    def send(self, data: bytes, pause_s: float = 0.02) -> None:
        """One TCP write (Nagle off), then a pause so the client reads it on its own."""
        if getattr(self, "chunked", False):
            data = b"%x\r\n%s\r\n" % (len(data), data)
        self.wfile.write(data)
        time.sleep(pause_s)

    def end(self) -> None:
        if getattr(self, "chunked", False):
            self.wfile.write(b"0\r\n\r\n")

    def reply(self, status: int, body: bytes, content_type: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def stall(self) -> None:
        """Say nothing until the test ends or the client hangs up (recorded)."""
        while not self.server.release.is_set():
            if self.client_hung_up(0.02):
                return

    def client_hung_up(self, wait_s: float) -> bool:
        readable, _, _ = select.select([self.connection], [], [], wait_s)
        if readable:
            try:
                gone = self.connection.recv(1) == b""
            except ConnectionError:
                gone = True
            if gone:
                self.server.client_closed.set()
                return True
        return False


Script = Callable[[Handler], None]


class FaultServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, script: Script) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.script = script
        self.requests: list[tuple[str, dict[str, str], dict[str, Any]]] = []
        self.release = threading.Event()
        self.client_closed = threading.Event()
        threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.05},
                         daemon=True).start()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1"

    def engine(self, **kwargs: Any) -> OpenAiHttpEngine:
        kwargs.setdefault("read_timeout_s", READ_TIMEOUT_S)
        return OpenAiHttpEngine(self.base_url, "test-model", CONFIG, **kwargs)


@pytest.fixture
def serve() -> Iterator[Callable[[Script], FaultServer]]:
    servers: list[FaultServer] = []

    def start(script: Script) -> FaultServer:
        servers.append(FaultServer(script))
        return servers[-1]

    yield start
    for server in servers:
        server.release.set()
        server.shutdown()
        server.server_close()


def event(content: str | None = None, *, reasoning: str | None = None,
          field: str = "reasoning_content", finish: str | None = None) -> bytes:
    delta: dict[str, str] = {}
    if reasoning is not None:
        delta[field] = reasoning
    if content is not None:
        delta["content"] = content
    chunk = {"object": "chat.completion.chunk",
             "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
    return b"data: " + json.dumps(chunk, ensure_ascii=False).encode() + b"\n\n"


DONE = b"data: [DONE]\n\n"


def streams(*parts: bytes, then: str = "end", chunked: bool = False) -> Script:
    """A script that streams ``parts`` one TCP write each, then ends, stalls or drops."""
    def script(h: Handler) -> None:
        h.start_stream(chunked=chunked)
        for part in parts:
            h.send(part)
        if then == "stall":
            h.stall()
        else:
            h.end()
    return script


def test_request_carries_model_messages_and_sampling(serve: Callable[[Script], FaultServer],
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(API_KEY_ENV, "env-key-77")
    server = serve(streams(event("Hi"), event(finish="stop"), DONE))
    engine = server.engine()
    assert collect(engine) == ["Hi"]
    path, headers, body = server.requests[0]
    assert path == "/v1/chat/completions"
    assert headers["Authorization"] == "Bearer env-key-77"
    assert body == {"model": "test-model", "stream": True, "max_tokens": 32,
                    "temperature": 0.0, "top_p": CONFIG.top_p, "seed": 1234,
                    "messages": [{"role": m.role, "content": m.content} for m in QUESTION]}
    assert engine.name == f"openai:{server.base_url}#test-model"
    assert "env-key-77" not in repr(engine) + engine.name
    assert engine.opens_reasoning is False


def test_never_answering_server_times_out(serve: Callable[[Script], FaultServer]) -> None:
    server = serve(Handler.stall)
    started = time.monotonic()
    err = raises_engine_error(server.engine())
    elapsed = time.monotonic() - started
    assert isinstance(err, EngineTimeout)
    assert (err.code, err.transient) == ("engine_timeout", True)
    assert READ_TIMEOUT_S - 0.1 < elapsed < READ_TIMEOUT_S + 0.5


def test_default_read_timeout_is_first_token_timeout(
        serve: Callable[[Script], FaultServer]) -> None:
    server = serve(Handler.stall)
    engine = OpenAiHttpEngine(server.base_url, "m",
                              LlmConfig(first_token_timeout_s=0.4, token_timeout_s=5.0))
    started = time.monotonic()
    assert isinstance(raises_engine_error(engine), EngineTimeout)
    assert time.monotonic() - started < 0.4 + 0.5


@pytest.mark.parametrize(("status", "transient"),
                         [(500, True), (503, True), (429, True), (400, False), (401, False),
                          (404, False)])
def test_http_status_maps_to_llm_http_error(serve: Callable[[Script], FaultServer],
                                            status: int, transient: bool) -> None:
    def script(h: Handler) -> None:  # echoes the Authorization header, as a careless server
        h.reply(status, json.dumps({"error": {"message": f"nope {h.headers['Authorization']}"}}
                                   ).encode())
    server = serve(script)
    err = raises_engine_error(server.engine(api_key="sk-secret-99"))
    assert (err.code, err.transient) == ("llm_http_error", transient)
    assert str(status) in str(err) and "nope Bearer ***" in str(err)
    assert "sk-secret-99" not in str(err)


def test_two_pieces_then_stall_times_out_after_the_pieces(
        serve: Callable[[Script], FaultServer]) -> None:
    server = serve(streams(event("One"), event(" two"), then="stall"))
    pieces: list[str] = []
    err = raises_engine_error(server.engine(), pieces)
    assert pieces == ["One", " two"]
    assert isinstance(err, EngineTimeout)


def test_keepalives_alone_do_not_hold_off_the_timeout(
        serve: Callable[[Script], FaultServer]) -> None:
    def script(h: Handler) -> None:
        h.start_stream()
        while not h.server.release.is_set():
            h.send(b": ping\n\n", pause_s=0.1)
    server = serve(script)
    started = time.monotonic()
    assert isinstance(raises_engine_error(server.engine()), EngineTimeout)
    assert time.monotonic() - started < READ_TIMEOUT_S + 0.5


@pytest.mark.parametrize("field", ["reasoning_content", "reasoning"])
def test_reasoning_is_wrapped_in_think_tags_and_kept_out_of_speech(
        serve: Callable[[Script], FaultServer], field: str) -> None:
    server = serve(streams(event(reasoning="The user ", field=field),
                           event(reasoning="greets me.", field=field),
                           event("Hello"), event(" there."), event(finish="stop"), DONE))
    pieces = collect(server.engine())
    assert "".join(pieces) == "<think>The user greets me.</think>Hello there."
    rf = ReasoningFilter()
    outs = [rf.feed(piece) for piece in pieces] + [rf.finish()]
    assert "".join(out.speech for out in outs) == "Hello there."
    assert "".join(out.reasoning for out in outs) == "The user greets me."


@pytest.mark.parametrize("pieces", [
    # The server's template opened <think>: the stream starts inside reasoning.
    [event("Paris is"), event(" asked.</th"), event("ink>\n\nParis."), event(finish="stop")],
    # An older template: the model writes <think> itself.
    [event("<think>\nParis is asked."), event("</think>\n\nParis."), event(finish="stop")],
    # A server with a reasoning parser.
    [event(reasoning="Paris is asked."), event("Paris."), event(finish="stop")],
])
def test_r1_by_name_never_speaks_its_reasoning_whatever_the_server_template(
        serve: Callable[[Script], FaultServer], pieces: list[bytes]) -> None:
    server = serve(streams(*pieces, DONE))
    engine = OpenAiHttpEngine.from_spec(f"{server.base_url}#DeepSeek-R1-Distill-Qwen-7B",
                                        CONFIG)
    assert engine.opens_reasoning is None  # unknown: the stream decides
    rf = ReasoningFilter(starts_in_reasoning=engine.opens_reasoning)
    outs = [rf.feed(piece) for piece in collect(engine)] + [rf.finish()]
    assert "".join(out.speech for out in outs) == "Paris."
    assert "asked" in "".join(out.reasoning for out in outs)


def test_r1_by_name_gets_r1_sampling_and_no_system_message(
        serve: Callable[[Script], FaultServer]) -> None:
    server = serve(streams(event("Paris."), event(finish="stop"), DONE))
    engine = OpenAiHttpEngine(server.base_url, "deepseek-r1:7b", CONFIG)
    assert collect(engine) == ["Paris."]
    body = server.requests[0][2]
    assert (body["temperature"], body["top_p"]) == (0.6, 0.95)
    assert body["messages"] == [
        {"role": "user", "content": f"{QUESTION[0].content}\n\n{QUESTION[1].content}"}]


def test_reasoning_without_answer_is_closed(serve: Callable[[Script], FaultServer]) -> None:
    server = serve(streams(event(reasoning="Hmm."), event(finish="stop"), DONE))
    assert "".join(collect(server.engine())) == "<think>Hmm.</think>"


@pytest.mark.parametrize("then", [[DONE], []], ids=["done", "no-done"])
def test_length_cut_off_is_reported_after_every_piece(
        serve: Callable[[Script], FaultServer], then: list[bytes]) -> None:
    """The turn needs to know the stream was cut (an R1 cut mid-thought has no answer), and
    still gets every piece first (an answer cut mid-sentence keeps its finished ones)."""
    server = serve(streams(event(reasoning="Hmm."), event("Yes. And"), event(finish="length"),
                           *then))
    pieces: list[str] = []
    err = raises_engine_error(server.engine(), pieces)
    assert isinstance(err, EngineTruncated)
    assert (err.code, err.transient) == ("llm_truncated", True)
    assert "".join(pieces) == "<think>Hmm.</think>Yes. And"


def test_r1_is_asked_for_its_reasoning_budget_plus_the_answer(
        serve: Callable[[Script], FaultServer]) -> None:
    """Not ``max_tokens`` for both: R1 thinks for hundreds of tokens before it answers."""
    server = serve(streams(event("Paris."), event(finish="stop"), DONE))
    config = LlmConfig()
    collect(OpenAiHttpEngine.from_spec(f"{server.base_url}#deepseek-r1", config))
    collect(OpenAiHttpEngine.from_spec(f"{server.base_url}#qwen2.5", config))
    limits = [body["max_tokens"] for _, _, body in server.requests]
    assert limits == [config.reasoning_budget_tokens + config.max_tokens, config.max_tokens]


STREAM = (event("Hel") + b": keepalive\n\n" + event("lo, wörld ☃")
          + b'data: {"choices": [{"delta":\ndata:  {"content": " multi"}}]}\n\n'
          + event(" crlf").replace(b"\n", b"\r\n") + b"event: x\nid: 3\n\n"
          + event(finish="stop") + DONE)
PAYLOAD_TEXT = "Hello, wörld ☃ multi crlf"


def cuts() -> list[int]:
    """Awkward places: inside ``data:``, inside JSON, inside a UTF-8 character, between
    ``\\r`` and ``\\n``, right after the first newline of an event's blank line."""
    snowman = STREAM.index("☃".encode())
    return sorted({3, STREAM.index(b'"content"') + 4, snowman + 1, snowman + 2,
                   STREAM.index(b"\r\n") + 1, STREAM.index(b"\n\n") + 1,
                   STREAM.index(b"multi") - 3, len(STREAM) - 5})


@pytest.mark.parametrize("chunked", [False, True])
def test_events_split_over_writes_at_awkward_points(
        serve: Callable[[Script], FaultServer], chunked: bool) -> None:
    bounds = [0, *cuts(), len(STREAM)]
    parts = [STREAM[a:b] for a, b in itertools.pairwise(bounds)]
    server = serve(streams(*parts, chunked=chunked))
    assert "".join(collect(server.engine())) == PAYLOAD_TEXT


def test_sse_decoder_is_split_invariant() -> None:
    whole = _SseDecoder().feed(STREAM)
    assert len(whole) == 6
    for cut in range(len(STREAM) + 1):
        decoder = _SseDecoder()
        assert decoder.feed(STREAM[:cut]) + decoder.feed(STREAM[cut:]) == whole
    decoder = _SseDecoder()
    assert [p for i in range(len(STREAM)) for p in decoder.feed(STREAM[i:i + 1])] == whole


def test_sse_decoder_finish_flushes_an_unterminated_event() -> None:
    decoder = _SseDecoder()
    assert decoder.feed(b"data: [DONE]") == []
    assert decoder.finish() == ["[DONE]"]
    assert decoder.finish() == []


def test_malformed_json_is_a_bad_response(serve: Callable[[Script], FaultServer]) -> None:
    server = serve(streams(event("ok"), b'data: {"choices": [\n\n', DONE))
    pieces: list[str] = []
    err = raises_engine_error(server.engine(), pieces)
    assert pieces == ["ok"]
    assert (err.code, err.transient) == ("llm_bad_response", True)


def test_error_object_mid_stream_is_an_http_error(
        serve: Callable[[Script], FaultServer]) -> None:
    server = serve(streams(event("a"), b'data: {"error": {"message": "CUDA out of memory"}}\n\n'))
    err = raises_engine_error(server.engine())
    assert (err.code, err.transient) == ("llm_http_error", True)
    assert "CUDA out of memory" in str(err)


def test_json_instead_of_a_stream_is_a_bad_response(
        serve: Callable[[Script], FaultServer]) -> None:
    server = serve(lambda h: h.reply(200, b'{"choices": [{"message": {"content": "x"}}]}'))
    assert raises_engine_error(server.engine()).code == "llm_bad_response"


def test_stream_cut_before_the_end_is_a_bad_response(
        serve: Callable[[Script], FaultServer]) -> None:
    server = serve(streams(event("Half"), event(" a")))
    pieces: list[str] = []
    err = raises_engine_error(server.engine(), pieces)
    assert pieces == ["Half", " a"]
    assert (err.code, err.transient) == ("llm_bad_response", True)


def test_finish_reason_without_done_is_a_complete_reply(
        serve: Callable[[Script], FaultServer]) -> None:
    server = serve(streams(event("Done"), event(finish="stop")))
    assert collect(server.engine()) == ["Done"]


def test_cancel_before_start_sends_nothing(serve: Callable[[Script], FaultServer]) -> None:
    server = serve(streams(event("x"), DONE))
    cancel = threading.Event()
    cancel.set()
    assert collect(server.engine(), cancel) == []
    time.sleep(0.1)
    assert server.requests == []


@pytest.mark.parametrize("answer_headers", [False, True])
def test_cancel_interrupts_a_silent_server_and_hangs_up(
        serve: Callable[[Script], FaultServer], answer_headers: bool) -> None:
    """A long prefill (no headers yet) or a pause between tokens: a blocked read that only
    closing the socket can end. The server must see the hang-up, so it stops generating."""
    def script(h: Handler) -> None:
        if answer_headers:
            h.start_stream()
            h.send(event("First"))
        h.stall()
    server = serve(script)
    cancel = threading.Event()
    threading.Timer(0.3, cancel.set).start()
    started = time.monotonic()
    pieces = collect(server.engine(read_timeout_s=10.0), cancel)
    assert time.monotonic() - started < 0.3 + 0.3
    assert pieces == (["First"] if answer_headers else [])
    assert server.client_closed.wait(1.0)
    time.sleep(2 * 0.05 + 0.1)
    assert not [t for t in threading.enumerate() if t.name == "openai-http-cancel"]


def test_cancel_while_streaming_hangs_up(serve: Callable[[Script], FaultServer]) -> None:
    def script(h: Handler) -> None:
        h.start_stream()
        while not h.client_hung_up(0.0):
            h.send(event("tok "), pause_s=0.03)
    server = serve(script)
    cancel = threading.Event()
    pieces = []
    for piece in server.engine().stream(QUESTION, cancel):
        pieces.append(piece)
        if len(pieces) == 3:
            cancel.set()
    assert pieces == ["tok "] * 3
    assert server.client_closed.wait(1.0)


# --- specs ---------------------------------------------------------------------------------

@pytest.mark.parametrize(("spec", "name", "model"), [
    ("http://127.0.0.1:8000/v1#qwen", "openai:http://127.0.0.1:8000/v1#qwen", "qwen"),
    ("http://gpu-box:8000/v1", "openai:http://gpu-box:8000/v1#default", "default"),
    ("https://llm.example.org/v1/#org/Model-7B", "openai:https://llm.example.org/v1#org/Model-7B",
     "org/Model-7B"),
    ("openai:http://[::1]:11434/v1#llama3.2:1b", "openai:http://[::1]:11434/v1#llama3.2:1b",
     "llama3.2:1b"),
    ("  HTTP://host/v1#  ", "openai:HTTP://host/v1#default", "default"),
])
def test_from_spec_accepts(spec: str, name: str, model: str) -> None:
    engine = OpenAiHttpEngine.from_spec(spec, CONFIG)
    assert (engine.name, engine.model) == (name, model)


@pytest.mark.parametrize("spec", [
    "", "garbage", "127.0.0.1:8000/v1", "ftp://host/v1", "file:///etc/passwd#m", "http://",
    "http://host:99999/v1", "http://host:port/v1", "http://user:pw@host/v1#m",
    "http://ho st/v1", "http://host/v1?x=1#m", "http://[::zz]/v1",
])
def test_from_spec_rejects(spec: str) -> None:
    with pytest.raises(ConfigError):
        OpenAiHttpEngine.from_spec(spec, CONFIG)


def test_constructor_options() -> None:
    engine = OpenAiHttpEngine("http://h/v1", "m", CONFIG, name="gpu", opens_reasoning=True)
    assert (engine.name, engine.opens_reasoning) == ("gpu", True)
