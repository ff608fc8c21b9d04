import io
import json
import os
import tarfile

import numpy as np
import pytest

from semisup_core.data.decode import encode_png
from semisup_core.data.shards import (Sample, ShardWriter, index_uri, iter_shard,
                                      write_samples)
from semisup_core.errors import DataError


def _samples(n, labelled=True):
    rng = np.random.default_rng(0)
    return [Sample(f"s-{i:03d}", encode_png(rng.integers(0, 256, (3, 3), dtype=np.uint8)), "png",
                   i % 4 if labelled and i % 5 else None, {"source": "t", "i": i} if i % 3 else {})
            for i in range(n)]


def _raw_tar(path, entries):
    with tarfile.open(path, "w", format=tarfile.GNU_FORMAT) as tar:
        for name, data in entries:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def test_round_trip(tmp_path):
    samples = _samples(10)
    with ShardWriter(str(tmp_path / "ds"), samples_per_shard=4) as w:
        for s in samples:
            w.write(s.key, s.image, s.ext, s.cls, s.meta)
    assert [os.path.basename(s.uri) for s in w.shards] == [
        "shard-000000.tar", "shard-000001.tar", "shard-000002.tar"]
    assert [s.count for s in w.shards] == [4, 4, 2]
    assert sum(w.class_counts.values()) == sum(s.cls is not None for s in samples)
    back = [s for shard in w.shards for s in iter_shard(shard.uri)]
    assert back == samples  # keys, bytes, ext, cls (None without .cls), meta
    with tarfile.open(w.shards[0].uri) as tar:  # one sample's entries are contiguous
        names = tar.getnames()
    assert names[:5] == ["s-000.png", "s-001.png", "s-001.cls", "s-001.json", "s-002.png"]
    keys = [n.split(".")[0] for n in names]
    assert keys == sorted(keys)


def test_dali_index_matches_tar(tmp_path):
    shards = write_samples(str(tmp_path / "ds"), _samples(7), samples_per_shard=5)
    for shard in shards:
        lines = open(index_uri(shard.uri)).read().splitlines()
        assert lines[0] == f"v1.2 {shard.count}" and len(lines) == shard.count + 1
        with tarfile.open(shard.uri) as tar:
            want = [(m.name.split(".", 1)[1], m.offset_data, m.size, m.name) for m in tar]
        got = []
        for line in lines[1:]:
            f = line.split()
            got += [(f[i], int(f[i + 1]), int(f[i + 2]), f[i + 3]) for i in range(0, len(f), 4)]
        assert got == want


def test_deterministic_bytes(tmp_path):
    a = write_samples(str(tmp_path / "a"), _samples(6), samples_per_shard=100)
    b = write_samples(str(tmp_path / "b"), _samples(6), samples_per_shard=100)
    assert open(a[0].uri, "rb").read() == open(b[0].uri, "rb").read()


def test_bad_writes(tmp_path):
    png = _samples(1)[0].image
    with ShardWriter(str(tmp_path / "w")) as w:
        w.write("a", png, "jpeg")
        with pytest.raises(DataError, match="duplicate sample key 'a'"):
            w.write("a", png, "png")
        for bad in ("a.b", "a/b", "a\n", "", "k" * 91):
            with pytest.raises(DataError, match=r"must be 1-90 characters"):
                w.write(bad, png, "png")
        with pytest.raises(DataError, match="png or jpg"):
            w.write("b", png, "gif")
        with pytest.raises(DataError, match="non-negative int"):
            w.write("c", png, "png", cls=-1)
    assert [s.ext for s in iter_shard(w.shards[0].uri)] == ["jpg"]


def test_failed_writer_publishes_nothing(tmp_path):
    out = tmp_path / "x"
    with pytest.raises(RuntimeError):
        with ShardWriter(str(out), samples_per_shard=3) as w:
            for s in _samples(5):
                w.write(s.key, s.image, s.ext, s.cls)
            raise RuntimeError("boom")
    assert sorted(os.listdir(out)) == ["shard-000000.idx", "shard-000000.tar"]  # no temp file


def test_empty_and_missing_image(tmp_path):
    empty = str(tmp_path / "empty.tar")
    _raw_tar(empty, [])
    with pytest.raises(DataError, match="empty.tar: holds no samples"):
        list(iter_shard(empty))
    zero = tmp_path / "zero.tar"
    zero.write_bytes(b"")
    with pytest.raises(DataError, match="zero.tar"):
        list(iter_shard(str(zero)))
    noimg = str(tmp_path / "noimg.tar")
    _raw_tar(noimg, [("k.cls", b"1"), ("k.json", b"{}")])
    with pytest.raises(DataError, match="sample 'k' has no image"):
        list(iter_shard(noimg))
    split = str(tmp_path / "split.tar")
    png = _samples(1)[0].image
    _raw_tar(split, [("a.png", png), ("b.png", png), ("a.cls", b"1")])
    with pytest.raises(DataError, match="not contiguous"):
        list(iter_shard(split))
    badcls = str(tmp_path / "badcls.tar")
    _raw_tar(badcls, [("a.png", png), ("a.cls", b"cat")])
    with pytest.raises(DataError, match="not an integer class"):
        list(iter_shard(badcls))


def test_truncated(tmp_path):
    shard = write_samples(str(tmp_path / "ds"), _samples(5), samples_per_shard=100)[0].uri
    data = open(shard, "rb").read()
    with tarfile.open(shard) as tar:
        second = tar.getmembers()[2].offset  # a header boundary
    cuts = [second, second + 100, second + 512 + 10, len(data) - 10240, 700]
    for cut in cuts:
        bad = tmp_path / f"cut-{cut}.tar"
        bad.write_bytes(data[:cut])
        with pytest.raises(DataError, match=f"cut-{cut}.tar: truncated or corrupt"):
            list(iter_shard(str(bad)))
    garbage = tmp_path / "garbage.tar"
    garbage.write_bytes(data[:second] + b"\xff" * 2048)
    with pytest.raises(DataError, match="garbage.tar"):
        list(iter_shard(str(garbage)))
    json.dumps([s.key for s in iter_shard(shard)])  # the intact shard still reads
