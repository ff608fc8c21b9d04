"""WebDataset tar shards: one sample = contiguous tar entries sharing a key.

A sample ``k`` is ``k.png`` or ``k.jpg`` (the encoded image, stored as given), an
optional ``k.cls`` (the class index as ASCII digits; absent in unlabelled pools) and
an optional ``k.json`` (metadata: source, tags, ...). This is the layout that
``nvidia.dali.fn.readers.webdataset`` and the ``webdataset`` package read.

Beside each ``x.tar`` the writer puts ``x.idx``, DALI's index (the format of DALI's
``tools/wds2idx.py``, version v1.2: a line per sample listing ``ext data_offset size
name`` per entry), so DALI need not scan every tar header when a pipeline starts.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import logging
import re
import tarfile
from collections import Counter
from typing import BinaryIO, Iterator

from semisup_core import storage
from semisup_core.errors import DataError

log = logging.getLogger(__name__)

IMAGE_EXTS = ("png", "jpg")
# no '.' (splits key/ext), no '/' (a path); <= 90 chars so "<key>.json" fits one
# 512-byte tar header (the 100-byte name field), which the .idx offsets rely on
_KEY_RE = re.compile(r"[A-Za-z0-9_-]{1,90}")
_INDEX_VERSION = "v1.2"
_TAIL = 64 * 1024  # tar writers pad the end with zeros to a record (GNU: 10 KiB)


@dataclasses.dataclass
class Sample:
    """One decoded tar sample: the encoded image bytes, not pixels."""

    key: str
    image: bytes
    ext: str  # "png" or "jpg"
    cls: int | None = None
    meta: dict = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class ShardInfo:
    uri: str
    count: int


def shard_name(name: str, index: int) -> str:
    return f"{name}-{index:06d}.tar"


def index_uri(shard_uri: str) -> str:
    """The DALI index beside a shard: ``x.tar`` -> ``x.idx``."""
    return shard_uri[:-4] + ".idx" if shard_uri.endswith(".tar") else shard_uri + ".idx"


class ShardWriter:
    """Write samples into numbered tar shards ``<prefix>/<name>-000000.tar`` ...

    Each shard is published atomically (``storage.open_write``) when it is full or the
    writer closes; on an exception the unfinished shard is dropped. Use as a context
    manager; ``shards`` then lists ``ShardInfo(uri, count)`` and ``class_counts`` counts
    labelled samples per class. With ``index`` each shard gets its DALI ``.idx``.
    """

    def __init__(self, prefix_uri: str, samples_per_shard: int = 4096, name: str = "shard",
                 index: bool = True, first_index: int = 0):
        if samples_per_shard < 1:
            raise DataError(f"samples_per_shard must be >= 1, got {samples_per_shard}")
        self.prefix_uri = prefix_uri
        self.samples_per_shard = samples_per_shard
        self.name = name
        self.index = index
        self.first_index = first_index  # number of the first shard (a split's bucket)
        self._index_lines: list[str] = []  # one "ext offset size name ..." line per sample
        self.shards: list[ShardInfo] = []
        self.class_counts: Counter[int] = Counter()
        self._keys: set[str] = set()
        self._stack: contextlib.ExitStack | None = None
        self._tar: tarfile.TarFile | None = None

    def __enter__(self) -> "ShardWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        elif self._stack is not None:  # drop the unfinished shard, publish nothing
            self._tar = None
            self._stack.__exit__(exc_type, exc, tb)
            self._stack = None

    def _open_shard(self) -> None:
        uri = storage.join(self.prefix_uri, shard_name(self.name, self.first_index + len(self.shards)))
        storage.delete(index_uri(uri))  # a stale index from an earlier run must not survive
        self._stack = contextlib.ExitStack()
        f = self._stack.enter_context(storage.open_write(uri))
        self._tar = tarfile.open(fileobj=f, mode="w|", format=tarfile.GNU_FORMAT)
        self.shards.append(ShardInfo(uri, 0))
        self._index_lines = []

    def _finish_shard(self) -> None:
        self._tar.close()  # writes the end-of-archive blocks
        self._tar = None
        self._stack.close()  # publishes the object
        self._stack = None
        info = self.shards[-1]
        if self.index:  # after the tar: an index never points into a missing shard
            text = f"{_INDEX_VERSION} {info.count}\n" + "\n".join(self._index_lines) + "\n"
            storage.put_bytes(index_uri(info.uri), text.encode())
        log.debug("wrote %s (%d samples)", info.uri, info.count)

    def _add(self, name: str, data: bytes) -> str:
        info = tarfile.TarInfo(name)
        info.size, info.mode, info.mtime = len(data), 0o644, 0  # mtime 0: byte-identical reruns
        data_offset = self._tar.offset + tarfile.BLOCKSIZE  # after this entry's one-block header
        self._tar.addfile(info, io.BytesIO(data))
        return f"{name.partition('.')[2]} {data_offset} {len(data)} {name}"

    def write(self, key: str, image: bytes, ext: str, cls: int | None = None,
              meta: dict | None = None) -> None:
        """Append one sample; ``ext`` is "png" or "jpg" ("jpeg" is accepted as "jpg")."""
        ext = "jpg" if ext.lower() == "jpeg" else ext.lower()
        if ext not in IMAGE_EXTS:
            raise DataError(f"sample {key!r}: image extension must be png or jpg, got {ext!r}")
        if not isinstance(key, str) or not _KEY_RE.fullmatch(key):
            raise DataError(f"sample key {key!r} must be 1-90 characters of [A-Za-z0-9_-]")
        if key in self._keys:
            raise DataError(f"duplicate sample key {key!r}")
        if cls is not None and (int(cls) != cls or cls < 0):
            raise DataError(f"sample {key!r}: class must be a non-negative int, got {cls!r}")
        if self._tar is None:
            self._open_shard()
        self._keys.add(key)
        parts = [self._add(f"{key}.{ext}", image)]
        if cls is not None:
            parts.append(self._add(f"{key}.cls", str(int(cls)).encode("ascii")))
            self.class_counts[int(cls)] += 1
        if meta:
            parts.append(self._add(f"{key}.json", json.dumps(meta, sort_keys=True).encode()))
        self._index_lines.append(" ".join(parts))
        self.shards[-1].count += 1
        if self.shards[-1].count >= self.samples_per_shard:
            self._finish_shard()

    def close(self) -> list[ShardInfo]:
        """Publish the last shard; returns every shard written (possibly none)."""
        if self._tar is not None:
            self._finish_shard()
        return self.shards


class _TailReader(io.RawIOBase):
    """Reads through ``raw`` counting bytes and keeping the last ``_TAIL`` of them.

    tarfile's stream mode stops silently at a truncated or garbage header; the tail
    lets ``iter_shard`` check that the archive really ends in zero blocks.
    """

    def __init__(self, raw: BinaryIO):
        self.raw, self.total, self.tail = raw, 0, bytearray()

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        data = self.raw.read(n)
        self.total += len(data)
        self.tail += data
        del self.tail[:-_TAIL]
        return data

    def drain(self) -> None:
        while self.read(1 << 20):
            pass


def _check_end(reader: _TailReader, end: int, uri: str) -> None:
    """The bytes after the last member (offset ``end``) must be >= 1 zero block."""
    reader.drain()
    trailing = reader.total - end
    if trailing < tarfile.BLOCKSIZE or trailing > len(reader.tail) \
            or any(reader.tail[len(reader.tail) - trailing:]):
        raise DataError(f"shard {uri}: truncated or corrupt tar (no end-of-archive marker "
                        f"after byte {end})")


def _parse_member(name: str, data: bytes, uri: str) -> tuple[str, str, object]:
    key, dot, ext = name.rpartition("/")[2].partition(".")
    if not dot or not key:
        raise DataError(f"shard {uri}: entry {name!r} is not <key>.<ext>")
    ext = ext.lower()
    if ext == "cls":
        try:
            return key, ext, int(data.decode("ascii").strip())
        except (UnicodeDecodeError, ValueError):
            raise DataError(f"shard {uri}: {name} is not an integer class") from None
    if ext == "json":
        try:
            return key, ext, json.loads(data)
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise DataError(f"shard {uri}: {name} is not valid JSON") from None
    return key, ("jpg" if ext == "jpeg" else ext), data


def _finish_sample(parts: dict, key: str, uri: str) -> Sample:
    exts = [e for e in IMAGE_EXTS if e in parts]
    if not exts:
        raise DataError(f"shard {uri}: sample {key!r} has no image (.png or .jpg)")
    return Sample(key=key, image=parts[exts[0]], ext=exts[0], cls=parts.get("cls"),
                  meta=parts.get("json") or {})


def _iter_members(tar: tarfile.TarFile, uri: str) -> Iterator[tuple[str, str, object]]:
    for member in tar:
        if not member.isfile():
            continue
        f = tar.extractfile(member)
        yield _parse_member(member.name, f.read(), uri)


def iter_shard(uri: str) -> Iterator[Sample]:
    """Stream the samples of one tar shard, in the order they are stored.

    Raises DataError naming the shard when it is empty, truncated or corrupt, when a
    sample has no image, or when a key's entries are not contiguous.
    """
    with storage.open_read(uri) as raw:
        reader = _TailReader(raw)
        seen: set[str] = set()
        key, parts, n = None, {}, 0
        try:
            tar = tarfile.open(fileobj=reader, mode="r|")
            for k, ext, value in _iter_members(tar, uri):
                if k != key:
                    if key is not None:
                        yield _finish_sample(parts, key, uri)
                        n += 1
                    if k in seen:
                        raise DataError(f"shard {uri}: entries of sample {k!r} are not contiguous")
                    seen.add(k)
                    key, parts = k, {}
                parts[ext] = value
            end = tar.offset
        except (tarfile.TarError, EOFError, OSError) as err:
            raise DataError(f"shard {uri}: truncated or corrupt tar ({err})") from None
        _check_end(reader, end, uri)
        if key is None:
            raise DataError(f"shard {uri}: holds no samples")
        yield _finish_sample(parts, key, uri)


def write_samples(prefix_uri: str, samples, samples_per_shard: int = 4096,
                  name: str = "shard") -> list[ShardInfo]:
    """Write an iterable of ``Sample`` to shards; returns the shards written."""
    with ShardWriter(prefix_uri, samples_per_shard, name) as writer:
        for s in samples:
            writer.write(s.key, s.image, s.ext, s.cls, s.meta)
    return writer.shards


def shard_keys(uri: str) -> list[str]:
    """The sample keys of one shard in stored order: from its index when it has one (a few
    bytes a sample), else by reading the shard."""
    idx = index_uri(uri)
    if storage.exists(idx):
        lines = storage.get_bytes(idx).decode().splitlines()[1:]
        return [line.split()[3].rpartition(".")[0] for line in lines if line.strip()]
    return [s.key for s in iter_shard(uri)]
