"""Tag-restricted selection (issue 20; Yalniz et al. §4.1, §4.4): brute force on tiny random
scores, worker-count invariance, refusals, and the candidates' oracle precision.

The score outputs are written by the score stage's own code from random probabilities
(``tests/teacher_student/scores.py``: no model), so the tests need no teacher and run in seconds.
"""

from __future__ import annotations

import io

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pydantic import ValidationError

from semisup_core import config, storage
from semisup_core.analysis import candidate_analysis, selection_analysis
from semisup_core.errors import ConfigError, DataError, SemisupError, StorageError
from semisup_core.teacher_student.run import Runner, SelectionSpec, TeacherStudentConfig
from semisup_core.teacher_student.select import (SelectConfig, _random_scores, per_class_k,
                                                 read_manifest, select)
from tests.teacher_student.scores import keys, write_scores

C = 4  # classes
N = 60  # pool images
PER_SHARD = 7


def _probs(seed: int = 0) -> np.ndarray:
    """N x C scores on a coarse grid, so that many tie (ties are broken by key)."""
    return (np.random.default_rng(seed).integers(0, 12, (N, C)) / 12).astype(np.float32)


KEYS = keys(N)


def _write_scores(out: str, probs: np.ndarray, **kw) -> str | list[str]:
    return write_scores(out, probs, per_shard=PER_SHARD, **kw)


def _candidates(path, seed: int = 1, n: int = 90, **extra) -> tuple[str, set]:
    """Random (key, class) rows, duplicates included, some keys outside the pool."""
    rng = np.random.default_rng(seed)
    keys = [f"img-{i:03d}" for i in rng.integers(0, N + 10, n)]
    cls = rng.integers(0, C, n).astype(np.int32)
    uri = str(path)
    _write(uri, pa.table({"key": keys, "class_id": pa.array(cls, pa.int32()), **extra}))
    return uri, set(zip(keys, cls.tolist()))


def _write(uri: str, table: pa.Table) -> None:
    buf = io.BytesIO()
    pq.write_table(table, buf)
    storage.put_bytes(uri, buf.getvalue())


def _select(scores, out, **kw) -> tuple[dict, bytes]:
    summary = select(SelectConfig(scores=scores, out=str(out), **kw))
    return summary, storage.get_bytes(str(out / "manifest.parquet"))


def _rows(out) -> list[tuple]:
    m = read_manifest(str(out / "manifest.parquet"))
    return list(zip(m["class_id"].to_pylist(), m["rank"].to_pylist(), m["key"].to_pylist(),
                    m["score"].to_pylist()))


def _brute_top_k(probs: np.ndarray, keep, k) -> list[tuple]:
    """Full sort of the kept (key, class) pairs per class by (-score, key); first k[c] each."""
    k = np.broadcast_to(k, C)
    rows = sorted((c, -float(probs[i, c]), KEYS[i]) for i in range(N) for c in range(C)
                  if keep(KEYS[i], c))
    out, seen = [], [0] * C
    for c, neg, key in rows:
        if seen[c] < k[c]:
            out.append((c, seen[c], key, -neg))
            seen[c] += 1
    return out


@pytest.mark.parametrize("strategy", ["balanced", "unbalanced"])
def test_tags_equals_filter_then_top_k(tmp_path, strategy):
    probs = _probs()
    # two workers whose partials (partial_k = k) would serve an unrestricted balanced select
    scores = _write_scores(str(tmp_path / "s"), probs, workers=2, partial_k=5)
    cands, pairs = _candidates(tmp_path / "cand.parquet")
    summary, _ = _select(scores, tmp_path / "m", strategy=strategy, k=5, restrict="tags",
                         candidates=cands)
    top1 = np.bincount(probs.argmax(1), minlength=C)
    k = per_class_k(SelectConfig(scores="x", out="x", strategy=strategy, k=5), top1) \
        if strategy == "unbalanced" else 5
    assert _rows(tmp_path / "m") == _brute_top_k(probs, lambda key, c: (key, c) in pairs, k)
    in_pool = {(key, c) for key, c in pairs if key in set(KEYS)}
    assert summary["restrict"] == "tags" and summary["candidates"] == cands
    assert summary["restricted"] == {
        "candidate_pairs": len(pairs), "candidate_images": len({key for key, _ in pairs}),
        "rows_in": N * C, "rows_kept": len(in_pool), "images_kept": len({key for key, _ in in_pool})}


def test_threshold_with_tags(tmp_path):
    probs = _probs()
    scores = _write_scores(str(tmp_path / "s"), probs)
    cands, pairs = _candidates(tmp_path / "cand.parquet")
    _select(scores, tmp_path / "m", strategy="threshold", threshold=0.5, restrict="tags",
            candidates=cands)
    want = _brute_top_k(probs, lambda key, c: (key, c) in pairs and probs[int(key[4:]), c] >= 0.5, N)
    assert _rows(tmp_path / "m") == want


