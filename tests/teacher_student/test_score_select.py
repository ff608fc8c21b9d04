"""score + select: brute-force equality, split invariance, resume after a crash, strategies."""

from __future__ import annotations

import numpy as np
import pytest

from semisup_core import checkpoint, storage
from semisup_core.data.dataset import read_meta, shard_uris
from semisup_core.data.manifest import manifest_dataset
from semisup_core.data.shards import iter_shard
from semisup_core.data.decode import decode_image
from semisup_core.data.stream import to_chw
from semisup_core.errors import DataError
from semisup_core.teacher_student.score import ScoreConfig, read_table, score
from semisup_core.teacher_student.select import SelectConfig, read_manifest, select
from semisup_core.train.augment import normalize

import torch


def _score(teacher, pool, out, workers=1, **kw):
    for w in range(workers):
        score(ScoreConfig(model=teacher, pool=pool, out=str(out), top_p=2, partial_k=kw.pop("partial_k", 30),
                          worker=w, num_workers=workers, batch_size=16, **kw))
    return str(out)


def _select(scores, out, **kw) -> tuple[dict, bytes]:
    summary = select(SelectConfig(scores=scores, out=str(out), **kw))
    return summary, storage.get_bytes(str(out / "manifest.parquet"))


def _brute_force(teacher, pool, top_p, k):
    """Softmax of every pool image, then a full sort per class: (class, rank, key)."""
    model, state = checkpoint.load_model(teacher)
    rows = []
    for uri in shard_uris(pool):
        for s in iter_shard(uri):
            try:
                x = to_chw(decode_image(s.image), 1)
            except DataError:
                continue
            with torch.no_grad():
                prob = model(normalize(x[None], state["mean"], state["std"])).softmax(1)[0]
            top = prob.topk(top_p)
            rows += [(int(c), float(p), s.key) for p, c in zip(top.values, top.indices)]
    rows.sort(key=lambda r: (r[0], -r[1], r[2]))
    out, seen = [], {}
    for c, p, key in rows:
        if seen.get(c, 0) < k:
            out.append((c, seen.get(c, 0), key, p))
            seen[c] = seen.get(c, 0) + 1
    return out


def test_balanced_manifest_matches_brute_force(teacher, pool, tmp_path):
    scores = _score(teacher, pool, tmp_path / "scores")
    summary, _ = _select(scores, tmp_path / "sel", k=12)
    m = read_manifest(str(tmp_path / "sel" / "manifest.parquet"))
    got = list(zip(m["class_id"].to_pylist(), m["rank"].to_pylist(), m["key"].to_pylist()))
    want = _brute_force(teacher, pool, 2, 12)
    assert got == [(c, r, key) for c, r, key, _ in want]
    np.testing.assert_allclose(m["score"].to_numpy(), [p for *_, p in want], rtol=1e-5)
    assert summary["corrupt"] == 2 and summary["pool_images"] == 148


def test_any_number_of_workers_gives_identical_bytes(teacher, pool, tmp_path):
    one = _select(_score(teacher, pool, tmp_path / "s1"), tmp_path / "m1", k=10)[1]
    three = _select(_score(teacher, pool, tmp_path / "s3", workers=3), tmp_path / "m3", k=10)[1]
    assert one == three


def test_one_score_dir_per_worker_gives_identical_bytes(teacher, pool, tmp_path):
    """A KFP ParallelFor writes each worker's scores to its own artifact; select merges them."""
    one = _select(_score(teacher, pool, tmp_path / "s1"), tmp_path / "m1", k=10)[1]
    dirs = []
    for w in range(3):
        score(ScoreConfig(model=teacher, pool=pool, out=str(tmp_path / f"w{w}"), top_p=2,
                          partial_k=30, worker=w, num_workers=3, batch_size=16))
        dirs.append(str(tmp_path / f"w{w}"))
    assert _select(dirs, tmp_path / "m3", k=10)[1] == one
    assert _select(dirs[::-1], tmp_path / "m3r", k=10)[1] == one
    with pytest.raises(DataError, match="scored in more than one"):
        _select(dirs + [str(tmp_path / "s1")], tmp_path / "bad", k=10)


def test_top_p_at_select_equals_scoring_with_that_p(teacher, pool, tmp_path):
    """The P ablation without rescoring: scores kept for P=2, selected with P=1, give the
    manifest of a P=1 scoring run byte for byte."""
    p1 = tmp_path / "p1"
    score(ScoreConfig(model=teacher, pool=pool, out=str(p1), top_p=1, partial_k=30, batch_size=16))
    want = _select(str(p1), tmp_path / "m1", k=10)[1]
    got = _select(_score(teacher, pool, tmp_path / "p2"), tmp_path / "m2", k=10, top_p=1)[1]
    assert got == want
    assert _select(str(p1), tmp_path / "m3", k=10, top_p=2)[1] == want  # P above scored P: all


