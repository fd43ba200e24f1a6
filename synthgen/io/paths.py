"""Every path in synthgen is a local path or a URL (s3://, gs://, file://); fsspec resolves both.

Credentials and endpoints come from the standard places (environment such as AWS_ACCESS_KEY_ID and
AWS_ENDPOINT_URL, ~/.aws/config) or from explicit ``storage_options``; never from code or logs.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from typing import Any

import fsspec
import pyarrow as pa
from fsspec.core import url_to_fs

from synthgen.errors import InputError

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
    """A Parquet file read whole into memory first.

    pyarrow reading through a Python file object leaves its thread pool to race interpreter teardown, which
    aborts the process at exit now and then ("terminate called without an active exception",
    apache/arrow#34314); reading from an in-memory buffer never touches Python I/O from Arrow's threads.
    """
    import pyarrow.parquet as pq

    with fs.open(path, "rb") as f:
        data = f.read()
    return pq.read_table(pa.BufferReader(data), columns=columns)


def read_bundle_file(fs: fsspec.AbstractFileSystem, root: str, name: str, url: str,
                     sha256: str | None = None) -> bytes:
    """One file of a bundle folder (model or encoder), checked against the sha256 its config pins.

    A missing or altered file is an InputError that names the bundle and the file.
    """
    path = join(root, name)
    if not fs.exists(path):
        raise InputError(f"bundle {url} is missing {name}")
    with fs.open(path, "rb") as f:
        data = f.read()
    if sha256 is not None and hashlib.sha256(data).hexdigest() != sha256:
        raise InputError(f"bundle {url}: {name} has sha256 {hashlib.sha256(data).hexdigest()}, expected {sha256} "
                         "(file altered or from another bundle)")
    return data
