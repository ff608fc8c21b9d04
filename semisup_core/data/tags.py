"""Where an image's tags come from, and the tag frequency report of an import.

Sidecars of the ``tagged`` importer (paths are relative to the image folder, ``/``-separated):

- a CSV file with the header ``path,tags``; the tags field is split on spaces, commas,
  semicolons and ``|`` (quote it when it holds commas: ``a.png,"cat, dog"``);
- a JSON file ``{"a.png": ["cat", "dog"], ...}``;
- none: ``<image file>.txt`` (``a.png.txt``) or ``<stem>.txt`` (``a.txt``) beside each image,
  split like the CSV field.

A leading ``#`` is stripped (hashtags); case and duplicates are kept as found. Merging
spellings into synsets is the ``synsets`` stage's job (docs/plans/wsl.md §4.2).
"""

from __future__ import annotations

import csv
import io
import json
import logging
import posixpath
import re
from collections import Counter

import pyarrow as pa
import pyarrow.parquet as pq

from semisup_core import storage
from semisup_core.errors import DataError, StorageError

log = logging.getLogger(__name__)

TAGS_FILE = "tags.parquet"
TOP_TAGS = 25  # tags listed in the report (and dataset.json)
TAG_SCHEMA = pa.schema([("tag", pa.string()), ("images", pa.int64()),
                        ("occurrences", pa.int64())])
_SEPARATORS = re.compile(r"[ ,;|]+")


def clean_tag(tag: str) -> str:
    """``' #BrownBear '`` -> ``'BrownBear'``: outer whitespace and leading ``#`` removed."""
    return tag.strip().lstrip("#").strip()


def split_tags(text: str) -> list[str]:
    """Tags of a CSV field or a .txt sidecar: split on ``[ ,;|]`` (and newlines), cleaned."""
    return [t for t in (clean_tag(p) for p in _SEPARATORS.split(text.replace("\n", " "))) if t]


def _read_text(uri: str, what: str) -> str:
    try:
        return storage.get_bytes(uri).decode("utf-8-sig")
    except StorageError as err:
        raise DataError(f"{what}: {err}") from None
    except UnicodeDecodeError as err:
        raise DataError(f"{what} {uri}: not UTF-8 text (byte {err.start})") from None


def _relpath(path: str, where: str) -> str:
    rel = posixpath.normpath(path.strip())
    if rel.startswith(("/", "../")) or rel in (".", ".."):
        raise DataError(f"{where}: path {path!r} must be relative to the image folder")
    return rel


def _read_csv(uri: str) -> dict[str, tuple[str, list[str]]]:
    """``{relpath: (where, tags)}`` of a ``path,tags`` CSV; ``where`` names file and line."""
    rows = csv.reader(io.StringIO(_read_text(uri, "tags sidecar"), newline=""), strict=True)
    out: dict[str, tuple[str, list[str]]] = {}
    header = False
    try:
        for row in rows:
            where = f"{uri} line {rows.line_num}"
            if not any(f.strip() for f in row):
                continue
            if not header:
                if [f.strip().lower() for f in row] != ["path", "tags"]:
                    raise DataError(f"{where}: the header must be 'path,tags', "
                                    f"got {','.join(row)!r}")
                header = True
                continue
            if len(row) != 2 or not row[0].strip():
                raise DataError(f"{where}: expected 'path,tags', got {len(row)} field(s) "
                                f"{row!r} (quote tags that hold commas)")
            _add(out, _relpath(row[0], where), where, split_tags(row[1]))
    except csv.Error as err:
        raise DataError(f"{uri} line {rows.line_num}: malformed CSV ({err})") from None
    if not header:
        raise DataError(f"{uri}: empty tags file (expected the header 'path,tags')")
    return out


def _read_json(uri: str) -> dict[str, tuple[str, list[str]]]:
    """``{relpath: (where, tags)}`` of a ``{relpath: [tags]}`` JSON file."""
    try:
        raw = json.loads(_read_text(uri, "tags sidecar"))
    except json.JSONDecodeError as err:
        raise DataError(f"{uri}: invalid JSON (line {err.lineno}: {err.msg})") from None
    if not isinstance(raw, dict):
        raise DataError(f"{uri}: expected an object {{relative path: [tags]}}, "
                        f"got {type(raw).__name__}")
    out: dict[str, tuple[str, list[str]]] = {}
    for path, tags in raw.items():
        where = f"{uri} entry {path!r}"
        if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
            raise DataError(f"{where}: tags must be a list of strings, got {tags!r}")
        _add(out, _relpath(path, where), where, [t for t in map(clean_tag, tags) if t])
    return out


