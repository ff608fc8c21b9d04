import io

import numpy as np
import pytest
from PIL import Image

from semisup_core.data.decode import decode_image, encode_png
from semisup_core.errors import DataError


@pytest.mark.parametrize("shape", [(5, 4), (5, 4, 1), (5, 4, 3)])
def test_png_round_trip(shape):
    arr = np.random.default_rng(1).integers(0, 256, shape, dtype=np.uint8)
    out = decode_image(encode_png(arr))
    want = arr.reshape(5, 4, -1)
    assert out.dtype == np.uint8 and out.shape == want.shape
    np.testing.assert_array_equal(out, want)


def test_channel_conversion_and_jpeg():
    grey = np.full((4, 4, 1), 77, np.uint8)
    assert decode_image(encode_png(grey), channels=3).shape == (4, 4, 3)
    buf = io.BytesIO()
    Image.new("RGB", (6, 3), (200, 10, 10)).save(buf, format="JPEG")
    out = decode_image(buf.getvalue())
    assert out.shape == (3, 6, 3) and abs(int(out[0, 0, 0]) - 200) < 8
    assert decode_image(buf.getvalue(), channels=1).shape == (3, 6, 1)


def test_corrupt_image():
    data = encode_png(np.zeros((8, 8), np.uint8))
    for bad in (b"", b"not an image", data[: len(data) // 2]):
        with pytest.raises(DataError, match="^corrupt image"):
            decode_image(bad)
    with pytest.raises(DataError, match="uint8"):
        encode_png(np.zeros((2, 2), np.float32))


@pytest.mark.parametrize("raised, corrupt", [
    (SyntaxError("broken PNG file"), True), (OSError("image file is truncated"), True),
    (ValueError("tile cannot extend outside image"), True), (MemoryError(), False),
    (RuntimeError("a bug"), False)])
def test_only_bad_bytes_count_as_a_corrupt_image(monkeypatch, raised, corrupt):
    """What PIL raises on bad bytes is a corrupt image (counted and skipped by the stages);
    anything else (out of memory, a bug) is not hidden as one (issue 22)."""
    def fail(*_a, **_k):
        raise raised
    monkeypatch.setattr(Image, "open", fail)
    data = encode_png(np.zeros((4, 4, 1), np.uint8))
    if corrupt:
        with pytest.raises(DataError, match="corrupt image"):
            decode_image(data)
    else:
        with pytest.raises(type(raised)):
            decode_image(data)
