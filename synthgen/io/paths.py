"""Every path in synthgen is a local path or a URL (s3://, gs://, file://); fsspec resolves both.

Credentials and endpoints come from the standard places (environment such as AWS_ACCESS_KEY_ID and
AWS_ENDPOINT_URL, ~/.aws/config) or from explicit ``storage_options``; never from code or logs.
"""

from __future__ import annotations

import json
import os
import uuid
from typing import Any

import fsspec
import pyarrow as pa
from fsspec.core import url_to_fs

from synthgen.errors import StorageError, outside_failure

StorageOptions = dict[str, Any] | None


def storage_options_from_env(extra: StorageOptions = None) -> dict[str, Any]:
    """s3fs options from the environment: honour AWS_ENDPOINT_URL (s3fs versions differ on reading it)."""
    opts: dict[str, Any] = {}
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    if endpoint:
        opts.setdefault("client_kwargs", {})["endpoint_url"] = endpoint
    opts.update(extra or {})
    return opts


def resolve(url: str, storage_options: StorageOptions = None) -> tuple[fsspec.AbstractFileSystem, str]:
    """(filesystem, path inside it) for a local path or URL."""
    url = os.fspath(url)
    opts = storage_options_from_env(storage_options) if "://" in url and not url.startswith("file://") else {}
    return url_to_fs(url, **opts)


PROBE_CONNECT_TIMEOUT_S = 10  # the write check's S3 client: 2 attempts, so a silent endpoint fails in ~20 s


def check_writable(url: str, storage_options: StorageOptions = None, what: str = "--out") -> None:
    """Fail fast, before any work starts: write and delete an empty probe object under ``url``.

    Raises StorageError naming ``what``, ``url`` (and the S3 endpoint) and the cause when the target cannot be
    written: an unreachable endpoint, missing or wrong credentials, a missing bucket, no permission, a path
    under a file, a read-only disk. The probe's S3 client makes 2 attempts with a 10 s connect timeout (the
    defaults retry for seconds, or minutes when the endpoint does not answer); the run keeps the defaults.
    A local ``url`` is created as a folder (the run would create it next).
    """
    opts = dict(storage_options or {})
    s3 = url.startswith(("s3://", "s3a://"))
    if s3:
        config = {**opts.get("config_kwargs", {}), "retries": {"total_max_attempts": 2, "mode": "standard"}}
        config.setdefault("connect_timeout", PROBE_CONNECT_TIMEOUT_S)
        opts.update(config_kwargs=config, skip_instance_cache=True)
    try:
        fs, root = resolve(url, opts)
        if is_local(fs):
            fs.makedirs(root, exist_ok=True)
        probe = join(root, f".synthgen-write-check-{uuid.uuid4().hex}")
        fs.pipe_file(probe, b"")
        fs.rm_file(probe)
    except Exception as e:
        cause = outside_failure(e)
        if cause is None:
            raise
        endpoint = storage_options_from_env(storage_options).get("client_kwargs", {}).get("endpoint_url") \
            if s3 else None
        where = f" (S3 endpoint {endpoint})" if endpoint and endpoint not in cause else ""
        raise StorageError(f"{what} {url}{where}: cannot write there: {cause}") from e


def shown_command(prog: str, argv: list[str]) -> str:
    """A command line fit to record (model cards, logs): any --storage-options value hidden, it may hold keys."""
    shown = ["…" if prev == "--storage-options" else "--storage-options=…" if a.startswith("--storage-options=")
             else a for prev, a in zip(["", *argv], argv)]
    return " ".join([prog, *shown])


def join(url: str, *parts: str) -> str:
    """Join path parts onto a local path or URL with '/'."""
    return "/".join([url.rstrip("/"), *[p.strip("/") for p in parts]])


def is_local(fs: fsspec.AbstractFileSystem) -> bool:
    return "file" in (fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,))


def write_bytes_atomic(fs: fsspec.AbstractFileSystem, path: str, data: bytes) -> None:
    """Make ``path`` appear complete or not at all.

    Local disk: write a hidden temporary file beside it, then rename (atomic on POSIX).
    Object stores: a single PUT is already all-or-nothing, so write directly.
    """
    parent = path.rsplit("/", 1)[0] if "/" in path else ""
    if is_local(fs):
        if parent:
            fs.makedirs(parent, exist_ok=True)
        tmp = f"{parent}/.{path.rsplit('/', 1)[-1]}.{uuid.uuid4().hex}.tmp" if parent else f".{path}.tmp"
        try:
            with fs.open(tmp, "wb") as f:
                f.write(data)
            fs.mv(tmp, path)
        finally:
            if fs.exists(tmp):
                fs.rm(tmp)
    else:
        with fs.open(path, "wb") as f:
            f.write(data)


def write_json_atomic(fs: fsspec.AbstractFileSystem, path: str, obj: Any) -> None:
    write_bytes_atomic(fs, path, (json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n").encode())


def read_json(fs: fsspec.AbstractFileSystem, path: str) -> Any:
    with fs.open(path, "rb") as f:
        return json.loads(f.read())


def read_parquet(fs: fsspec.AbstractFileSystem, path: str, columns: list[str] | None = None) -> pa.Table:
    """A Parquet file read whole into Arrow-owned memory first, so Arrow's threads never hold a Python object.

    ``pq.read_table`` scans through Arrow's dataset layer, whose I/O threads may drop the last reference to the
    source after the table is returned. If that source wraps a Python object (a Python file, or ``bytes`` in
    ``pa.BufferReader``), its destructor takes the GIL; at interpreter exit that kills the Arrow thread inside
    a C++ destructor and the process aborts after its work is done ("terminate called without an active
    exception", exit 134; seen in a core dump: ``arrow::py::PyBuffer::~PyBuffer`` → ``PyGILState_Ensure`` →
    ``pthread_exit`` on an Arrow ThreadPool worker). Copying the bytes into an Arrow buffer (one memcpy)
    leaves nothing Python-owned for those threads to release.
    """
    import pyarrow.parquet as pq

    with fs.open(path, "rb") as f:
        data = f.read()
    sink = pa.BufferOutputStream()
    sink.write(data)
    return pq.read_table(pa.BufferReader(sink.getvalue()), columns=columns)
