"""A scripted OpenAI-compatible chat-completions server for tests (stdlib only).

``ChatServer`` binds 127.0.0.1 on an ephemeral port and answers
``POST /v1/chat/completions`` (and ``/chat/completions``) with the next
``Reply`` of its script, or with what its ``responder`` returns once the
script is spent. A ``Reply`` can be an ordinary answer, a length cut, an HTTP
error with headers (429 with Retry-After), a body that is not JSON, an answer
without ``usage``, a server that never answers, or a dropped connection.
Every request body is kept in ``requests`` so tests can check what the client
sent (the model drawn, the repair message).

It also runs standalone, as a stand-in endpoint for trying ``scalesearch run``::

    python tests/search/chat_server.py --port 8011   # answers with new strategy blocks
"""

from __future__ import annotations

import argparse
import dataclasses
import http.server
import itertools
import json
import re
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

DEFAULT = object()  # usage computed from the text


@dataclasses.dataclass(frozen=True)
class Reply:
    """One scripted answer.

    Attributes:
      content: the assistant message's text (None: a null content).
      finish_reason: ``stop``, ``length``, ``content_filter`` ...
      status: the HTTP status; an error status sends ``error`` as an OpenAI error body.
      headers: extra response headers (``Retry-After``).
      usage: the usage object; ``DEFAULT`` computes one from the text, None leaves it out.
      raw: a raw body sent instead of JSON (a garbled answer).
      delay_s: wait before answering.
      hang: never answer (until the server stops).
      drop: close the connection without a response.
      trickle: send the headers, then one byte of body every 50 ms, forever (read timeouts never fire).
      error: the error message of an error status.
      reasoning_content: a separate reasoning field, as vLLM and DeepSeek send it.
      choices: send no choices at all when False.
    """

    content: str | None = ""
    finish_reason: str = "stop"
    status: int = 200
    headers: dict = dataclasses.field(default_factory=dict)
    usage: Any = DEFAULT
    raw: bytes | None = None
    delay_s: float = 0.0
    hang: bool = False
    drop: bool = False
    trickle: bool = False
    error: str = "scripted error"
    reasoning_content: str | None = None
    choices: bool = True


Responder = Callable[[dict], Reply]


def _tokens(text: str) -> int:
    return max(1, len(text) // 4)


def completion_body(body: dict, reply: Reply, n: int) -> dict:
    """The chat-completion JSON for ``reply`` to the request ``body``."""
    prompt = "".join(str(m.get("content", "")) for m in body.get("messages", []))
    message: dict[str, Any] = {"role": "assistant", "content": reply.content}
    if reply.reasoning_content is not None:
        message["reasoning_content"] = reply.reasoning_content
    out: dict[str, Any] = {
        "id": f"chatcmpl-{n}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": body.get("model", "unknown"),
        "choices": [{"index": 0, "message": message, "finish_reason": reply.finish_reason}] if reply.choices else [],
    }
    if reply.usage is DEFAULT:
        t_in, t_out = _tokens(prompt), _tokens(reply.content or "")
        out["usage"] = {"prompt_tokens": t_in, "completion_tokens": t_out, "total_tokens": t_in + t_out}
    elif reply.usage is not None:
        out["usage"] = reply.usage
    return out


class ChatServer:
    """A threaded chat-completions server with a script; use as a context manager.

    Args:
      script: replies for the first requests, in order.
      responder: makes the reply once the script is spent (default: HTTP 500 "script exhausted").
      models: names that ``GET /v1/models`` lists.
    """

    def __init__(self, script: list[Reply] | None = None, responder: Responder | None = None, models=("test-model",)):
        self.script = list(script or [])
        self.responder = responder
        self.models = tuple(models)
        self.requests: list[dict] = []
        self.connections: set[socket.socket] = set()  # open client connections, closed by stop()
        self.in_flight = 0
        self.max_in_flight = 0  # the most chat requests being answered at once
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.counter = itertools.count(1)
        self.httpd: http.server.ThreadingHTTPServer | None = None
        self.thread: threading.Thread | None = None
        self.port: int | None = None

    # ------------------------------------------------------------------ lifecycle
    def start(self, port: int = 0) -> ChatServer:
        server = self

        class Handler(_Handler):
            chat = server

        self.stopping.clear()
        self.httpd = _Server(("127.0.0.1", port if port else (self.port or 0)), Handler)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()
        return self

    def stop(self) -> None:
        """Stop answering: hanging requests are released and new connections are refused."""
        self.stopping.set()
        if self.httpd is not None:
            self.httpd.shutdown()
            self.httpd.server_close()
            with self.lock:  # keep-alive connections too: a stopped server answers nothing
                for conn in list(self.connections):
                    try:
                        conn.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass
            self.thread.join(timeout=5)
            self.httpd = None

    def __enter__(self) -> ChatServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    # ------------------------------------------------------------------ answers
    def next_reply(self, body: dict) -> Reply:
        with self.lock:
            self.requests.append(body)
            if self.script:
                return self.script.pop(0)
        if self.responder is not None:
            return self.responder(body)
        return Reply(status=500, error="script exhausted")

    def add(self, *replies: Reply) -> None:
        with self.lock:
            self.script.extend(replies)


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def handle_error(self, request, client_address) -> None:
        pass  # a client that gave up (a timeout) is expected here, not worth a traceback


class _Handler(http.server.BaseHTTPRequestHandler):
    chat: ChatServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format, *args) -> None:
        pass

    def setup(self) -> None:
        super().setup()
        with self.chat.lock:
            self.chat.connections.add(self.connection)

    def finish(self) -> None:
        with self.chat.lock:
            self.chat.connections.discard(self.connection)
        try:
            super().finish()
        except OSError:
            pass

    def do_GET(self) -> None:
        if self.path.rstrip("/") in ("/v1/models", "/models"):
            data = [{"id": m, "object": "model", "created": 0, "owned_by": "test"} for m in self.chat.models]
            self._send(200, {"object": "list", "data": data})
        else:
            self._send(404, {"error": {"message": f"no route {self.path}", "type": "not_found"}})

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length)
        if self.path.rstrip("/") not in ("/v1/chat/completions", "/chat/completions"):
            self._send(404, {"error": {"message": f"no route {self.path}", "type": "not_found"}})
            return
        try:
            body = json.loads(raw)
        except ValueError:
            self._send(400, {"error": {"message": "request body is not JSON", "type": "invalid_request_error"}})
            return
        with self.chat.lock:
            self.chat.in_flight += 1
            self.chat.max_in_flight = max(self.chat.max_in_flight, self.chat.in_flight)
        try:
            self._answer(body)
        finally:
            with self.chat.lock:
                self.chat.in_flight -= 1

    def _answer(self, body: dict) -> None:
        reply = self.chat.next_reply(body)
        if reply.hang:
            self.chat.stopping.wait(30)
            self.close_connection = True
            return
        if reply.delay_s:
            self.chat.stopping.wait(reply.delay_s)
        if reply.trickle:
            self.close_connection = True
            try:
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", "100000000")
                self.end_headers()
                self.wfile.write(b"{")
                while not self.chat.stopping.wait(0.05):
                    self.wfile.write(b" ")
                    self.wfile.flush()
            except OSError:
                pass
            return
        if reply.drop:
            self.close_connection = True
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            return
        if reply.raw is not None:
            self._send(reply.status, reply.raw, reply.headers)
        elif reply.status >= 400:
            error = {"error": {"message": reply.error, "type": "server_error", "code": str(reply.status)}}
            self._send(reply.status, error, reply.headers)
        else:
            self._send(reply.status, completion_body(body, reply, next(self.chat.counter)), reply.headers)

    def _send(self, status: int, payload: dict | bytes, headers: dict | None = None) -> None:
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for k, v in (headers or {}).items():
                self.send_header(k, str(v))
            self.end_headers()
            self.wfile.write(data)
        except OSError:
            self.close_connection = True


