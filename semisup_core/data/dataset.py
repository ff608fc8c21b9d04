"""``dataset.json``: what a directory of shards holds.

A dataset is a directory (local or in the object store) with tar shards and a
``dataset.json`` that names the classes, lists the shards (URIs relative to the
directory) with their sample counts, and records per-class counts, the source and
the image geometry. Unlabelled pools keep the label space (``classes``) of the task
but ``labelled`` is false and ``class_counts`` is empty.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Iterator

from semisup_core import storage
from semisup_core.data.shards import Sample, ShardInfo, iter_shard
from semisup_core.errors import DataError, StorageError

log = logging.getLogger(__name__)

DATASET_FILE = "dataset.json"
SCHEMA_VERSION = 1


@dataclasses.dataclass
class DatasetMeta:
    """The contents of ``dataset.json``.

    shards: ``[{"uri": "shard-000000.tar", "count": 4096}, ...]``, URIs relative to the
    dataset directory. class_counts[i] counts samples of classes[i] (empty if unlabelled).
    height/width are None when image sizes vary; channels is 1 (grey) or 3 (RGB).
    """

    name: str
    classes: list[str]
    num_classes: int
    shards: list[dict]
    num_samples: int
    class_counts: list[int]
    labelled: bool
    source: str
    channels: int
    height: int | None = None
    width: int | None = None
    extra: dict = dataclasses.field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION

    def validate(self, where: str = DATASET_FILE) -> "DatasetMeta":
        """Check internal consistency; raises DataError naming the field."""
        _check(isinstance(self.name, str) and self.name, where, "name",
               "must be a non-empty string")
        _check(isinstance(self.classes, list) and all(isinstance(c, str) for c in self.classes)
               and len(set(self.classes)) == len(self.classes), where, "classes",
               "must be a list of distinct strings")
        _check(self.num_classes == len(self.classes), where, "num_classes",
               f"is {self.num_classes} but {len(self.classes)} classes are listed")
        _check(self.channels in (1, 3), where, "channels", f"must be 1 or 3, got {self.channels}")
        self._validate_shards(where)
        if self.labelled:
            _check(len(self.class_counts) == self.num_classes
                   and sum(self.class_counts) == self.num_samples, where, "class_counts",
                   f"must have {self.num_classes} entries summing to {self.num_samples}")
        else:
            _check(not self.class_counts, where, "class_counts", "must be empty when unlabelled")
        return self

    def _validate_shards(self, where: str) -> None:
        for s in self.shards:
            ok = isinstance(s, dict) and set(s) == {"uri", "count"} and isinstance(s["uri"], str)
            ok = ok and "://" not in s["uri"] and not s["uri"].startswith("/") \
                and ".." not in s["uri"].split("/")
            ok = ok and isinstance(s["count"], int) and s["count"] > 0
            _check(ok, where, "shards", f"entry {s!r} must be {{uri: relative path, count: > 0}}")
        total = sum(s["count"] for s in self.shards)
        _check(total == self.num_samples, where, "num_samples",
               f"is {self.num_samples} but the shards hold {total}")


def _check(ok: bool, where: str, field: str, msg: str) -> None:
    if not ok:
        raise DataError(f"{where}: field {field!r} {msg}")


def make_meta(dataset_uri: str, name: str, classes: list[str], shards: list[ShardInfo],
              class_counts: dict[int, int] | None, source: str, channels: int,
              hw: tuple[int, int] | None = None, extra: dict | None = None) -> DatasetMeta:
    """Build (and validate) a DatasetMeta from a ShardWriter's output.

    ``class_counts`` maps class index -> count, or None for an unlabelled pool.
    """
    rel = [{"uri": _relative(s.uri, dataset_uri), "count": s.count} for s in shards]
    counts = [] if class_counts is None else [int(class_counts.get(i, 0))
                                              for i in range(len(classes))]
    meta = DatasetMeta(
        name=name, classes=list(classes), num_classes=len(classes), shards=rel,
        num_samples=sum(s.count for s in shards), class_counts=counts,
        labelled=class_counts is not None, source=source, channels=channels,
        height=hw[0] if hw else None, width=hw[1] if hw else None, extra=dict(extra or {}))
    return meta.validate(storage.join(dataset_uri, DATASET_FILE))


def _relative(uri: str, root: str) -> str:
    root = root.rstrip("/") + "/"
    if "://" not in uri and "://" not in root:
        return os.path.relpath(uri, root)
    if not uri.startswith(root):
        raise DataError(f"shard {uri} is not inside dataset directory {root}")
    return uri[len(root):]


def write_meta(dataset_uri: str, meta: DatasetMeta) -> str:
    """Validate and write ``<dataset_uri>/dataset.json``; returns its URI."""
    uri = storage.join(dataset_uri, DATASET_FILE)
    meta.validate(uri)
    storage.write_json(uri, dataclasses.asdict(meta))
    return uri


def read_meta(dataset_uri: str) -> DatasetMeta:
    """Read and validate ``<dataset_uri>/dataset.json``.

    Raises DataError on a missing dataset.json, unknown or missing fields, or an
    inconsistent file.
    """
    uri = storage.join(dataset_uri, DATASET_FILE)
    try:
        raw = storage.read_json(uri)
    except StorageError as err:
        raise DataError(f"{dataset_uri} is not a dataset ({err})") from None
    if not isinstance(raw, dict):
        raise DataError(f"{uri}: expected a JSON object")
    fields = {f.name for f in dataclasses.fields(DatasetMeta)}
    unknown = sorted(set(raw) - fields)
    if unknown:
        raise DataError(f"{uri}: unknown field(s) {', '.join(unknown)}")
    if raw.get("schema_version", SCHEMA_VERSION) != SCHEMA_VERSION:
        raise DataError(f"{uri}: schema_version {raw['schema_version']} is not {SCHEMA_VERSION}")
    try:
        meta = DatasetMeta(**raw)
    except TypeError as err:  # a required field is missing
        raise DataError(f"{uri}: {str(err).split('() ', 1)[-1]}") from None
    return meta.validate(uri)


def first_ids(meta: DatasetMeta) -> list[int]:
    """The image id of every shard's first sample.

    An image's id is its ordinal in the dataset: shards in ``dataset.json`` order, samples in
    tar order (corrupt ones counted), so ``id = first_ids[shard] + position in the shard``,
    dense in ``[0, num_samples)``. It is fixed when the dataset is written (import, split)
    and never changes after; ``score`` carries it beside the key so that ``select`` works on
    integers (below 2**32 for pools of up to 4.29e9 images: its packed path).
    """
    out, n = [], 0
    for s in meta.shards:
        out.append(n)
        n += s["count"]
    return out


def shard_uris(dataset_uri: str, meta: DatasetMeta | None = None) -> list[str]:
    """Absolute URIs of a dataset's shards, in dataset.json order."""
    meta = meta or read_meta(dataset_uri)
    return [storage.join(dataset_uri, s["uri"]) for s in meta.shards]


