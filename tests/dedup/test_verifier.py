"""dedup's copy verifier: the alignment against a brute force, the pairs it trains on, a
verifier trained by the one loop, and dedup/calibration with it against per-pair scoring."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from semisup_core import config, storage
from semisup_core.data.dataset import read_meta, shard_uris
from semisup_core.data.decode import decode_image
from semisup_core.data.shards import iter_shard
from semisup_core.dedup.stage import DedupConfig, dedup
from semisup_core.dedup.verifier import (PairScorer, VerifyPairsConfig, pair_neighbours,
                                         verify_pairs)
from semisup_core.embed import EmbedConfig, embed, read_embeddings
from semisup_core.errors import ConfigError
from semisup_core.models.pair_verifier import align, rescale
from semisup_core.report import dedup_summary
from semisup_core.tables import read_table
from semisup_core.train import TrainConfig, train
from tests.dedup.test_embed_dedup import _write
from tests.train.conftest import _texture


def _brute_align(a: np.ndarray, b: np.ndarray, radius: int, scales) -> np.ndarray:
    """align() one pair at a time in float64 numpy: every candidate scored, the first best
    kept in align's order (scale 1 first, then by |dy| + |dx|)."""
    a0, lo = a - a.min(), b.min()
    b0 = b - lo
    best, out = -1.0, b0
    order = sorted(scales, key=lambda s: s != 1.0)
    moves = sorted(((dy, dx) for dy in range(-radius, radius + 1)
                    for dx in range(-radius, radius + 1)), key=lambda m: abs(m[0]) + abs(m[1]))
    c, h, w = b.shape
    for scale in order:
        z = rescale(torch.from_numpy(b0[None]), scale)[0].numpy()
        for dy, dx in moves:
            s = np.zeros_like(z)
            s[:, max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = \
                z[:, max(-dy, 0):h + min(-dy, 0), max(-dx, 0):w + min(-dx, 0)]
            score = (a0 * s).sum() / max(np.sqrt((s ** 2).sum()), 1e-6)
            if score > best + 1e-6:
                best, out = score, s
    return out + lo


def test_align_undoes_a_shift_and_equals_a_brute_force():
    rng = np.random.default_rng(0)
    a = np.zeros((6, 1, 20, 20))
    a[:, :, 5:15, 5:15] = rng.uniform(0.2, 1, (6, 1, 10, 10))
    b = np.zeros_like(a)
    shifts = [(0, 0), (2, -1), (-3, 3), (1, 0), (0, -2), (3, 3)]
    for n, (dy, dx) in enumerate(shifts):
        b[n] = np.roll(a[n], (dy, dx), axis=(1, 2))  # the content stays inside the frame
    got = align(torch.from_numpy(a), torch.from_numpy(b), 3).numpy()
    assert np.allclose(got, a)  # every shift within the radius is undone exactly
    noisy = b + rng.normal(0, 0.1, b.shape) - 0.5  # normalised-looking values, below zero too
    scales = (0.9, 1.0, 1.15)
    got = align(torch.from_numpy(a), torch.from_numpy(noisy), 2, scales).numpy()
    for n in range(len(a)):
        assert np.allclose(got[n], _brute_align(a[n], noisy[n], 2, scales), atol=1e-9), n
    assert np.allclose(align(torch.from_numpy(a), torch.from_numpy(noisy), 0).numpy(), noisy)


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    """A pool of 48 textures (4 kinds: look-alikes within a kind), an eval set of 24 more,
    and the pool's embeddings (pixels descriptor)."""
    root = tmp_path_factory.mktemp("verifier")
    rng = np.random.default_rng(5)
    images = [_texture(i % 4, rng) for i in range(48)]
    evals = [_texture(i % 4, rng) for i in range(24)]
    data = _write(str(root / "pool"), images, "pool")
    ev = _write(str(root / "test"), evals, "test")
    for name, ds in (("emb-pool", data), ("emb-test", ev)):
        embed(config.build(EmbedConfig, {"dataset": ds, "out": str(root / name),
                                         "decoder": "pil", "batch_size": 16}))
    return {"root": root, "pool": data, "test": ev, "images": images,
            "emb": str(root / "emb-pool"), "emb_test": str(root / "emb-test")}


def _pairs(ds: str) -> list[tuple[str, int, np.ndarray]]:
    return [(s.key, int(s.cls), decode_image(s.image))
            for u in shard_uris(ds, read_meta(ds)) for s in iter_shard(u)]


def test_pairs_are_copies_and_look_alike_negatives_and_deterministic(pool):
    root = pool["root"]
    cfg = {"dataset": pool["pool"], "embeddings": pool["emb"], "images": 48, "neighbours": 3,
           "transforms": ["exact"], "samples_per_shard": 50}
    out = verify_pairs(config.build(VerifyPairsConfig, {**cfg, "out": str(root / "pairs")}))
    assert out == {"pairs": 192, "images": 48, "out": str(root / "pairs"), "resumed": False}
    meta = read_meta(str(root / "pairs"))
    assert meta.classes == ["distinct", "copy"] and meta.class_counts == [96, 96]
    assert (meta.height, meta.width) == (28, 56) and len(meta.shards) == 4
    keys, vecs = read_embeddings(pool["emb"])
    order = np.argsort(keys)  # drawn in shard order; all 48 drawn, keys sorted like the shards
    images = np.stack(pool["images"])
    # brute force: each image's 3 nearest other images by the descriptor
    sims = vecs @ vecs.T
    np.fill_diagonal(sims, -np.inf)
    near = np.argsort(-sims, axis=1, kind="stable")[:, :3]
    assert np.array_equal(np.sort(pair_neighbours(vecs, 3), 1), np.sort(near, 1))
    seen = set()
    for key, label, img in _pairs(str(root / "pairs")):
        i = order[int(key.split("-")[1])]
        left, right = img[:, :28], img[:, 28:]
        assert label == int(key[-1])
        if label == 1:  # exact copies: both halves are image i
            assert np.array_equal(left, images[i]) and np.array_equal(right, images[i])
        else:  # image i on one side, one of its 3 look-alikes on the other
            mine, other = (left, right) if np.array_equal(left, images[i]) else (right, left)
            assert np.array_equal(mine, images[i])
            j = [j for j in near[i] if np.array_equal(other, images[j])]
            assert j, key
            seen.add(np.array_equal(left, images[i]))
    assert seen == {True, False}  # both sides orders occur
    again = verify_pairs(config.build(VerifyPairsConfig, {**cfg, "out": str(root / "pairs2")}))
    assert again["pairs"] == 192
    for a, b in zip(_pairs(str(root / "pairs")), _pairs(str(root / "pairs2"))):
        assert a[0] == b[0] and a[1] == b[1] and np.array_equal(a[2], b[2])
    assert verify_pairs(config.build(VerifyPairsConfig, {**cfg, "out": str(root / "pairs")}))[
        "resumed"]


def test_bad_verify_pairs_inputs_are_one_line_errors(pool):
    root = pool["root"]
    with pytest.raises(ConfigError, match="embeddings .* are of .*pool, not of dataset .*test"):
        verify_pairs(config.build(VerifyPairsConfig, {"dataset": pool["test"], "embeddings": pool["emb"],
                                                      "out": str(root / "bad")}))
    assert not storage.exists(str(root / "bad"))
    with pytest.raises(ConfigError, match="transforms: .*unknown transform 'blur'"):
        config.build(VerifyPairsConfig, {"dataset": pool["pool"], "embeddings": pool["emb"],
                                         "out": str(root / "bad"), "transforms": ["blur"]})


@pytest.fixture(scope="module")
def verifier(pool):
    """A pair_verifier trained for a few steps by the one loop on the pool's pairs."""
    root = pool["root"]
    pairs = str(root / "pairs-all")
    verify_pairs(config.build(VerifyPairsConfig, {"dataset": pool["pool"], "embeddings": pool["emb"],
                                                  "out": pairs, "neighbours": 3}))
    out = str(root / "verifier")
    train(config.build(TrainConfig, {
        "out": out, "data": {"train": pairs, "num_workers": 0}, "model": "pair_verifier",
        "model_kwargs": {"width": 4, "align": 1, "scales": [1.0, 1.1]},
        "augment": {"crop_padding": 0}, "epochs": 2, "batch_size": 32, "seed": 0}))
    return out


def _one_by_one(scorer: PairScorer, a: np.ndarray, b: np.ndarray) -> float:
    """The scorer's definition for one pair, through the model directly."""
    def x(l, r):
        t = torch.from_numpy(np.concatenate([l, r], 1)).permute(2, 0, 1)[None].float() / 255
        return (t - scorer.mean) / scorer.std
    with torch.no_grad():
        m = [scorer.model(x(l, r))[0] for l, r in ((a, b), (b, a))]
    return float(((m[0][1] - m[0][0]) + (m[1][1] - m[1][0])) / 2)


def test_dedup_with_a_verifier_equals_verifying_each_candidate(pool, verifier):
    root = pool["root"]
    scorer = PairScorer(verifier)
    pk, pv = read_embeddings(pool["emb"])
    ek, ev = read_embeddings(pool["emb_test"])
    images = {k: img for k, img in zip(sorted(pk), pool["images"])}
    evals = {k: decode_image(s.image) for u in shard_uris(pool["test"], read_meta(pool["test"]))
             for s in iter_shard(u) for k in [s.key]}
    # brute force: every pool image's 3 nearest eval images by cosine, each pair scored alone
    want = {}
    for k, v in zip(pk, pv):
        cand = np.argsort(-(ev @ v), kind="stable")[:3]
        s = [_one_by_one(scorer, images[k], evals[ek[j]]) for j in cand]
        want[k] = (ek[cand[int(np.argmax(s))]], max(s))
    thr = float(np.median([s for _, s in want.values()]))
    out = str(root / "dd-verified")
    summary = dedup(config.build(DedupConfig, {"pool": pool["emb"], "eval_sets": [pool["emb_test"]],
                                               "out": out, "verifier": verifier,
                                               "verify_candidates": 3, "threshold": thr,
                                               "sheet_margin": 1000.0}))
    near = read_table(storage.join(out, "nearest", "shard-000000.parquet")).to_pylist()
    near += [r for n in range(1, 3) for r in
             read_table(storage.join(out, "nearest", f"shard-{n:06d}.parquet")).to_pylist()]
    assert len(near) == 48  # the margin keeps every pool image's pair
    for r in near:
        key, s = want[r["pool_key"]]
        assert r["eval_key"] == key and r["score"] == pytest.approx(s, abs=1e-4)
        assert r["duplicate"] == (r["score"] >= thr)
    removed = {k for k, (_, s) in want.items() if s >= thr}
    assert summary["removed"] == len(removed) > 0 and summary["verifier"] == verifier
    assert f"verifier margin >= {thr:.2f} over the 3 nearest" in dedup_summary(summary)
    assert set(read_table(storage.join(out, "removed.parquet"))["key"].to_pylist()) == removed
    with pytest.raises(ConfigError, match="with a verifier the threshold is a logit margin"):
        config.build(DedupConfig, {"pool": pool["emb"], "eval_sets": [pool["emb_test"]],
                                   "out": out, "verifier": verifier})
    with pytest.raises(ConfigError, match="was searched with"):
        dedup(config.build(DedupConfig, {"pool": pool["emb"], "eval_sets": [pool["emb_test"]],
                                         "out": out, "verifier": verifier, "threshold": thr,
                                         "verify_candidates": 2}))


def test_a_classifier_is_not_a_verifier(teacher):
    with pytest.raises(ConfigError, match="is a small_resnet8 over classes .*; a verifier is a "
                                          "pair_verifier"):
        PairScorer(teacher)


def test_calibration_with_a_verifier_keeps_the_false_flag_target(pool, verifier):
    root = pool["root"]
    out = str(root / "cal-verified")
    dedup(config.build(DedupConfig, {"pool": pool["emb"], "eval_sets": [pool["emb_test"]],
                                     "out": out, "verifier": verifier, "verify_candidates": 3,
                                     "calibrate": True, "threshold": None,
                                     "calibration_images": 20, "target_fpr": 0.1}))
    cal = storage.read_json(storage.join(out, "calibration.json"))
    assert cal["verifier"] == verifier and cal["candidates"] == 3 and cal["images"] == 20
    assert cal["false_flag_rate"] <= 0.1 and 0 <= cal["pair_fpr"] <= 1
    assert set(cal["recall"]) == {"exact", "jpeg", "resize", "crop", "photometric", "translate"}
    # the grid is monotone: a higher threshold never flags more or finds more
    grid = cal["grid"]
    for lo, hi in zip(grid, grid[1:]):
        assert hi["false_flag_rate"] <= lo["false_flag_rate"]
        assert all(hi["recall"][t] <= lo["recall"][t] for t in lo["recall"])
    summary = storage.read_json(storage.join(out, "summary.json"))
    assert summary["threshold"] == cal["threshold"] and summary["score"] == "verifier logit margin"
    flags = cal["highest_flags"]
    assert len(flags) == 20 and [f["score"] for f in flags] == sorted((f["score"] for f in flags),
                                                                     reverse=True)
    scorer = PairScorer(verifier)
    images = {k: img for k, img in zip(sorted(read_embeddings(pool["emb_test"])[0]),
                                       [decode_image(s.image) for u in shard_uris(
                                           pool["test"], read_meta(pool["test"]))
                                        for s in iter_shard(u)])}
    for f in flags[:3]:  # each listed score is the verifier's on that pair
        assert f["other_key"] != f["key"]
        assert _one_by_one(scorer, images[f["key"]], images[f["other_key"]]) == \
            pytest.approx(f["score"], abs=1e-4)
    assert storage.get_bytes(storage.join(out, "calibration_flags.png"))[:4] == b"\x89PNG"


def test_a_dedup_output_written_before_the_score_column_resumes(pool):
    """Nearest tables of an older run (no ``score``) are read with their cosine as the score."""
    import pyarrow.parquet as pq
    root = pool["root"]
    out = str(root / "dd-old")
    cfg = {"pool": pool["emb"], "eval_sets": [pool["emb_test"]], "out": out, "threshold": 0.5}
    first = dedup(config.build(DedupConfig, cfg))
    pairs = read_table(storage.join(out, "pairs.parquet"))
    for u in storage.list_uris(storage.join(out, "nearest")):
        if u.endswith(".parquet"):
            t = pq.read_table(u)
            pq.write_table(t.drop(["score"]), u)
    storage.delete(storage.join(out, "pairs.parquet"))
    again = dedup(config.build(DedupConfig, cfg))
    assert first["removed"] == again["removed"] > 0
    assert read_table(storage.join(out, "pairs.parquet")).equals(pairs)
    assert "cosine >= 0.5000" in dedup_summary(again)
