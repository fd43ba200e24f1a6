"""OpenAIEmbedder against a local HTTP server speaking the embeddings API (never the real service)."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

from synthgen.conditions.embedders import CachedEmbedder, EmbeddingServiceError, OpenAIEmbedder, get_embedder
from synthgen.errors import InputError

KEY = "sk-test-SECRET-0123456789"
DIM = 8


class FakeEmbeddingsServer:
    """POST /v1/embeddings with the real response shape; ``failures`` are status codes served first."""

    def __init__(self) -> None:
        self.failures: list[int] = []
        self.requests: list[dict] = []
        self.auth: list[str] = []
        state = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                state.requests.append(body)
                state.auth.append(self.headers.get("Authorization", ""))
                if self.path != "/v1/embeddings":
                    return self._send(404, {"error": {"message": "not found"}})
                if state.failures:
                    code = state.failures.pop(0)
                    return self._send(code, {"error": {"message": f"fake failure {code}", "type": "fake"}})
                data = [{"object": "embedding", "index": i, "embedding": vector(t)}
                        for i, t in enumerate(body["input"])]
                self._send(200, {"object": "list", "data": data[::-1], "model": body["model"],
                                 "usage": {"prompt_tokens": len(data), "total_tokens": len(data)}})

            def _send(self, code: int, obj: dict) -> None:
                raw = json.dumps(obj).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            def log_message(self, *args) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base_url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"


def vector(text: str) -> list[float]:
    """A deterministic, not normalised vector per text."""
    return (np.random.default_rng(sum(text.encode())).normal(size=DIM) * 3).tolist()


@pytest.fixture
def server() -> Iterator[FakeEmbeddingsServer]:
    srv = FakeEmbeddingsServer()
    thread = threading.Thread(target=srv.httpd.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.httpd.shutdown()
    srv.httpd.server_close()


def make(server: FakeEmbeddingsServer, **kw) -> OpenAIEmbedder:
    kw = {"model": "fake-embed", "api_key": KEY, "base_url": server.base_url, "base_delay": 0.001, **kw}
    return OpenAIEmbedder(**kw)


def test_batches_order_and_normalisation(server: FakeEmbeddingsServer) -> None:
    e = make(server, batch_size=4)
    texts = [f"report {i}" for i in range(10)]
    v = e.embed(texts)
    assert [len(r["input"]) for r in server.requests] == [4, 4, 2]
    assert all(r["model"] == "fake-embed" and r["encoding_format"] == "float" for r in server.requests)
    assert server.auth[0] == f"Bearer {KEY}"
    assert v.shape == (10, DIM) and v.dtype == np.float32 and e.dim == DIM and e.name == "openai:fake-embed"
    want = np.array([vector(t) for t in texts])
    np.testing.assert_allclose(v, want / np.linalg.norm(want, axis=1, keepdims=True), rtol=1e-5)


def test_retries_429_then_500_then_succeeds(server: FakeEmbeddingsServer, caplog) -> None:
    server.failures = [429, 500]
    with caplog.at_level(logging.DEBUG):
        v = make(server).embed(["a", "b"])
    assert v.shape == (2, DIM) and len(server.requests) == 3
    assert "HTTP 429" in caplog.text and "HTTP 500" in caplog.text
    assert KEY not in caplog.text


def test_gives_up_after_max_attempts_without_leaking_key(server: FakeEmbeddingsServer, caplog) -> None:
    server.failures = [503] * 10
    with caplog.at_level(logging.DEBUG), pytest.raises(EmbeddingServiceError) as info:
        make(server, max_attempts=3).embed(["a"])
    msg = str(info.value)
    assert "after 3 attempts" in msg and "HTTP 503" in msg and "fake-embed" in msg
    assert len(server.requests) == 3
    assert KEY not in msg and KEY not in repr(info.value) and KEY not in caplog.text
    assert info.value.__cause__ is None and isinstance(info.value, InputError)


def test_client_error_is_not_retried(server: FakeEmbeddingsServer) -> None:
    server.failures = [400]
    with pytest.raises(EmbeddingServiceError, match="HTTP 400"):
        make(server).embed(["a"])
    assert len(server.requests) == 1


def test_connection_error_is_retried_then_reported() -> None:
    e = OpenAIEmbedder("fake-embed", api_key=KEY, base_url="http://127.0.0.1:9/v1", max_attempts=2,
                       base_delay=0.001, timeout=2)
    with pytest.raises(EmbeddingServiceError, match="after 2 attempts"):
        e.embed(["a"])


def test_missing_key_is_input_error(monkeypatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(InputError, match="OPENAI_API_KEY"):
        OpenAIEmbedder()
    with pytest.raises(InputError, match="OPENAI_API_KEY"):
        get_embedder("openai", cache="")


def test_get_embedder_openai_env_and_cache(server: FakeEmbeddingsServer, monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
    e = get_embedder("openai:text-embedding-3-small", cache=str(tmp_path), base_delay=0.001)
    assert isinstance(e, CachedEmbedder) and e.name == "openai:text-embedding-3-small" and e.dim == 1536
    assert get_embedder("openai", cache="").name == "openai:text-embedding-ada-002"
    f = get_embedder("openai:fake-embed", cache=str(tmp_path), dim=DIM, base_delay=0.001)
    f.embed(["x", "y"])
    f.embed(["y", "x", "z"])
    assert [r["input"] for r in server.requests] == [["x", "y"], ["z"]]