def _add(out: dict, rel: str, where: str, tags: list[str]) -> None:
    if rel in out:
        raise DataError(f"{where}: {rel!r} is listed twice (first at {out[rel][0]})")
    out[rel] = (where, tags)


def read_tag_table(uri: str, images: set[str], src_dir: str) -> dict[str, list[str]]:
    """Tags per image from a ``.csv`` or ``.json`` sidecar; every path must be in ``images``.

    Raises DataError naming the file and line (CSV) or entry (JSON) of the first bad row,
    or of a path that is not an image under ``src_dir``.
    """
    ext = posixpath.splitext(uri)[1].lower()
    if ext not in (".csv", ".json"):
        raise DataError(f"tags sidecar {uri}: expected a .csv (path,tags) or .json "
                        "({path: [tags]}) file")
    table = _read_csv(uri) if ext == ".csv" else _read_json(uri)
    for rel, (where, _) in table.items():
        if rel not in images:
            raise DataError(f"{where}: {rel!r} is not an image under {src_dir}")
    return {rel: tags for rel, (_, tags) in table.items()}


def sidecar_txt(rel: str, files: set[str]) -> str | None:
    """The .txt sidecar of image ``rel`` among ``files``: ``a.png.txt`` or ``a.txt``."""
    full, stem = rel + ".txt", posixpath.splitext(rel)[0] + ".txt"
    if full in files and stem in files:
        raise DataError(f"image {rel!r} has two tag files, {full!r} and {stem!r}; keep one")
    return full if full in files else stem if stem in files else None


def read_txt_tags(src_dir: str, images: list[str], files: set[str]) -> dict[str, list[str]]:
    """Tags per image from ``<image>.txt`` files beside the images (an image without one
    has no tags). Raises DataError when none of the images has a .txt file."""
    out = {}
    for rel in images:
        txt = sidecar_txt(rel, files)
        if txt is not None:
            out[rel] = split_tags(_read_text(storage.join(src_dir, txt), "tag file"))
    if images and not out:
        raise DataError(f"{src_dir}: none of the {len(images)} images has a tag file beside it "
                        "(<image>.txt); set tags=<file.csv|.json> to read a sidecar instead")
    return out


def tag_report(tags_per_image: list[list[str]]) -> tuple[dict, pa.Table]:
    """The tag frequency distribution of an import.

    Returns the summary (images, images without tags, distinct tags, tags on a single
    image, the TOP_TAGS tags with the most images as ``"tag: images"``) and the table ``tag, images,
    occurrences`` sorted by images (descending) then tag. ``images`` counts each image
    once; ``occurrences`` counts repeats within an image too.
    """
    images, occurrences = Counter(), Counter()
    for tags in tags_per_image:
        occurrences.update(tags)
        images.update(set(tags))
    order = sorted(images, key=lambda t: (-images[t], t))
    table = pa.table({"tag": order, "images": [images[t] for t in order],
                      "occurrences": [occurrences[t] for t in order]}, schema=TAG_SCHEMA)
    summary = {"images": len(tags_per_image),
               "untagged": sum(1 for tags in tags_per_image if not tags),
               "distinct_tags": len(order),
               "singleton_tags": sum(1 for t in order if images[t] == 1),
               # "tag: images" strings: dataset.json sorts keys, so no dict; tags.parquet
               # is the machine-readable table
               "top": [f"{t}: {images[t]}" for t in order[:TOP_TAGS]]}
    return summary, table


def write_tag_report(dataset_uri: str, table: pa.Table) -> str:
    """Write ``tags.parquet`` beside ``dataset.json``; returns its URI."""
    buf = io.BytesIO()
    pq.write_table(table, buf)
    uri = storage.join(dataset_uri, TAGS_FILE)
    storage.put_bytes(uri, buf.getvalue())
    return uri


def log_tag_report(summary: dict, where: str) -> None:
    top = ", ".join(summary["top"][:10])
    log.info("%s: %d images, %d without tags; %d distinct tags, %d on a single image; "
             "top: %s", where, summary["images"], summary["untagged"], summary["distinct_tags"],
             summary["singleton_tags"], top or "none")
