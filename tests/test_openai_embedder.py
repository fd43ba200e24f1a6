"""OpenAIEmbedder against a local HTTP server speaking the embeddings API (tests/fake_openai.py), never the
real service."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import numpy as np
import pytest
from fake_openai import DIM, KEY, MALFORMED, TIMEOUT, FakeOpenAIServer, running_server, vector

from synthgen.conditions.embedders import CachedEmbedder, EmbeddingServiceError, OpenAIEmbedder, get_embedder
from synthgen.errors import InputError


@pytest.fixture
def server() -> Iterator[FakeOpenAIServer]:
    with running_server() as srv:
        yield srv


def make(server: FakeOpenAIServer, **kw) -> OpenAIEmbedder:
    kw = {"model": "fake-embed", "api_key": KEY, "base_url": server.base_url, "base_delay": 0.001, **kw}
    return OpenAIEmbedder(**kw)


def test_batches_order_and_normalisation(server: FakeOpenAIServer) -> None:
    e = make(server, batch_size=4)
    texts = [f"report {i}" for i in range(10)]
    v = e.embed(texts)
    assert [len(r["input"]) for r in server.requests] == [4, 4, 2]
    assert all(r["model"] == "fake-embed" and r["encoding_format"] == "float" for r in server.requests)
    assert server.auth[0] == f"Bearer {KEY}"
    assert v.shape == (10, DIM) and v.dtype == np.float32 and e.dim == DIM and e.name == "openai:fake-embed"
    want = np.array([vector(t) for t in texts])
    np.testing.assert_allclose(v, want / np.linalg.norm(want, axis=1, keepdims=True), rtol=1e-5)


def test_retries_429_then_500_then_succeeds(server: FakeOpenAIServer, caplog) -> None:
    server.failures = [429, 500]
    with caplog.at_level(logging.DEBUG):
        v = make(server).embed(["a", "b"])
    assert v.shape == (2, DIM) and len(server.requests) == 3
    assert "HTTP 429" in caplog.text and "HTTP 500" in caplog.text
    assert KEY not in caplog.text


def test_gives_up_after_max_attempts_without_leaking_key(server: FakeOpenAIServer, caplog) -> None:
    server.failures = [503] * 10
    with caplog.at_level(logging.DEBUG), pytest.raises(EmbeddingServiceError) as info:
        make(server, max_attempts=3).embed(["a"])
    msg = str(info.value)
    assert "after 3 attempts" in msg and "HTTP 503" in msg and "fake-embed" in msg
    assert len(server.requests) == 3
    assert KEY not in msg and KEY not in repr(info.value) and KEY not in caplog.text
    assert info.value.__cause__ is None and isinstance(info.value, InputError)


@pytest.mark.parametrize("status", [400, 401])
def test_client_error_is_not_retried_and_an_echoed_key_is_masked(server: FakeOpenAIServer, status: int) -> None:
    server.failures = [status]
    with pytest.raises(EmbeddingServiceError, match=f"HTTP {status}") as info:
        make(server).embed(["a"])
    assert len(server.requests) == 1
    msg = str(info.value)
    assert "you sent 'Bearer ***'" in msg and KEY not in msg and "\n" not in msg


def test_unreadable_reply_and_time_outs(server: FakeOpenAIServer) -> None:
    server.failures = [MALFORMED]
    with pytest.raises(EmbeddingServiceError, match="unreadable reply: JSONDecodeError"):
        make(server).embed(["a"])
    server.failures, server.slow_s = [TIMEOUT, TIMEOUT], 1.0
    with pytest.raises(EmbeddingServiceError, match="after 2 attempts; last error: APITimeoutError"):
        make(server, max_attempts=2, timeout=0.3).embed(["a"])
    assert len(server.requests) == 3


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


def test_get_embedder_openai_env_and_cache(server: FakeOpenAIServer, monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
    e = get_embedder("openai:text-embedding-3-small", cache=str(tmp_path), base_delay=0.001)
    assert isinstance(e, CachedEmbedder) and e.name == "openai:text-embedding-3-small" and e.dim == 1536
    assert get_embedder("openai", cache="").name == "openai:text-embedding-ada-002"
    f = get_embedder("openai:fake-embed", cache=str(tmp_path), dim=DIM, base_delay=0.001)
    f.embed(["x", "y"])
    f.embed(["y", "x", "z"])
    assert [r["input"] for r in server.requests] == [["x", "y"], ["z"]]
