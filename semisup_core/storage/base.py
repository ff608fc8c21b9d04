"""The backend contract every storage scheme implements."""

from __future__ import annotations

import abc
import contextlib
from typing import BinaryIO, Iterator


class Backend(abc.ABC):
    """Put/get/stream/list/exists/delete over full URIs of one scheme."""

    @abc.abstractmethod
    def put_bytes(self, uri: str, data: bytes) -> None: ...

    @abc.abstractmethod
    def get_bytes(self, uri: str) -> bytes: ...

    @abc.abstractmethod
    def open_read(self, uri: str) -> contextlib.AbstractContextManager[BinaryIO]: ...

    @abc.abstractmethod
    def open_write(self, uri: str) -> contextlib.AbstractContextManager[BinaryIO]: ...

    @abc.abstractmethod
    def put_file(self, local: str, uri: str) -> None: ...

    @abc.abstractmethod
    def get_file(self, uri: str, local: str) -> None: ...

    @abc.abstractmethod
    def list(self, prefix: str, recursive: bool = True) -> Iterator[str]: ...

    @abc.abstractmethod
    def exists(self, uri: str) -> bool: ...

    @abc.abstractmethod
    def delete(self, uri: str) -> None: ...