def test_pool_fraction_selects_from_a_prefix_of_the_shards(teacher, pool, tmp_path):
    """Equal to a brute-force top-K over the images of the first half of the shards only."""
    scores = _score(teacher, pool, tmp_path / "s", workers=2)
    summary, _ = _select(scores, tmp_path / "half", k=6, pool_fraction=0.5)
    uris = sorted(shard_uris(pool), key=lambda u: u.rsplit("/", 1)[-1])
    kept = {s.key for u in uris[:int(np.ceil(len(uris) / 2))] for s in iter_shard(u)}
    rows = [(c, key) for c, _, key, _ in _brute_force(teacher, pool, 2, 10 ** 6) if key in kept]
    want, seen = [], {}
    for c, key in rows:  # already sorted by (class, -score, key)
        if seen.get(c, 0) < 6:
            want.append((c, key))
            seen[c] = seen.get(c, 0) + 1
    m = read_manifest(str(tmp_path / "half" / "manifest.parquet"))
    assert list(zip(m["class_id"].to_pylist(), m["key"].to_pylist())) == want
    assert summary["pool_fraction"] == 0.5 and 0 < summary["pool_images"] < 148


def test_partials_and_shard_tables_agree(teacher, pool, tmp_path):
    # one worker's partial (<= C * 10 rows) is under half the score rows: select reads it
    scores = _score(teacher, pool, tmp_path / "s", workers=1, partial_k=10)
    summary, via_partials = _select(scores, tmp_path / "a", k=10)
    assert summary["read"] == "partials"
    summary, via_shards = _select(scores, tmp_path / "b", k=11)  # k > partial_k -> shard tables
    assert summary["read"] == "shards"
    a = read_manifest(str(tmp_path / "a" / "manifest.parquet"))
    b = read_manifest(str(tmp_path / "b" / "manifest.parquet"))
    b10 = b.filter(np.array(b["rank"].to_pylist()) < 10)
    assert a.to_pylist() == b10.to_pylist() and via_partials != via_shards


def test_killed_score_resumes_to_the_same_manifest(teacher, pool, tmp_path):
    straight = _select(_score(teacher, pool, tmp_path / "s1"), tmp_path / "m1", k=10)[1]
    with pytest.raises(RuntimeError, match="injected failure"):
        _score(teacher, pool, tmp_path / "s2", fail_after_shards=3)
    done = [u for u in storage.list_uris(str(tmp_path / "s2" / "shards")) if u.endswith(".done.json")]
    assert len(done) == 3
    resumed = _select(_score(teacher, pool, tmp_path / "s2"), tmp_path / "m2", k=10)[1]
    assert resumed == straight


def test_resuming_a_score_output_without_image_ids_is_one_line(teacher, pool, tmp_path):
    """An output the score stage wrote before image ids (its markers lack first_id) is not
    resumed into: one line, and the finished shards' tables are left as they were."""
    with pytest.raises(RuntimeError, match="injected failure"):
        _score(teacher, pool, tmp_path / "s", fail_after_shards=2)
    marker = [u for u in storage.list_uris(str(tmp_path / "s" / "shards"))
              if u.endswith(".done.json")][0]
    old = storage.read_json(marker)
    del old["first_id"]
    storage.write_json(marker, old)
    before = {u: storage.get_bytes(u) for u in storage.list_uris(str(tmp_path / "s"))}
    with pytest.raises(DataError, match=r"^[^\n]*was scored without image ids .* into a new out$"):
        _score(teacher, pool, tmp_path / "s")
    assert {u: storage.get_bytes(u) for u in storage.list_uris(str(tmp_path / "s"))} == before