def iter_dataset(dataset_uri: str, meta: DatasetMeta | None = None,
                 shard_id: int = 0, num_shards: int = 1) -> Iterator[Sample]:
    """Stream the samples of a dataset; with ``num_shards`` > 1 only tar shards
    ``shard_id::num_shards``. Raises DataError when a shard's count differs from dataset.json."""
    meta = meta or read_meta(dataset_uri)
    for entry in meta.shards[shard_id::num_shards]:
        uri, n = storage.join(dataset_uri, entry["uri"]), 0
        for sample in iter_shard(uri):
            n += 1
            yield sample
        if n != entry["count"]:
            raise DataError(f"shard {uri} holds {n} samples but dataset.json says {entry['count']}")


def require_same_classes(a: DatasetMeta, b: DatasetMeta) -> None:
    """Raise DataError unless ``a`` and ``b`` share the same label space (names and order)."""
    if a.classes == b.classes:
        return
    if sorted(a.classes) == sorted(b.classes):
        raise DataError(f"datasets {a.name!r} and {b.name!r} list the same classes "
                        "in a different order")
    only_a = sorted(set(a.classes) - set(b.classes))[:5]
    only_b = sorted(set(b.classes) - set(a.classes))[:5]
    raise DataError(f"class mismatch between datasets {a.name!r} ({a.num_classes} classes) "
                    f"and {b.name!r} ({b.num_classes}): only in first {only_a}, "
                    f"only in second {only_b}")
