"""A small OpenAI-compatible chat-completions server on 127.0.0.1, with fault injection.

It speaks the wire format the ``openai`` SDK expects (``GET /v1/models``,
``POST /v1/chat/completions``), answers deterministically, counts what it receives, and can
be told to be slow, rate limited, or flaky. Tests start it as a fixture; benchmarks start it
in a subprocess. It binds to loopback only.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Faults:
    """Shares of requests that fail, each way. Drawn from a seeded RNG, so runs repeat."""

    rate_429: float = 0.0
    rate_500: float = 0.0
    rate_malformed: float = 0.0
    rate_empty: float = 0.0
    rate_drop: float = 0.0
    rate_400: float = 0.0  # a permanent refusal, such as an image the model cannot take
    rate_html: float = 0.0  # 200 with a proxy's HTML error page
    rate_trickle: float = 0.0  # a valid answer sent one byte every trickle_interval_s
    rate_bad_encoding: float = 0.0  # a valid answer whose text holds invalid UTF-8 and a lone surrogate
    trickle_interval_s: float = 0.5
    retry_after_s: float = 0.05
    retry_after_header: str | None = None  # sent verbatim in place of retry_after_s (hostile values)
    seed: int = 1234


def default_responder(body: dict) -> str:
    """Answer 'real' or 'generated' from a hash of the request's last image (or text)."""
    last = body["messages"][-1]
    content = last["content"]
    key = json.dumps(content, sort_keys=True)
    if isinstance(content, list):
        images = [p["image_url"]["url"] for p in content if p.get("type") == "image_url"]
        key = images[-1] if images else key
    digest = hashlib.sha256(key.encode()).digest()[0]
    return "Looking at the textures, this is generated." if digest % 2 else "The lighting looks natural: real."


@dataclass
class ServerState:
    served_model: str = "local/test-vlm"
    latency_s: float = 0.0
    rpm_limit: int | None = None
    api_key: str | None = None  # when set, any other bearer token gets 401
    faults: Faults = field(default_factory=Faults)
    responder: Callable[[dict], str] = default_responder
    keep_bodies: bool = True
    # With logprobs requested, the verdict token gets this probability, its rival the rest.
    verdict_probability: float = 0.8
    # Counters (read by tests and benchmarks).
    n_chat: int = 0
    n_models: int = 0
    n_ok: int = 0
    n_429: int = 0
    n_faults: int = 0
    bytes_received: int = 0
    in_flight: int = 0
    peak_in_flight: int = 0
    request_times: list[float] = field(default_factory=list)
    bodies: list[dict] = field(default_factory=list)

    def __post_init__(self):
        self.lock = threading.Lock()
        self.rng = random.Random(self.faults.seed)
        self._tokens: float | None = None
        self._refilled = time.monotonic()

    def reset_counters(self) -> None:
        with self.lock:
            self.n_chat = self.n_models = self.n_ok = self.n_429 = self.n_faults = self.bytes_received = 0
            self.peak_in_flight = 0
            self.bodies.clear()
            self.request_times.clear()
            self._tokens, self._refilled = None, time.monotonic()

    def counters(self) -> dict:
        names = ("n_chat", "n_models", "n_ok", "n_429", "n_faults", "bytes_received", "peak_in_flight")
        return {n: getattr(self, n) for n in names}

    def over_rpm(self) -> float | None:
        """Seconds until the next request is allowed, or None when one is allowed now.

        The limit is a token bucket refilled at rpm_limit/60 per second and holding one
        second's worth, the way hosted APIs enforce a per-minute limit over short periods.
        """
        if not self.rpm_limit:
            return None
        rate = self.rpm_limit / 60.0
        capacity = max(1.0, rate)
        now = time.monotonic()
        tokens = capacity if self._tokens is None else min(capacity, self._tokens + (now - self._refilled) * rate)
        self._refilled = now
        if tokens >= 1.0:
            self._tokens = tokens - 1.0
            return None
        self._tokens = tokens
        return (1.0 - tokens) / rate


