"""URI parsing shared by every backend."""

from __future__ import annotations

import os
import posixpath

from semisup_core.errors import StorageError

SCHEMES = ("file", "s3", "minio")


def split_uri(uri: str) -> tuple[str, str, str]:
    """Split into ``(scheme, bucket, key)``.

    Local URIs have bucket ``""`` and an absolute path as key.
    >>> split_uri("s3://b/x/y.tar")
    ('s3', 'b', 'x/y.tar')
    """
    if not isinstance(uri, str) or not uri:
        raise StorageError(f"empty or invalid URI: {uri!r}")
    if "://" not in uri:
        return "file", "", os.path.abspath(uri)
    scheme, rest = uri.split("://", 1)
    if scheme not in SCHEMES:
        raise StorageError(
            f"unsupported URI scheme {scheme!r} in {uri!r} (use a path, file://, s3:// or minio://)")
    if scheme == "file":
        return "file", "", os.path.abspath(rest or "/")
    bucket, _, key = rest.partition("/")
    if not bucket:
        raise StorageError(f"URI {uri!r} has no bucket name")
    return scheme, bucket, key


def is_local(uri: str) -> bool:
    return split_uri(uri)[0] == "file"


def local_path(uri: str) -> str:
    """The filesystem path of a local URI."""
    scheme, _, key = split_uri(uri)
    if scheme != "file":
        raise StorageError(f"{uri!r} is not a local path")
    return key


def join(uri: str, *parts: str) -> str:
    """Join path components onto a URI, keeping its scheme."""
    if "://" not in uri:
        return os.path.join(uri, *parts)
    return posixpath.join(uri, *parts)


def parent(uri: str) -> str:
    """The URI of the "directory" holding ``uri``."""
    if "://" not in uri:
        return os.path.dirname(os.path.abspath(uri))
    scheme, rest = uri.split("://", 1)
    return f"{scheme}://{posixpath.dirname(rest.rstrip('/'))}"
