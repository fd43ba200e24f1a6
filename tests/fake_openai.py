"""A local HTTP server speaking the OpenAI API (embeddings and chat completions): the outside world's test double.

Error bodies echo the request's Authorization header, as a careless proxy might, so tests can check that our
messages never carry the API key.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np

KEY = "sk-test-SECRET-0123456789"
DIM = 8
TIMEOUT = "timeout"      # a failure that answers only after `slow_s`
MALFORMED = "malformed"  # a 200 whose body is not JSON


def vector(text: str) -> list[float]:
    """A deterministic, not normalised vector per text."""
    return (np.random.default_rng(sum(text.encode())).normal(size=DIM) * 3).tolist()


def chat_reply(body: dict) -> str:
    """The assistant's content for a chat request: findings named after the user message."""
    user = next(m["content"] for m in body["messages"] if m["role"] == "user")
    return json.dumps({"condition": user, "findings": [f"first finding of {user}", "sinus bradycardia"],
                       "typical_heart_rate_bpm": 48})


class FakeOpenAIServer:
    """POST /v1/embeddings and /v1/chat/completions with the real response shapes.

    ``failures`` are served first, one per request: an HTTP status code, TIMEOUT or MALFORMED.
    ``chat_content`` (a function of the request body) makes the assistant's message content.
    """

    def __init__(self) -> None:
        self.failures: list[int | str] = []
        self.requests: list[dict] = []
        self.paths: list[str] = []
        self.auth: list[str] = []
        self.chat_content: Callable[[dict], str] = chat_reply
        self.slow_s = 2.0
        state = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                auth = self.headers.get("Authorization", "")
                state.requests.append(body)
                state.paths.append(self.path)
                state.auth.append(auth)
                if state.failures:
                    failure = state.failures.pop(0)
                    if failure == TIMEOUT:
                        time.sleep(state.slow_s)
                        return self._send(200, {})
                    if failure == MALFORMED:
                        return self._raw(200, b"<html>502 Bad Gateway</html>", "application/json")
                    return self._send(int(failure), {"error": {"message": f"fake failure {failure}; you sent "
                                                                          f"'{auth}'", "type": "fake"}})
                if self.path == "/v1/embeddings":
                    data = [{"object": "embedding", "index": i, "embedding": vector(t)}
                            for i, t in enumerate(body["input"])]
                    return self._send(200, {"object": "list", "data": data[::-1], "model": body["model"],
                                            "usage": {"prompt_tokens": len(data), "total_tokens": len(data)}})
                if self.path == "/v1/chat/completions":
                    message = {"role": "assistant", "content": state.chat_content(body), "refusal": None}
                    return self._send(200, {
                        "id": "chatcmpl-fake", "object": "chat.completion", "created": 1_700_000_000,
                        "model": body["model"] + "-2024-fake",
                        "choices": [{"index": 0, "message": message, "finish_reason": "stop", "logprobs": None}],
                        "usage": {"prompt_tokens": 10, "completion_tokens": 10, "total_tokens": 20}})
                self._send(404, {"error": {"message": "not found"}})

            def _send(self, code: int, obj: dict) -> None:
                self._raw(code, json.dumps(obj).encode(), "application/json")

            def _raw(self, code: int, raw: bytes, content_type: str) -> None:
                try:
                    self.send_response(code)
                    self.send_header("Content-Type", content_type)
                    self.send_header("Content-Length", str(len(raw)))
                    self.end_headers()
                    self.wfile.write(raw)
                except (BrokenPipeError, ConnectionResetError):  # the client timed out and left
                    pass

            def log_message(self, *args) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.base_url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"


@contextmanager
def running_server() -> Iterator[FakeOpenAIServer]:
    """A FakeOpenAIServer serving on a background thread for the duration of the block."""
    srv = FakeOpenAIServer()
    thread = threading.Thread(target=srv.httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield srv
    finally:
        srv.httpd.shutdown()
        srv.httpd.server_close()