def _logprobs(text: str, p_verdict: float) -> list[dict]:
    """Token log-probabilities for a whitespace-split answer; verdict words get a rival alternative."""
    rivals = {"real": "generated", "generated": "real", "fake": "real"}
    out = []
    for word in text.split(" "):
        token = " " + word
        bare = word.strip(".,:;!").lower()
        top = [{"token": token, "logprob": 0.0, "bytes": None}]
        if bare in rivals:
            top = [
                {"token": token, "logprob": math.log(p_verdict), "bytes": None},
                {"token": " " + rivals[bare], "logprob": math.log(1 - p_verdict), "bytes": None},
            ]
        out.append({"token": token, "logprob": top[0]["logprob"], "bytes": None, "top_logprobs": top})
    return out


def _handler_for(state: ServerState) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        # Headers and body go out in two writes; without this, Nagle's algorithm holds the
        # body back for the client's delayed ACK (~40 ms a request).
        disable_nagle_algorithm = True

        def log_message(self, *args):  # keep test output clean
            pass

        def _send(self, status: int, payload: dict | bytes, headers: dict | None = None) -> None:
            raw = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(raw)))
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(raw)

        def _authorized(self) -> bool:
            if state.api_key is None:
                return True
            if self.headers.get("Authorization") == f"Bearer {state.api_key}":
                return True
            self._send(
                401,
                {
                    "error": {
                        "message": "Incorrect API key provided",
                        "type": "invalid_request_error",
                        "code": "invalid_api_key",
                    }
                },
            )
            return False

        def do_GET(self):
            if self.path == "/stats":
                with state.lock:
                    return self._send(200, state.counters())
            if not self.path.rstrip("/").endswith("/models"):
                return self._send(404, {"error": {"message": "not found"}})
            if not self._authorized():
                return
            with state.lock:
                state.n_models += 1
            self._send(
                200,
                {
                    "object": "list",
                    "data": [{"id": state.served_model, "object": "model", "created": 0, "owned_by": "local"}],
                },
            )

        def do_POST(self):
            length = int(self.headers.get("Content-Length") or 0)
            body = json.loads(self.rfile.read(length) or b"{}")
            if self.path == "/reset":
                state.reset_counters()
                state.latency_s = float(body.get("latency_s", state.latency_s))
                state.rpm_limit = body.get("rpm_limit", state.rpm_limit)
                return self._send(200, {})
            if not self.path.rstrip("/").endswith("/chat/completions"):
                return self._send(404, {"error": {"message": "not found"}})
            if not self._authorized():
                return
            with state.lock:
                state.bytes_received += length
                state.n_chat += 1
                state.request_times.append(time.monotonic())
                if state.keep_bodies:
                    state.bodies.append(body)
                wait = state.over_rpm()
            if wait is not None:
                with state.lock:
                    state.n_429 += 1
                return self._send(
                    429,
                    {"error": {"message": "rate limited", "type": "requests"}},
                    {"Retry-After": f"{max(wait, 0.001):.3f}", "retry-after-ms": str(int(wait * 1000))},
                )
            with state.lock:
                state.in_flight += 1
                state.peak_in_flight = max(state.peak_in_flight, state.in_flight)
            try:
                self._answer(body, length)
            finally:
                with state.lock:
                    state.in_flight -= 1

        def _answer(self, body: dict, length: int) -> None:
            f = state.faults
            with state.lock:
                draw = state.rng.random()
            if state.latency_s:
                time.sleep(state.latency_s)
            edges = [
                ("429", f.rate_429),
                ("500", f.rate_500),
                ("malformed", f.rate_malformed),
                ("empty", f.rate_empty),
                ("drop", f.rate_drop),
                ("400", f.rate_400),
                ("html", f.rate_html),
                ("trickle", f.rate_trickle),
                ("bad_encoding", f.rate_bad_encoding),
            ]
            acc = 0.0
            for name, share in edges:
                acc += share
                if draw < acc:
                    with state.lock:
                        state.n_faults += 1
                        state.n_429 += name == "429"
                    return self._fault(name, f, body, length)
            text = state.responder(body)
            with state.lock:
                state.n_ok += 1
            self._send(200, self._completion(body, length, text))

        def _completion(self, body: dict, length: int, text: str) -> dict:
            prompt_tokens = max(1, length // 4)
            choice = {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
            if body.get("logprobs"):
                choice["logprobs"] = {"content": _logprobs(text, state.verdict_probability)}
            return {
                "id": f"chatcmpl-{state.n_chat}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": body.get("model", state.served_model),
                "choices": [choice],
                "usage": {
                    "prompt_tokens": prompt_tokens,
                    "completion_tokens": len(text.split()),
                    "total_tokens": prompt_tokens + len(text.split()),
                },
            }

        def _fault(self, name: str, f: Faults, body: dict | None = None, length: int = 0) -> None:
            if name == "html":
                page = b"<html><body><h1>502 Bad Gateway</h1></body></html>"
                self.send_response(200)
                self.send_header("Content-Type", "text/html")
                self.send_header("Content-Length", str(len(page)))
                self.end_headers()
                self.wfile.write(page)
                return None
            if name == "trickle":
                raw = json.dumps(self._completion(body or {}, length, "real")).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                for i in range(len(raw)):  # each read succeeds: only an overall deadline ends this
                    self.wfile.write(raw[i : i + 1])
                    self.wfile.flush()
                    time.sleep(f.trickle_interval_s)
                return None
            if name == "bad_encoding":
                text = state.responder(body or {})
                raw = json.dumps(self._completion(body or {}, length, text + " \ud800 MARK")).encode()
                return self._send(200, raw.replace(b"MARK", b"\xff\xfe"))
            if name == "429":
                header = f.retry_after_header if f.retry_after_header is not None else str(f.retry_after_s)
                return self._send(429, {"error": {"message": "rate limited"}}, {"Retry-After": header})
            if name == "400":
                return self._send(400, {"error": {"message": "Invalid image data", "type": "invalid_request_error"}})
            if name == "500":
                return self._send(500, {"error": {"message": "internal error"}})
            if name == "malformed":
                return self._send(200, b'{"id": "chatcmpl-x", "choices": [')
            if name == "empty":
                return self._send(
                    200, {"id": "chatcmpl-x", "object": "chat.completion", "created": 0, "model": "m", "choices": []}
                )
            # drop: close the socket without a response
            self.close_connection = True
            self.connection.shutdown(2)

    return Handler


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256  # benchmarks open 64+ connections at once

    def handle_error(self, request, client_address):
        # Clients that hang up mid-answer (killed processes, dropped connections) are expected here.
        import sys

        if not isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError)):
            super().handle_error(request, client_address)


class ChatServer:
    """Run the server in a background thread: ``with ChatServer() as server: server.base_url``."""

    def __init__(self, state: ServerState | None = None, host: str = "127.0.0.1", port: int = 0):
        self.state = state or ServerState()
        self.httpd = _QuietServer((host, port), _handler_for(self.state))
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host if isinstance(host, str) else host.decode()}:{port}/v1"

    def start(self) -> ChatServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def __enter__(self) -> ChatServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


if __name__ == "__main__":
    # Standalone, for benchmarks: prints "PORT <n>" and serves until killed.
    import argparse

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--latency", type=float, default=0.0)
    parser.add_argument("--rpm", type=int, default=None)
    args = parser.parse_args()
    server = ChatServer(ServerState(latency_s=args.latency, rpm_limit=args.rpm, keep_bodies=False), port=args.port)
    print(f"PORT {server.httpd.server_address[1]}", flush=True)
    server.httpd.serve_forever()