def test_random_with_tags_is_the_papers_balanced_with_tags(tmp_path):
    """Draws only candidates, K per class where there are enough, by a seeded hash draw that
    equals a brute-force one, with identical bytes for 1, 3 and 3-separate-dirs workers."""
    probs = _probs()
    cands, pairs = _candidates(tmp_path / "cand.parquet")
    kw = dict(strategy="random", k=6, restrict="tags", candidates=cands)
    one = _select(_write_scores(str(tmp_path / "s1"), probs), tmp_path / "a", seed=3, **kw)[1]
    three = _select(_write_scores(str(tmp_path / "s3"), probs, workers=3), tmp_path / "b", seed=3,
                    **kw)[1]
    dirs = _write_scores(str(tmp_path / "sd"), probs, workers=3, own_dirs=True)
    apart = _select(dirs[::-1], tmp_path / "c", seed=3, **kw)[1]
    assert one == three == apart
    other = _select(str(tmp_path / "s1"), tmp_path / "d", seed=4, **kw)[1]
    assert other != one
    got = _rows(tmp_path / "a")
    in_pool = sorted((key, c) for key, c in pairs if key in set(KEYS))
    assert {(key, c) for c, _, key, _ in got} <= set(in_pool)
    draw = _random_scores(np.array([int(key[4:]) for key, _ in in_pool]),  # the image ids
                          np.array([c for _, c in in_pool]), 3)
    by_class: dict = {}
    for (key, c), r in sorted(zip(in_pool, draw.tolist()), key=lambda x: (x[0][1], -x[1], x[0][0])):
        by_class.setdefault(c, []).append(key)
    want = [(c, r, key, float(probs[int(key[4:]), c])) for c in sorted(by_class)
            for r, key in enumerate(by_class[c][:6])]
    assert got == want


def test_targeted_keeps_exactly_the_keys_with_candidates(tmp_path):
    probs = _probs()
    scores = _write_scores(str(tmp_path / "s"), probs, top_p=2)  # targeted needs no full scores
    cands, pairs = _candidates(tmp_path / "cand.parquet", n=25)
    keys = {key for key, _ in pairs}
    summary, _ = _select(scores, tmp_path / "m", k=N, restrict="targeted", candidates=cands)
    top2 = np.argsort(-probs, axis=1, kind="stable")[:, :2]
    want = _brute_top_k(probs, lambda key, c: key in keys and c in top2[int(key[4:])], N)
    assert _rows(tmp_path / "m") == want
    assert {key for _, _, key, _ in want} == keys & set(KEYS)
    assert summary["restricted"]["images_kept"] == len(keys & set(KEYS))
    assert summary["restricted"]["rows_kept"] == 2 * len(keys & set(KEYS))


def test_tags_on_top_p_scores_is_refused(tmp_path):
    probs = _probs()
    cands, _ = _candidates(tmp_path / "cand.parquet")
    part = _write_scores(str(tmp_path / "p2"), probs, top_p=2)
    with pytest.raises(ConfigError, match="keep 2 of 4 classes per image: restrict=tags needs"):
        _select(part, tmp_path / "m", restrict="tags", candidates=cands)
    full = _write_scores(str(tmp_path / "full"), probs)
    with pytest.raises(ConfigError, match="select top_p=3 keeps 3 of 4"):
        _select(full, tmp_path / "m", restrict="tags", candidates=cands, top_p=3)
    for u in storage.list_uris(part, recursive=False):  # no score configs: the tables tell
        storage.delete(u)
    with pytest.raises(ConfigError, match="score tables keep 2 of 4"):
        _select(part, tmp_path / "m", restrict="tags", candidates=cands)
    assert not (tmp_path / "m").exists()


def _bad_tables(tmp_path) -> list[tuple[object, type, str]]:
    keys = ["img-001", "img-002"]
    bad = {
        "nocol": (pa.table({"key": keys, "cls": [0, 1]}), DataError, "no column class_id"),
        "intkey": (pa.table({"key": [1, 2], "class_id": [0, 1]}), DataError, "key must be a string"),
        "float": (pa.table({"key": keys, "class_id": [0.0, 1.0]}), DataError, "must be an integer"),
        "high": (pa.table({"key": keys, "class_id": [0, C]}), DataError, r"class_id 4 is outside \[0, 4\)"),
        "neg": (pa.table({"key": keys, "class_id": [-1, 0]}), DataError, "class_id -1 is outside"),
        "null": (pa.table({"key": ["img-001", None], "class_id": [0, 1]}), DataError, "null key"),
        "empty": (pa.table({"key": pa.array([], pa.string()), "class_id": pa.array([], pa.int32())}),
                  DataError, "no rows"),
    }
    out = []
    for name, (table, err, msg) in bad.items():
        _write(str(tmp_path / f"{name}.parquet"), table)
        out.append((str(tmp_path / f"{name}.parquet"), err, msg))
    (tmp_path / "text.parquet").write_text("key,class_id\nimg-001,0\n")
    out.append((str(tmp_path / "text.parquet"), DataError, "not a Parquet table"))
    out.append((str(tmp_path / "missing.parquet"), StorageError, "candidates: no such file"))
    return out


