"""Issue 22, bad data: a damaged pool costs the damaged images, never the task or the other
shards' results; a model failure is never taken for a decoding one; a missing shard is one
line before anything is written."""

import faulthandler
import io
import logging
import os
import shutil
import signal
import tarfile

import pytest

from semisup_core import storage
from semisup_core.data.dataset import read_meta, shard_uris
from semisup_core.errors import DataError
from semisup_core.teacher_student import score as score_mod
from semisup_core.teacher_student.score import ScoreConfig, score
from tests.pools import write_pool

import semisup_core.inference as inference


def _score(teacher, pool, out, **kw):
    return score(ScoreConfig(model=teacher, pool=pool, out=str(out), top_p=2, partial_k=30,
                             batch_size=16, **kw))


def _tables(out) -> dict[str, bytes]:
    d = os.path.join(str(out), "shards")
    return {n: open(os.path.join(d, n), "rb").read() for n in sorted(os.listdir(d))
            if n.endswith(".parquet")}


def _marker(out, shard):
    return storage.read_json(os.path.join(str(out), "shards", f"{shard}.done.json"))


@pytest.fixture(scope="module")
def clean_pool(tmp_path_factory):
    """120 intact images in 6 shards."""
    return write_pool(str(tmp_path_factory.mktemp("clean") / "pool"), 120)


def test_a_native_crash_of_the_dali_decoder_costs_a_pil_redo(teacher, clean_pool, tmp_path,
                                                            monkeypatch, caplog):
    """DALI decodes in a child process: when it dies of a signal (as it does on some corrupt
    PNGs; here a SIGSEGV raised in it while it decodes shard 2), that shard is decoded again
    by PIL and the others keep DALI; the tables equal PIL's."""
    real = inference.dali_decode

    def crashing(uri, *a, **kw):
        if uri.endswith("shard-000002.tar"):
            faulthandler.disable()  # pytest's, inherited: no stack dump in the test log
            os.kill(os.getpid(), signal.SIGSEGV)
        return real(uri, *a, **kw)

    monkeypatch.setattr(inference, "dali_decode", crashing)
    pil = _score(teacher, clean_pool, tmp_path / "pil", decoder="pil")
    with caplog.at_level(logging.WARNING, logger="semisup_core.inference"):
        dali = _score(teacher, clean_pool, tmp_path / "dali", decoder="dali")
    assert dali == {**pil, "worker": 0} and dali["images"] == 120
    assert _tables(tmp_path / "dali") == _tables(tmp_path / "pil")
    died = [r.getMessage() for r in caplog.records if "DALI failed" in r.getMessage()]
    assert len(died) == 1 and "shard-000002" in died[0] and "exit code -11" in died[0]


_IN_PROCESS_CRASH = """
import faulthandler, os, signal, sys
import semisup_core.inference as inference
from semisup_core.teacher_student.score import ScoreConfig, score
inference.dali_in_process = lambda device: True  # as on a GPU (mixed), here with DALI cpu
real = inference.dali_decode
def crashing(uri, *a, **kw):
    if uri.endswith("shard-000002.tar"):  # deterministic: every attempt dies on this shard
        faulthandler.disable()
        os.kill(os.getpid(), signal.SIGSEGV)
    return real(uri, *a, **kw)
inference.dali_decode = crashing
teacher, pool, out = sys.argv[1:]
score(ScoreConfig(model=teacher, pool=pool, out=out, top_p=2, partial_k=30, batch_size=16,
                  decoder="dali"))
"""


def test_a_crash_of_dali_in_the_tasks_own_process_costs_one_retry(teacher, clean_pool, tmp_path):
    """On a GPU DALI decodes in the task's process (``mixed``), so a native crash kills the
    task. The retry must not crash again on the same shard: the attempt marker left behind
    names it, and PIL decodes it; the other shards keep DALI; the tables equal PIL's and no
    attempt marker is left."""
    import subprocess
    import sys
    pil = _score(teacher, clean_pool, tmp_path / "pil", decoder="pil")
    out = str(tmp_path / "gpu")
    args = [sys.executable, "-c", _IN_PROCESS_CRASH, teacher, clean_pool, out]
    first = subprocess.run(args, capture_output=True, text=True)
    assert first.returncode == -signal.SIGSEGV, first.stderr[-1500:]
    assert sorted(n for n in os.listdir(os.path.join(out, "shards")) if "attempt" in n) == [
        "shard-000002.dali-attempt"]
    retry = subprocess.run(args, capture_output=True, text=True)
    assert retry.returncode == 0, retry.stderr[-1500:]
    assert "an earlier attempt died while DALI decoded this shard" in retry.stderr
    assert _tables(out) == _tables(tmp_path / "pil")
    assert not [n for n in os.listdir(os.path.join(out, "shards")) if "attempt" in n]
    assert sum(_marker(out, f"shard-{i:06d}")["images"] for i in range(6)) == pil["images"]


@pytest.mark.parametrize("decoder", ["dali", "pil"])
def test_a_model_error_fails_the_task_and_is_not_rescored(teacher, clean_pool, tmp_path,
                                                         monkeypatch, caplog, decoder):
    """An error in inference (a CUDA out-of-memory, a model bug) fails the task with it: not
    logged as "DALI failed", the shard not redone with PIL, no marker for it."""
    real = score_mod._forward

    def failing(*a, **kw):
        forward, empty = real(*a, **kw)
        calls = []

        def f(batch):
            calls.append(1)
            if len(calls) == 3:
                raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
            return forward(batch)
        return f, empty

    monkeypatch.setattr(score_mod, "_forward", failing)
    with caplog.at_level(logging.WARNING), pytest.raises(RuntimeError, match="CUDA out of memory"):
        _score(teacher, clean_pool, tmp_path / "s", decoder=decoder)
    assert not [r for r in caplog.records if "DALI failed" in r.getMessage()]
    markers = sorted(n for n in os.listdir(tmp_path / "s" / "shards") if n.endswith(".done.json"))
    assert markers == ["shard-000000.done.json"]  # 20 images = 2 batches of 16: the 3rd fails


