"""One small interface over URIs.

Schemes:
  - plain paths and ``file://`` -- the local filesystem (the embedded default);
  - ``s3://bucket/key`` and ``minio://bucket/key`` -- MinIO / S3 through the ``minio``
    client. Endpoint and credentials come from the environment (see ``s3.S3Settings``).

Every function takes full URIs. Writes are atomic: a reader never sees a half-written
object (local: temp file + ``os.replace``; S3: an object only appears once its upload
completes). Errors a user can cause raise ``StorageError`` with a one-line message.
"""

from __future__ import annotations

import contextlib
import os
from typing import BinaryIO, Iterator

from semisup_core.errors import StorageError
from semisup_core.storage.base import Backend
from semisup_core.storage.uri import is_local, join, local_path, parent, split_uri

__all__ = [
    "Backend", "StorageError", "backend_for", "delete", "exists", "get_bytes", "get_file",
    "is_local", "join", "list_uris", "local_path", "open_read", "open_write", "parent",
    "put_bytes", "put_file", "read_json", "split_uri", "write_json",
]

_BACKENDS: dict[str, Backend] = {}


def backend_for(uri: str) -> Backend:
    """The backend serving ``uri`` (one instance per scheme, created lazily)."""
    scheme = split_uri(uri)[0]
    if scheme not in _BACKENDS:
        if scheme == "file":
            from semisup_core.storage.local import LocalBackend
            _BACKENDS[scheme] = LocalBackend()
        elif scheme in ("s3", "minio"):
            from semisup_core.storage.s3 import S3Backend
            _BACKENDS[scheme] = S3Backend.from_env()
        else:  # split_uri already rejects unknown schemes; kept for safety
            raise StorageError(f"unsupported URI scheme {scheme!r} in {uri!r}")
    return _BACKENDS[scheme]


def reset_backends() -> None:
    """Forget cached backends (tests change the S3 environment between cases)."""
    _BACKENDS.clear()


_INHERITED: list[dict[str, Backend]] = []  # a forked child's copies of its parent's backends


def _after_fork_in_child() -> None:
    """A forked child (a PIL DataLoader worker, the DALI decoder process) must not use its
    parent's keep-alive connections: two processes writing requests on one socket interleave
    them, and MinIO answers HTTP 400 (XAmzContentSHA256Mismatch) or stalls. The child starts
    with no backends and opens its own connections; the parent's are kept, unused and never
    closed (closing a TLS connection would write on the parent's socket)."""
    _INHERITED.append(dict(_BACKENDS))
    _BACKENDS.clear()


os.register_at_fork(after_in_child=_after_fork_in_child)


def put_bytes(uri: str, data: bytes) -> None:
    backend_for(uri).put_bytes(uri, data)


def get_bytes(uri: str) -> bytes:
    return backend_for(uri).get_bytes(uri)


def open_read(uri: str) -> contextlib.AbstractContextManager[BinaryIO]:
    """A streaming, read-only binary file; use as a context manager."""
    return backend_for(uri).open_read(uri)


def open_write(uri: str) -> contextlib.AbstractContextManager[BinaryIO]:
    """A writable binary file whose content becomes visible at ``uri`` only when the
    ``with`` block exits without an exception. On error nothing is published."""
    return backend_for(uri).open_write(uri)


def put_file(local: str, uri: str) -> None:
    backend_for(uri).put_file(local, uri)


def get_file(uri: str, local: str) -> None:
    backend_for(uri).get_file(uri, local)


def list_uris(prefix: str, recursive: bool = True) -> Iterator[str]:
    """Full URIs of the objects under ``prefix`` (a "directory"), sorted."""
    return backend_for(prefix).list(prefix, recursive=recursive)


def exists(uri: str) -> bool:
    return backend_for(uri).exists(uri)


def delete(uri: str) -> None:
    """Delete one object; deleting a missing object is not an error."""
    backend_for(uri).delete(uri)


def read_json(uri: str):
    import json
    try:
        return json.loads(get_bytes(uri))
    except json.JSONDecodeError as err:
        raise StorageError(f"{uri}: not valid JSON ({err.msg} at line {err.lineno})") from None


def write_json(uri: str, obj) -> None:
    import json
    put_bytes(uri, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())
