"""Errors a user can act on, and the one-line description of failures outside synthgen.

- ``InputError``: bad input (a path, a file, a row, a field). The CLI prints it and exits 2.
- ``StorageError``: storage, the network or credentials failed (an unreachable endpoint, wrong keys, no
  permission, a full disk). The CLI prints it and exits 1.
- ``transient``: whether such a failure may pass if the call is tried again (storage retries use it).
- ``outside_failure``: the same one line for such an error raised by a library (botocore, aiohttp, s3fs, the
  OS) anywhere in an exception's chain, also through Ray's wrappers, so it never reaches the user as a traceback.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from urllib.parse import urlsplit


class InputError(Exception):
    """Bad input (a path, a file, a row, a field): the message names it and says what was expected."""


class StorageError(Exception):
    """Storage, network, credential or permission failure: the message names the target and the cause."""


def outside_failure(error: BaseException) -> str | None:
    """One line naming the target (URL, endpoint, path) and the cause of a storage/network/credential/permission
    failure found in ``error`` or its causes; None when it is none of these (a bug keeps its traceback)."""
    for e in _chain(error, implicit=False):
        line = _describe(e)
        if line is not None:
            return line.strip().splitlines()[0]  # Ray Data appends lines of retry advice to a message
    return None


def transient(error: BaseException) -> bool:
    """Whether a storage call that raised ``error`` may succeed when tried again: refused or reset connections,
    timeouts, server errors (an object store restarting). Wrong or missing credentials, no permission and a
    missing bucket or file are not: retrying them only delays the error."""
    if isinstance(error, (PermissionError, FileNotFoundError, FileExistsError, IsADirectoryError, NotADirectoryError)):
        return False
    botocore = sys.modules.get("botocore.exceptions")
    if botocore is not None:
        if isinstance(error, (botocore.NoCredentialsError, botocore.PartialCredentialsError)):
            return False
        if isinstance(error, (botocore.ConnectionError, botocore.HTTPClientError)):  # not OSErrors
            return True
    aiohttp = sys.modules.get("aiohttp")
    if aiohttp is not None and isinstance(error, aiohttp.ClientConnectionError):
        return True
    return isinstance(error, OSError)  # connection and timeout errors; s3fs's OSError for a 5xx


def _chain(error: BaseException, *, implicit: bool) -> Iterator[BaseException]:
    """``error`` and its causes, outermost first: ``raise … from`` causes and Ray's remote ``cause``; with
    ``implicit`` also what was being handled when it was raised (a bug raised while handling an OSError is
    not a storage failure). Ray's wrappers are skipped: their text is a whole remote traceback."""
    ray_exceptions = sys.modules.get("ray.exceptions")
    ray_error = getattr(ray_exceptions, "RayError", None) if ray_exceptions else None
    seen, todo = set(), [error]
    while todo:
        e = todo.pop(0)
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        wrapper = ray_error is not None and isinstance(e, ray_error)
        if not wrapper:
            yield e
        todo += [getattr(e, "cause", None), e.__cause__]
        if implicit or wrapper:
            todo.append(e.__context__)


def _root_cause(error: BaseException) -> str:
    """The innermost OS-level reason (e.g. "Connect call failed ('127.0.0.1', 9)"), or the error's own text."""
    inner = [e for e in _chain(error, implicit=True) if isinstance(e, OSError)]
    return _os_text(inner[-1]) if inner else str(error)


def _os_text(e: OSError) -> str:
    text = e.strerror or str(e) or type(e).__name__
    return f"{text}: {e.filename}" if e.filename and str(e.filename) not in text else text


def _endpoint(url: str | None) -> str:
    """scheme://host:port of a request URL: the endpoint the user configured, without the object's path."""
    parts = urlsplit(url or "")
    return f"{parts.scheme}://{parts.netloc}" if parts.netloc else str(url)


def _describe(e: BaseException) -> str | None:
    if isinstance(e, StorageError):
        return str(e)
    botocore = sys.modules.get("botocore.exceptions")
    if botocore is not None:
        if isinstance(e, (botocore.NoCredentialsError, botocore.PartialCredentialsError)):
            return (f"no usable S3 credentials ({e}): set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, "
                    "~/.aws/credentials or --storage-options '{\"key\": …, \"secret\": …}'")
        if isinstance(e, botocore.EndpointConnectionError):
            return f"cannot connect to {_endpoint(e.kwargs.get('endpoint_url'))} ({_root_cause(e)})"
        if isinstance(e, (botocore.ConnectTimeoutError, botocore.ReadTimeoutError)):
            return f"timed out talking to {_endpoint(e.kwargs.get('endpoint_url'))}"
        if isinstance(e, botocore.ClientError):
            err = e.response.get("Error", {})
            return f"S3 {e.operation_name} refused: {err.get('Code')} ({err.get('Message')})"
        if isinstance(e, botocore.BotoCoreError):
            return f"S3 client error: {e}"
    aiohttp = sys.modules.get("aiohttp")
    if aiohttp is not None and isinstance(e, aiohttp.ClientConnectorError):
        return f"cannot connect to {e.host}:{e.port} ({_root_cause(e)})"
    if isinstance(e, PermissionError):
        return f"permission denied: {_os_text(e)}"
    if isinstance(e, (ConnectionError, TimeoutError)):
        return f"network error: {_os_text(e)}"
    if isinstance(e, OSError):
        return f"storage error: {_os_text(e)}"
    return None
