import io
import logging
import os

import numpy as np
import pytest
from PIL import Image

from semisup_core.data.dataset import iter_dataset, read_meta
from semisup_core.data.decode import decode_image
from semisup_core.data.idx import read_idx
from semisup_core.data.importers import (FASHION_MNIST_CLASSES, IMPORTERS, import_dataset,
                                         import_image_folder, import_mnist)
from semisup_core.errors import ConfigError, DataError

FASHION_DIR = "/usr/share/datasets/fashion-mnist"


def test_fashion_mnist_test_split(fashion_test):
    uri, meta = fashion_test
    assert read_meta(uri) == meta
    assert meta.num_samples == 10000 and meta.class_counts == [1000] * 10
    assert meta.classes == FASHION_MNIST_CLASSES and meta.num_classes == 10
    assert (meta.height, meta.width, meta.channels) == (28, 28, 1)
    assert [s["count"] for s in meta.shards] == [2500] * 4
    labels = read_idx(os.path.join(FASHION_DIR, "t10k-labels-idx1-ubyte.gz"))
    images = read_idx(os.path.join(FASHION_DIR, "t10k-images-idx3-ubyte.gz"))
    for i, s in enumerate(iter_dataset(uri, meta, shard_id=0, num_shards=4)):
        if i % 500 == 0:  # spot-check pixels and labels against the IDX files
            assert s.key == f"fmnist-test-{i:06d}" and s.cls == labels[i]
            np.testing.assert_array_equal(decode_image(s.image)[:, :, 0], images[i])
            assert s.meta == {"source": "fashion-mnist", "split": "test", "index": i}


def test_bad_split_and_missing_files(tmp_path):
    with pytest.raises(DataError, match="split must be"):
        import_dataset("fashion-mnist", FASHION_DIR, str(tmp_path / "x"), split="val")
    with pytest.raises(DataError, match="neither t10k-images-idx3-ubyte.gz nor"):
        import_mnist(str(tmp_path), str(tmp_path / "x"), split="test")
    with pytest.raises(ConfigError, match="unknown dataset source 'cifar'"):
        import_dataset("cifar", None, str(tmp_path / "x"))
    assert set(IMPORTERS) == {"fashion-mnist", "mnist", "image-folder", "tagged", "openclipart"}


def test_mnist_test_split(tmp_path, mnist_src):
    meta = import_mnist(mnist_src, str(tmp_path / "m"), split="test", samples_per_shard=5000)
    assert meta.num_samples == 10000 and meta.classes == [str(d) for d in range(10)]
    assert next(iter_dataset(str(tmp_path / "m"))).key == "mnist-test-000000"


def _image_bytes(fmt, mode, size, colour):
    buf = io.BytesIO()
    Image.new(mode, size, colour).save(buf, format=fmt)
    return buf.getvalue()


def _folder(root):
    files = {
        "cat/a.png": _image_bytes("PNG", "RGB", (8, 6), (255, 0, 0)),
        "cat/b.JPG": _image_bytes("JPEG", "RGB", (8, 6), (0, 255, 0)),
        "dog/c.jpeg": _image_bytes("JPEG", "L", (8, 6), 128),
        "dog/broken.png": b"\x89PNG\r\n\x1a\n garbage",
        "dog/notes.txt": b"not an image",
        "bird/d.png": _image_bytes("PNG", "L", (8, 6), 3),
    }
    for rel, data in files.items():
        os.makedirs(os.path.join(root, os.path.dirname(rel)), exist_ok=True)
        with open(os.path.join(root, rel), "wb") as f:
            f.write(data)
    return files


def test_image_folder(tmp_path, caplog):
    files = _folder(str(tmp_path / "src"))
    out = str(tmp_path / "out")
    with caplog.at_level(logging.WARNING):
        meta = import_image_folder(str(tmp_path / "src"), out, samples_per_shard=2)
    assert meta.classes == ["bird", "cat", "dog"] and meta.class_counts == [1, 2, 1]
    assert meta.channels == 3 and (meta.height, meta.width) == (6, 8)
    assert meta.extra["skipped_corrupt"] == 1
    # sorted paths: bird/d, cat/a, cat/b, dog/broken, dog/c -> the corrupt one is img-000003
    assert "img-000003 (dog/broken.png)" in caplog.text and "ignored 1 file" in caplog.text
    samples = list(iter_dataset(out))
    assert [s.key for s in samples] == ["img-000000", "img-000001", "img-000002", "img-000004"]
    assert [s.ext for s in samples] == ["png", "png", "jpg", "jpg"]
    for s in samples:  # original bytes, never re-encoded
        assert s.image == files[s.meta["path"]]
    assert [s.cls for s in samples] == [0, 1, 1, 2]


def test_empty_or_all_corrupt_folder(tmp_path):
    (tmp_path / "empty" / "cat").mkdir(parents=True)
    with pytest.raises(DataError, match="no images found"):
        import_image_folder(str(tmp_path / "empty"), str(tmp_path / "o1"))
    (tmp_path / "bad" / "cat").mkdir(parents=True)
    (tmp_path / "bad" / "cat" / "x.jpg").write_bytes(b"nope")
    with pytest.raises(DataError, match="none of the 1 images could be decoded"):
        import_image_folder(str(tmp_path / "bad"), str(tmp_path / "o2"))
