"""Image decoding and encoding with PIL: the reference path the DALI reader is tested against."""

from __future__ import annotations

import io
import struct
import warnings
import zlib

import numpy as np
from PIL import Image

from semisup_core.errors import DataError

# what PIL's parsers raise on bad bytes (OSError covers "cannot identify image file" and
# "image file is truncated"); anything else (MemoryError, a bug) is not a corrupt image
CORRUPT_IMAGE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, TypeError, IndexError,
                        KeyError, struct.error, zlib.error, Image.DecompressionBombError,
                        Image.DecompressionBombWarning)
_GRAY_MODES = {"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F"}


def decode_image(data: bytes, channels: int | None = None) -> np.ndarray:
    """Decode PNG/JPEG bytes to a uint8 array H x W x C.

    C is 1 for grayscale images and 3 for colour ones; ``channels`` (1 or 3) forces
    one of the two (grey -> RGB replicates the plane, RGB -> grey uses ITU-R 601).
    Raises DataError("corrupt image ...") when PIL cannot decode the bytes.
    """
    if channels not in (None, 1, 3):
        raise DataError(f"channels must be 1 or 3, got {channels}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            img.load()
    except CORRUPT_IMAGE_ERRORS as err:
        raise DataError(f"corrupt image ({type(err).__name__}: {err})") from None
    gray = img.mode in _GRAY_MODES
    want = channels or (1 if gray else 3)
    mode = "L" if want == 1 else "RGB"
    if img.mode != mode:
        if img.mode in ("I", "I;16", "I;16B", "I;16L", "F") and mode == "L":
            return _wide_gray_to_uint8(img)
        img = img.convert(mode)
    arr = np.asarray(img, dtype=np.uint8)
    return arr[:, :, None] if arr.ndim == 2 else arr


def _wide_gray_to_uint8(img: Image.Image) -> np.ndarray:
    """16-bit / float grey: scale to 0..255 instead of PIL's clipping convert()."""
    arr = np.asarray(img).astype(np.float64)
    peak = 65535.0 if img.mode.startswith("I;16") or arr.max() > 255 else 255.0
    return np.clip(np.rint(arr * (255.0 / peak)), 0, 255).astype(np.uint8)[:, :, None]


def encode_png(arr: np.ndarray, compress_level: int = 6) -> bytes:
    """PNG bytes for a uint8 array H x W, H x W x 1 (grey) or H x W x 3 (RGB)."""
    arr = np.asarray(arr)
    if arr.dtype != np.uint8:
        raise DataError(f"encode_png needs uint8, got {arr.dtype}")
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if not (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[2] == 3)):
        raise DataError(f"encode_png needs H x W, H x W x 1 or H x W x 3, got {arr.shape}")
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG", compress_level=compress_level)
    return buf.getvalue()
