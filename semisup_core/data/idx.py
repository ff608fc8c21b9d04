"""IDX files (the MNIST / Fashion-MNIST container), gzipped or not.

Layout (big-endian): two zero bytes, a type code (0x08 = uint8), the number of
dimensions ``d``, then ``d`` uint32 sizes, then the data in C order.
See http://yann.lecun.com/exdb/mnist/ ("FILE FORMATS FOR THE MNIST DATABASE").
"""

from __future__ import annotations

import gzip
import logging
import struct
import zlib

import numpy as np

from semisup_core import storage
from semisup_core.errors import DataError

log = logging.getLogger(__name__)

_UINT8 = 0x08
_GZIP_MAGIC = b"\x1f\x8b"


def _gunzip(data: bytes, uri: str) -> bytes:
    try:
        return gzip.decompress(data)
    except (OSError, EOFError, zlib.error) as err:
        raise DataError(f"{uri}: corrupt or truncated gzip data ({err})") from None


def parse_idx(data: bytes, uri: str = "<bytes>") -> np.ndarray:
    """Parse IDX bytes (gzipped or not) into a uint8 array of the stored shape.

    Raises DataError (one line, naming ``uri``) on a bad magic number, an unsupported
    element type, or a size that does not match the header.
    """
    if data[:2] == _GZIP_MAGIC:
        data = _gunzip(data, uri)
    if len(data) < 4:
        raise DataError(f"{uri}: not an IDX file (only {len(data)} bytes)")
    zero, dtype, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or ndim == 0:
        raise DataError(f"{uri}: not an IDX file (bad magic number 0x{data[:4].hex()})")
    if dtype != _UINT8:
        raise DataError(f"{uri}: IDX element type 0x{dtype:02x} is not supported (only uint8)")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(f"{uri}: truncated IDX header")
    shape = struct.unpack(f">{ndim}I", data[4:header])
    expected = int(np.prod(shape, dtype=np.int64))
    if len(data) - header != expected:
        raise DataError(f"{uri}: IDX header says shape {shape} ({expected} bytes) "
                        f"but the file holds {len(data) - header} bytes (truncated or corrupt)")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape)


def read_idx(uri: str) -> np.ndarray:
    """Read one IDX file through storage; returns a read-only uint8 array."""
    return parse_idx(storage.get_bytes(uri), uri)


def encode_idx(arr: np.ndarray, compress: bool = False) -> bytes:
    """IDX bytes for a uint8 array (gzipped if ``compress``); the inverse of ``parse_idx``."""
    arr = np.ascontiguousarray(arr)
    if arr.dtype != np.uint8 or arr.ndim == 0 or arr.ndim > 255:
        raise DataError(f"IDX needs a uint8 array of 1..255 dims, got {arr.dtype} {arr.shape}")
    raw = struct.pack(">HBB", 0, _UINT8, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape)
    raw += arr.tobytes()
    return gzip.compress(raw, mtime=0) if compress else raw


def write_idx(uri: str, arr: np.ndarray, compress: bool | None = None) -> None:
    """Write ``arr`` as IDX; gzipped when ``compress`` or (by default) when ``uri`` ends in .gz."""
    if compress is None:
        compress = uri.endswith(".gz")
    storage.put_bytes(uri, encode_idx(arr, compress))


def read_idx_pair(images_uri: str, labels_uri: str,
                  num_classes: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Read an image file and its label file.

    Returns ``(images, labels)``: images N x H x W uint8, labels N uint8.
    Raises DataError when the dimensions disagree or a label is >= ``num_classes``.
    """
    images, labels = read_idx(images_uri), read_idx(labels_uri)
    if images.ndim != 3:
        raise DataError(f"{images_uri}: expected N x H x W images, got shape {images.shape}")
    if labels.ndim != 1:
        raise DataError(f"{labels_uri}: expected N labels, got shape {labels.shape}")
    if len(images) != len(labels):
        raise DataError(f"{images_uri} holds {len(images)} images but "
                        f"{labels_uri} holds {len(labels)} labels")
    if num_classes is not None and len(labels) and int(labels.max()) >= num_classes:
        raise DataError(f"{labels_uri}: label {int(labels.max())} out of range "
                        f"for {num_classes} classes")
    log.debug("read %d images %s from %s", len(images), images.shape[1:], images_uri)
    return images, labels
