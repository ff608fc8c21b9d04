import gzip

import numpy as np
import pytest

from semisup_core.data.idx import encode_idx, parse_idx, read_idx, read_idx_pair, write_idx
from semisup_core.errors import DataError


@pytest.mark.parametrize("name", ["imgs-idx3-ubyte", "imgs-idx3-ubyte.gz"])
def test_round_trip(tmp_path, name):
    arr = np.random.default_rng(0).integers(0, 256, (7, 28, 28), dtype=np.uint8)
    uri = str(tmp_path / name)
    write_idx(uri, arr)
    assert (open(uri, "rb").read(2) == b"\x1f\x8b") == name.endswith(".gz")
    out = read_idx(uri)
    assert out.dtype == np.uint8 and out.shape == (7, 28, 28)
    np.testing.assert_array_equal(out, arr)


def test_pair_and_label_range(tmp_path):
    imgs = np.zeros((5, 4, 4), np.uint8)
    write_idx(str(tmp_path / "i.gz"), imgs)
    write_idx(str(tmp_path / "l.gz"), np.arange(5, dtype=np.uint8))
    write_idx(str(tmp_path / "short.gz"), np.arange(4, dtype=np.uint8))
    images, labels = read_idx_pair(str(tmp_path / "i.gz"), str(tmp_path / "l.gz"), num_classes=5)
    assert images.shape == (5, 4, 4) and labels.tolist() == [0, 1, 2, 3, 4]
    with pytest.raises(DataError, match="holds 5 images but .* 4 labels"):
        read_idx_pair(str(tmp_path / "i.gz"), str(tmp_path / "short.gz"))
    with pytest.raises(DataError, match="label 4 out of range"):
        read_idx_pair(str(tmp_path / "i.gz"), str(tmp_path / "l.gz"), num_classes=4)


def test_corrupt_files(tmp_path):
    good = encode_idx(np.ones((3, 2, 2), np.uint8))
    with pytest.raises(DataError, match="bad magic"):
        parse_idx(b"\x01\x02" + good[2:], "x")
    with pytest.raises(DataError, match="truncated or corrupt"):
        parse_idx(good[:-1], "x")
    with pytest.raises(DataError, match="element type 0x0d"):
        parse_idx(b"\x00\x00\x0d\x01" + b"\x00\x00\x00\x01" + b"\x00" * 4, "x")
    with pytest.raises(DataError, match="not an IDX file"):
        parse_idx(b"", "x")
    truncated_gz = str(tmp_path / "t.gz")
    with open(truncated_gz, "wb") as f:
        f.write(gzip.compress(good)[:-10])
    with pytest.raises(DataError, match=r"t\.gz: corrupt or truncated gzip"):
        read_idx(truncated_gz)
    msg = None
    try:
        parse_idx(good[:-1], "/data/x-idx3-ubyte")
    except DataError as err:
        msg = str(err)
    assert "/data/x-idx3-ubyte" in msg and "\n" not in msg
