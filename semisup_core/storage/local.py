"""The local filesystem backend: plain paths and ``file://`` URIs."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from typing import BinaryIO, Iterator

from semisup_core import faults
from semisup_core.errors import StorageError
from semisup_core.storage.base import Backend
from semisup_core.storage.uri import local_path


@contextlib.contextmanager
def atomic_file(path: str) -> Iterator[BinaryIO]:
    """Write to a temp file beside ``path``; rename over it only on success."""
    directory = os.path.dirname(path) or "."
    try:
        os.makedirs(directory, exist_ok=True)
    except OSError as err:
        raise StorageError(f"cannot create directory {directory}: {err.strerror}") from None
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix="-" + os.path.basename(path))
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        faults.before_publish(path)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


class LocalBackend(Backend):
    def put_bytes(self, uri: str, data: bytes) -> None:
        with atomic_file(local_path(uri)) as f:
            f.write(data)

    def get_bytes(self, uri: str) -> bytes:
        with self.open_read(uri) as f:
            return f.read()

    def open_read(self, uri: str):
        path = local_path(uri)
        try:
            return open(path, "rb")
        except FileNotFoundError:
            raise StorageError(f"no such file: {path}") from None
        except IsADirectoryError:
            raise StorageError(f"{path} is a directory, expected a file") from None
        except PermissionError:
            raise StorageError(f"permission denied reading {path}") from None

    def open_write(self, uri: str):
        return atomic_file(local_path(uri))

    def put_file(self, local: str, uri: str) -> None:
        if not os.path.isfile(local):
            raise StorageError(f"no such file: {local}")
        with open(local, "rb") as src, atomic_file(local_path(uri)) as dst:
            shutil.copyfileobj(src, dst, 1 << 20)

    def get_file(self, uri: str, local: str) -> None:
        with self.open_read(uri) as src, atomic_file(os.path.abspath(local)) as dst:
            shutil.copyfileobj(src, dst, 1 << 20)

    def list(self, prefix: str, recursive: bool = True) -> Iterator[str]:
        root = local_path(prefix)
        if os.path.isfile(root):
            return iter([root])
        if not os.path.isdir(root):
            return iter([])
        out = []
        if recursive:
            for dirpath, _, files in os.walk(root):
                out += [os.path.join(dirpath, f) for f in files if not f.startswith(".tmp-")]
        else:
            out = [os.path.join(root, f) for f in os.listdir(root)
                   if os.path.isfile(os.path.join(root, f)) and not f.startswith(".tmp-")]
        return iter(sorted(out))

    def exists(self, uri: str) -> bool:
        return os.path.isfile(local_path(uri))

    def delete(self, uri: str) -> None:
        path = local_path(uri)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        # an object store has no directories: drop the one this object leaves empty
        with contextlib.suppress(OSError):
            os.rmdir(os.path.dirname(path))