def test_bad_candidates_are_one_line_errors_and_lose_nothing(tmp_path):
    scores = _write_scores(str(tmp_path / "s"), _probs())
    cands, _ = _candidates(tmp_path / "cand.parquet")
    before = _select(scores, tmp_path / "m", k=5, restrict="tags", candidates=cands)[1]
    for uri, err, msg in _bad_tables(tmp_path):
        for restrict in ("tags", "targeted"):
            with pytest.raises(err, match=msg) as info:
                _select(scores, tmp_path / "m", k=5, restrict=restrict, candidates=uri)
            assert "\n" not in str(info.value)
    assert storage.get_bytes(str(tmp_path / "m" / "manifest.parquet")) == before
    stranger = str(tmp_path / "far.parquet")
    _write(stranger, pa.table({"key": ["elsewhere-1"], "class_id": pa.array([0], pa.int32())}))
    with pytest.raises(DataError, match="restrict=tags kept no score row"):
        _select(scores, tmp_path / "m2", restrict="tags", candidates=stranger)


def test_restrict_needs_candidates(tmp_path):
    for cls, what in ((SelectConfig, {"scores": "s", "out": "o"}), (SelectionSpec, {})):
        with pytest.raises(ConfigError, match="candidates: .*restrict=tags needs a candidates table"):
            config.build(cls, {**what, "restrict": "tags"})
        with pytest.raises(ValidationError):
            cls(**what, restrict="targeted")
        assert cls(**what).restrict == "none"
    with pytest.raises(ConfigError, match="^config: restrict: "):
        config.build(SelectionSpec, {"restrict": "hashtags"}, "config")  # a typo names the field


def test_teacher_student_refuses_tags_with_top_p_below_classes_before_training(tmp_path):
    from tests.train.conftest import write_blocks_dataset
    labelled = write_blocks_dataset(str(tmp_path / "lab"), 8)
    cfg = config.build(TeacherStudentConfig, {
        "out": str(tmp_path / "run"), "labelled": labelled, "pool": "p", "test": "t",
        "selection": {"restrict": "tags", "candidates": "c.parquet", "top_p": 2}})
    with pytest.raises(ConfigError, match="selection.top_p=2 keeps 2 of 4 .* set selection.top_p=4"):
        Runner(cfg).run()
    assert not (tmp_path / "run").exists()
    Runner(cfg.model_copy(update={"selection": cfg.selection.model_copy(update={"top_p": 4})})).check()


def _oracle(tmp_path) -> str:
    rng = np.random.default_rng(7)
    truth = rng.integers(-1, C, N).astype(np.int32)  # -1: a distractor
    uri = str(tmp_path / "oracle.parquet")
    _write(uri, pa.table({"key": list(KEYS), "source": ["x"] * N, "true_class": truth,
                          "true_class_name": ["n"] * N, "source_class_name": ["n"] * N}))
    return uri


def test_candidate_precision_and_recall_equal_a_brute_force_count(tmp_path):
    oracle = _oracle(tmp_path)
    cands, pairs = _candidates(tmp_path / "cand.parquet", n=120)
    o = pq.read_table(oracle)
    truth = dict(zip(o["key"].to_pylist(), o["true_class"].to_pylist()))
    seen = [(key, c) for key, c in pairs if key in truth]  # distinct pairs of oracle images
    right = [(key, c) for key, c in seen if truth[key] == c]
    res = candidate_analysis(cands, oracle)
    assert res["pairs"] == len(seen) and res["images"] == len({key for key, _ in seen})
    assert res["precision"] == pytest.approx(len(right) / len(seen))
    assert res["distractor_share"] == pytest.approx(sum(truth[k] == -1 for k, _ in seen) / len(seen))
    per_class = []
    for c in range(C):
        n = sum(t == c for t in truth.values())
        per_class.append(sum(truth[k] == c for k, _ in right) / n)
    assert res["per_class_recall"] == pytest.approx(per_class)
    assert res["recall"] == pytest.approx(len(right) / sum(t >= 0 for t in truth.values()))
    manifest = pa.table({"class_id": [0], "rank": [0], "key": ["img-000"]})
    assert selection_analysis(manifest, oracle, candidates=cands)["candidates"] == res
    assert "candidates" not in selection_analysis(manifest, oracle)
    with pytest.raises(SemisupError):
        candidate_analysis(str(tmp_path / "nothing.parquet"), oracle)