# ----------------------------------------------------------------------------- a model that always has an idea

_LR = re.compile(r'"learning_rate":\s*([0-9.eE+-]+)')


def strategy_responder(factors=(0.5, 0.7, 1.4, 2.0, 0.35, 2.8, 1.2, 0.85)) -> Responder:
    """Answers every prompt with a new learning rate for the best program shown.

    Odd requests get a SEARCH/REPLACE diff on the best program's
    ``"learning_rate"`` line, even ones a whole ``strategy`` block; a repair
    request (the last message names the error) gets a whole block. Each answer
    uses a new factor, so the children differ from each other and from their
    parents.
    """
    counter = itertools.count()

    def respond(body: dict) -> Reply:
        i = next(counter)
        factor = factors[i % len(factors)] * (1 + 0.01 * (i // len(factors)))
        prompt = str(body["messages"][-1]["content"]) if body.get("messages") else ""
        fences = re.findall(r"```python\n(.*?)```", prompt, re.S)
        best = fences[-1] if fences else ""
        match = _LR.search(best)
        lr = float(match[1]) if match else 3e-3
        new = f"{lr * factor:.3g}"
        if match and i % 2 == 0:
            line = next(l for l in best.splitlines() if _LR.search(l))
            replaced = _LR.sub('"learning_rate": ' + new, line)
            text = (f"Scale the learning rate by {factor:.2f}.\n\n<<<<<<< SEARCH\n{line}\n=======\n"
                    f"{replaced}\n>>>>>>> REPLACE\n")
        else:
            text = (f"A new learning rate, {new}.\n\n```python\n# EVOLVE-BLOCK-START strategy\n"
                    f"def hyperparameters(n_params, n_tokens):\n    return {{\n        \"learning_rate\": {new},\n"
                    f"        \"batch_size\": 16,\n        \"warmup_fraction\": 0.05,\n    }}\n# EVOLVE-BLOCK-END\n```\n")
        return Reply(content=text)

    return respond


def flaky(responder: Responder) -> Responder:
    """``responder`` behind an endpoint that misbehaves on a fixed schedule: 429s, 500s, length cuts, prose."""
    counter = itertools.count()

    def respond(body: dict) -> Reply:
        i = next(counter)
        if i % 7 == 3:
            return Reply(status=429, headers={"Retry-After": "0.5"}, error="rate limited")
        if i % 11 == 5:
            return Reply(content="Let me rewrite the whole block:\n```python\ndef hyperpar", finish_reason="length")
        if i % 13 == 7:
            return Reply(content="I would try a larger learning rate and a longer warmup.")
        if i % 17 == 9:
            return Reply(status=500, error="CUDA out of memory")
        return responder(body)

    return respond


def main() -> None:
    parser = argparse.ArgumentParser(description="a stand-in OpenAI-compatible endpoint that proposes learning rates")
    parser.add_argument("--port", type=int, default=8011)
    parser.add_argument("--flaky", action="store_true", help="also send 429s, 500s, length cuts and prose")
    args = parser.parse_args()
    responder = flaky(strategy_responder()) if args.flaky else strategy_responder()
    server = ChatServer(responder=responder, models=("stand-in",)).start(args.port)
    print(f"serving {server.base_url} (Ctrl-C stops)", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        server.stop()


if __name__ == "__main__":
    main()