def _damage(pool, out):
    """A copy of ``pool`` with shard 1 cut mid-member, shard 3 zero bytes, shard 4 a valid tar
    without members."""
    shutil.copytree(pool, out)
    uris = shard_uris(str(out))
    data = open(uris[1], "rb").read()
    open(uris[1], "wb").write(data[:int(len(data) * 0.6)])
    open(uris[3], "wb").close()
    buf = io.BytesIO()
    tarfile.open(fileobj=buf, mode="w").close()
    open(uris[4], "wb").write(buf.getvalue())
    return str(out)


@pytest.mark.parametrize("decoder", ["dali", "pil"])
def test_damaged_shards_keep_what_was_read_and_count_the_rest(teacher, clean_pool, tmp_path,
                                                              decoder, caplog):
    damaged = _damage(clean_pool, tmp_path / "damaged")
    ref = _score(teacher, clean_pool, tmp_path / "ref", decoder="pil")
    with caplog.at_level(logging.WARNING, logger="semisup_core.inference"):
        got = _score(teacher, damaged, tmp_path / "s", decoder=decoder)
    m1, m3, m4 = (_marker(tmp_path / "s", f"shard-{i:06d}") for i in (1, 3, 4))
    assert 0 < m1["images"] < 20 and m1["lost"] == 20 - m1["images"]
    assert m3["images"] == m4["images"] == 0 and m3["lost"] == m4["lost"] == 20
    assert got["lost"] == m1["lost"] + 40 and got["images"] == ref["images"] - got["lost"]
    mine, theirs = _tables(tmp_path / "s"), _tables(tmp_path / "ref")
    for i in (0, 2, 5):  # untouched shards: the same bytes as the intact pool's
        assert mine[f"shard-{i:06d}.parquet"] == theirs[f"shard-{i:06d}.parquet"]
    from semisup_core.tables import read_table
    cut = read_table(str(tmp_path / "s" / "shards" / "shard-000001.parquet"))
    full = read_table(str(tmp_path / "ref" / "shards" / "shard-000001.parquet"))
    assert cut.equals(full.slice(0, cut.num_rows))  # the images before the cut, as scored intact
    damaged_logs = [r.getMessage() for r in caplog.records if "damaged after" in r.getMessage()]
    if decoder == "dali":  # PIL's redo runs here; the pil path logs from its decode process
        assert len(damaged_logs) == 3
    from semisup_core.teacher_student.select import SelectConfig, select
    summary = select(SelectConfig(scores=str(tmp_path / "s"), out=str(tmp_path / "m"), k=5))
    assert summary["selected"] > 0  # select reads the damaged pool's output


def test_a_missing_shard_is_one_line_before_anything_is_written(teacher, clean_pool, tmp_path):
    pool = tmp_path / "pool"
    shutil.copytree(clean_pool, pool)
    os.unlink(shard_uris(str(pool))[3])
    with pytest.raises(DataError, match=r"1 shard\(s\) listed in dataset.json are missing from "
                                        r"the store, e.g. .*shard-000003.tar"):
        _score(teacher, str(pool), tmp_path / "s")
    assert not (tmp_path / "s" / "shards").exists()
    assert read_meta(str(pool)).num_samples == 120  # nothing of the input was touched


def test_a_model_of_other_classes_is_one_line(teacher, tmp_path):
    """A pool whose dataset.json lists other classes than the model's: refused before any
    shard is scored."""
    from tests.data.conftest import make_dataset
    pool = str(tmp_path / "other")
    make_dataset(pool, 8, ["cat", "dog"], prefix="o", labelled=False, hw=(28, 28))
    with pytest.raises(DataError, match=r"class mismatch: pool .* uses 2 classes, model .* 4"):
        _score(teacher, pool, tmp_path / "s")
    assert not (tmp_path / "s" / "shards").exists()


def test_embed_counts_what_damaged_shards_lost(teacher, clean_pool, tmp_path):
    """The embed stage shares the shard loop: the same damage, the same accounting; the
    intact shards' vectors equal the intact pool's."""
    from semisup_core.embed import EmbedConfig, embed
    damaged = _damage(clean_pool, tmp_path / "damaged")
    ref = embed(EmbedConfig(model=teacher, dataset=clean_pool, out=str(tmp_path / "ref"),
                            batch_size=16, decoder="pil"))
    got = embed(EmbedConfig(model=teacher, dataset=damaged, out=str(tmp_path / "e"),
                            batch_size=16))
    m1 = _marker(tmp_path / "e", "shard-000001")
    assert 0 < m1["images"] < 20 and m1["lost"] == 20 - m1["images"]
    assert got["lost"] == m1["lost"] + 40 and got["images"] == ref["images"] - got["lost"]
    mine, theirs = _tables(tmp_path / "e"), _tables(tmp_path / "ref")
    for i in (0, 2, 5):
        assert mine[f"shard-{i:06d}.parquet"] == theirs[f"shard-{i:06d}.parquet"]