def test_random_strategy_draws_from_candidates(teacher, pool, tmp_path):
    scores = _score(teacher, pool, tmp_path / "s")
    cands = {(r["key"], r["class_id"]) for r in
             read_table(str(tmp_path / "s" / "shards" / "shard-000000.parquet")).to_pylist()}
    a = read_manifest(_select(scores, tmp_path / "a", strategy="random", k=8, seed=1) and
                      str(tmp_path / "a" / "manifest.parquet"))
    b = read_manifest(_select(scores, tmp_path / "b", strategy="random", k=8, seed=2) and
                      str(tmp_path / "b" / "manifest.parquet"))
    top = read_manifest(_select(scores, tmp_path / "t", k=8) and str(tmp_path / "t" / "manifest.parquet"))
    assert np.bincount(a["class_id"].to_numpy()).max() <= 8
    assert a["key"].to_pylist() != b["key"].to_pylist() != top["key"].to_pylist()
    all_cands = set()
    for uri in storage.list_uris(str(tmp_path / "s" / "shards")):
        if uri.endswith(".parquet"):
            all_cands |= {(r["key"], r["class_id"]) for r in read_table(uri).to_pylist()}
    assert cands <= all_cands
    assert set(zip(a["key"].to_pylist(), a["class_id"].to_pylist())) <= all_cands


def test_unbalanced_and_threshold(teacher, pool, tmp_path):
    scores = _score(teacher, pool, tmp_path / "s")
    summary = _select(scores, tmp_path / "u", strategy="unbalanced", k=10)[0]
    top1 = np.array(summary["top1_counts"])
    assert summary["per_class"][int(top1.argmax())] == max(summary["per_class"])
    zipf = _select(scores, tmp_path / "z", strategy="unbalanced", k=10, k_law="zipf")[0]
    assert sorted(zipf["per_class"], reverse=True)[0] > sorted(zipf["per_class"])[0]
    all_scores = np.concatenate([read_table(u)["score"].to_numpy() for u in
                                 storage.list_uris(str(tmp_path / "s" / "shards")) if u.endswith(".parquet")])
    cut = float(np.median(all_scores))
    summary = _select(scores, tmp_path / "t", strategy="threshold", threshold=cut)[0]
    t = read_manifest(str(tmp_path / "t" / "manifest.parquet"))
    assert min(t["score"].to_pylist()) >= cut
    assert summary["selected"] == int((all_scores >= cut).sum())
    with pytest.raises(DataError, match="is empty"):
        _select(scores, tmp_path / "none", strategy="threshold", threshold=1.5)


def test_manifest_dataset_one_sample_per_image_and_class(teacher, pool, tmp_path):
    scores = _score(teacher, pool, tmp_path / "s")
    _select(scores, tmp_path / "m", k=40)
    m = read_manifest(str(tmp_path / "m" / "manifest.parquet"))
    out = manifest_dataset(m, pool, str(tmp_path / "ds"), samples_per_shard=50)
    meta = read_meta(out)
    assert meta.num_samples == m.num_rows and meta.labelled
    assert meta.class_counts == np.bincount(m["class_id"].to_numpy(), minlength=4).tolist()
    assert len(set(m["key"].to_pylist())) < m.num_rows  # top-2: some images in two classes


def test_select_with_pool_writes_the_students_training_set(teacher, pool, tmp_path):
    scores = _score(teacher, pool, tmp_path / "s")
    _select(scores, tmp_path / "m", k=40, pool=pool)
    m = read_manifest(str(tmp_path / "m" / "manifest.parquet"))
    meta = read_meta(str(tmp_path / "m" / "selected"))
    assert meta.num_samples == m.num_rows and meta.labelled
    _select(scores, tmp_path / "plain", k=40)
    assert not (tmp_path / "plain" / "selected").exists()


def test_dali_and_pil_decoders_give_the_same_manifest(teacher, pool, tmp_path, caplog):
    """DALI (cpu here) decodes the grey PNGs exactly as PIL; shards with a corrupt record
    fall back to PIL, which counts and skips it."""
    import logging
    pil = _select(_score(teacher, pool, tmp_path / "pil", decoder="pil"), tmp_path / "mp", k=10)
    with caplog.at_level(logging.WARNING, logger="semisup_core.teacher_student.score"):
        dali = _select(_score(teacher, pool, tmp_path / "dali", decoder="dali"), tmp_path / "md", k=10)
    assert dali[1] == pil[1]
    assert dali[0]["corrupt"] == pil[0]["corrupt"] == 2
    fell_back = [r for r in caplog.records if "DALI failed" in r.getMessage()]
    assert len(fell_back) == 2  # the two shards holding a corrupt record, not the other six
    # the PIL path with 0 (in process) or 2 decode processes: the same bytes
    for workers in (0, 2):
        other = _select(_score(teacher, pool, tmp_path / f"pil{workers}", decoder="pil",
                               decode_workers=workers), tmp_path / f"m{workers}", k=10)
        assert other[1] == pil[1] and other[0]["corrupt"] == 2


def test_decode_shard_into_one_tensor_equals_the_list_path(pool):
    """Decoding with the shard's count (straight into one tensor) gives the list path's
    images, keys and positions, corrupt records skipped; a count too small still works."""
    from semisup_core.inference import decode_shard
    for uri in shard_uris(pool):
        ref = decode_shard(uri, 1)
        n = read_meta(pool).shards[shard_uris(pool).index(uri)]["count"]
        for count in (n, 3):
            got = decode_shard(uri, 1, count)
            assert got[0] == ref[0] and got[2] == ref[2] and (got[3] == ref[3]).all()
            assert torch.equal(torch.stack(list(got[1])), torch.stack(list(ref[1])))


def test_manifest_dataset_reads_only_the_shards_it_selects_from(teacher, pool, tmp_path):
    """A manifest of a few images from one shard: every other shard of a copy of the pool is
    replaced by garbage and the materialised set is still the same bytes (they are never
    opened); the per-shard grouping equals the manifest's rows; a shard the pool lacks is one
    line."""
    import shutil
    import pyarrow as pa
    scores = _score(teacher, pool, tmp_path / "s")
    _select(scores, tmp_path / "m", k=40)
    m = read_manifest(str(tmp_path / "m" / "manifest.parquet"))
    one = m["shard"][0].as_py()
    few = m.filter(pa.compute.equal(m["shard"], one))
    whole = manifest_dataset(few, pool, str(tmp_path / "a"))
    broken = tmp_path / "broken"
    shutil.copytree(pool, broken)
    for tar in broken.glob("*.tar"):
        if tar.stem != one:
            tar.write_bytes(b"not a tar")
    again = manifest_dataset(few, str(broken), str(tmp_path / "b"))
    from semisup_core.report import contact_sheet  # the report's sheet reads only those too
    sheet = contact_sheet(few, str(broken), read_meta(pool).classes, str(tmp_path / "sheet.png"))
    assert storage.get_bytes(sheet)[:4] == b"\x89PNG"
    assert read_meta(again).num_samples == read_meta(whole).num_samples == few.num_rows
    assert [p.read_bytes() for p in sorted((tmp_path / "a").glob("*.tar"))] == \
        [p.read_bytes() for p in sorted((tmp_path / "b").glob("*.tar"))]
    stray = few.set_column(few.column_names.index("shard"), "shard",
                           pa.array(["shard-999999"] * few.num_rows))
    with pytest.raises(DataError, match="names shard shard-999999 that pool .* does not have"):
        manifest_dataset(stray, pool, str(tmp_path / "c"))
    assert not (tmp_path / "c" / "dataset.json").exists()


def _samples(uri):
    from semisup_core.data.dataset import iter_dataset
    return sorted((s.key, s.cls, s.image) for s in iter_dataset(uri))


def test_materialise_stage_as_parallel_workers(teacher, pool, tmp_path, capsys):
    """`semisup data materialise` over 3 workers (in any order, one rerun): the same samples
    as the one-process materialisation; dataset.json only once every part is in; a worker out
    of range or a manifest without its shard column is one line."""
    from semisup import cli
    scores = _score(teacher, pool, tmp_path / "s")
    _select(scores, tmp_path / "m", k=40)
    m = read_manifest(str(tmp_path / "m" / "manifest.parquet"))
    one = manifest_dataset(m, pool, str(tmp_path / "one"), samples_per_shard=30)
    out = tmp_path / "three"
    argv = ["data", "materialise", "--set", f"manifest={tmp_path / 'm'}", "--set", f"pool={pool}",
            "--set", f"out={out}", "--set", "samples_per_shard=30", "--set", "num_workers=3"]
    for w in (2, 0):
        assert cli.main(argv + ["--set", f"worker={w}"]) == 0
    assert not (out / "dataset.json").exists()  # part 1 is missing
    for w in (1, 1):  # a KFP retry of a finished part changes nothing
        assert cli.main(argv + ["--set", f"worker={w}"]) == 0
    meta, ref = read_meta(str(out)), read_meta(one)
    assert _samples(str(out)) == _samples(one) and meta.class_counts == ref.class_counts
    assert meta.num_samples == m.num_rows and {s["uri"][:9] for s in meta.shards} == {
        "part-0000", "part-0001", "part-0002"}
    capsys.readouterr()
    assert cli.main(argv + ["--set", "worker=3"]) == 2
    assert "worker must be < num_workers=3" in capsys.readouterr().err
    with pytest.raises(DataError, match="needs the manifest's shard column"):
        manifest_dataset(m.drop(["shard"]), pool, str(tmp_path / "x"), worker=0, num_workers=2)
