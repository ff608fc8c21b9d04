"""embed (shared shard loop, resume, worker split), the ImageNet network, dedup and calibration."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from PIL import Image

from semisup_core import config, storage
from semisup_core.dedup.calibration import transform
from semisup_core.data.dataset import make_meta, write_meta
from semisup_core.data.decode import encode_png
from semisup_core.data.shards import ShardWriter
from semisup_core.dedup.stage import DedupConfig, dedup, removed_keys
from semisup_core.embed import EmbedConfig, embed, efficientnet_lite0, pixels_descriptor, read_embeddings
from semisup_core.errors import ConfigError, StorageError
from semisup_core.teacher_student.score import ScoreConfig, score
from semisup_core.tables import read_table
from tests.train.conftest import CLASSES, _texture

HERE = os.path.dirname(__file__)


def _write(uri: str, images: list[np.ndarray], prefix: str, per_shard: int = 16) -> str:
    with ShardWriter(uri, per_shard) as w:
        for i, img in enumerate(images):
            w.write(f"{prefix}-{i:05d}", encode_png(img), "png", None, {})
    write_meta(uri, make_meta(uri, prefix, CLASSES, w.shards, None, source="generated",
                              channels=1, hw=(28, 28)))
    return uri


@pytest.fixture(scope="module")
def sets(tmp_path_factory):
    """An eval set of 40 textures and a pool of 60 distinct ones plus 6 exact copies and 6
    brightness-shifted copies of eval images (pool indices 60-71)."""
    root = tmp_path_factory.mktemp("dedup")
    rng = np.random.default_rng(3)
    evals = [_texture(int(rng.integers(0, 4)), rng) for _ in range(40)]
    pool = [_texture(int(rng.integers(0, 4)), rng) for _ in range(60)]
    pool += [evals[i].copy() for i in range(6)]
    pool += [np.clip(evals[i].astype(int) * 0.9 + 12, 0, 255).astype(np.uint8) for i in range(6, 12)]
    return {"eval": _write(str(root / "test"), evals, "test"),
            "pool": _write(str(root / "pool"), pool, "pool"), "root": root}


def _embed(dataset, out, **kw):
    return embed(config.build(EmbedConfig, {"dataset": dataset, "out": out, "decoder": "pil",
                                            "batch_size": 8, **kw}))


def test_embeddings_are_unit_float16_and_a_killed_embed_resumes_to_identical_tables(sets):
    root = sets["root"]
    whole = str(root / "emb-whole")
    _embed(sets["pool"], whole)
    keys, vecs = read_embeddings(whole)
    assert len(keys) == 72 and vecs.shape == (72, 196)
    assert np.allclose(np.linalg.norm(vecs, axis=1), 1, atol=1e-6)
    killed = str(root / "emb-killed")
    with pytest.raises(RuntimeError, match="injected failure after 2"):
        _embed(sets["pool"], killed, fail_after_shards=2)
    markers = [u for u in storage.list_uris(storage.join(killed, "shards")) if u.endswith(".done.json")]
    assert len(markers) == 2
    with pytest.raises(StorageError, match="not embedded yet"):
        read_embeddings(killed)
    _embed(sets["pool"], killed)
    names = sorted(u.rsplit("/", 1)[-1] for u in storage.list_uris(storage.join(whole, "shards"))
                   if u.endswith(".parquet"))
    assert len(names) == 5
    for name in names:
        assert read_table(storage.join(whole, "shards", name)).equals(
            read_table(storage.join(killed, "shards", name))), name


def test_pixels_descriptor_ignores_brightness_and_contrast_and_separates_images():
    rng = np.random.default_rng(0)
    a = torch.from_numpy(np.stack([_texture(i % 4, rng) for i in range(8)]).reshape(8, 1, 28, 28))
    b = (a.float() * 0.8 + 20).round().clamp(0, 255).to(torch.uint8)
    fa, fb = pixels_descriptor(a), pixels_descriptor(b)
    assert torch.allclose((fa * fb).sum(1), torch.ones(8), atol=2e-3)
    sims = fa @ fa.T
    assert (sims[~torch.eye(8, dtype=bool)] < 0.99).all()


def test_efficientnet_lite0_from_the_package_recognises_real_photographs():
    net = efficientnet_lite0(with_classifier=True)
    x = torch.stack([torch.from_numpy(np.array(Image.open(os.path.join(HERE, "..", "data", "images", f)))
                     ).permute(2, 0, 1) for f in ("chelsea.jpg", "coffee.jpg")]).float()
    with torch.inference_mode():
        top = net((x - 127.5) / 127.5).softmax(1).topk(3, dim=1).indices.tolist()
    assert 285 in top[0] or 281 in top[0]  # Egyptian cat / tabby
    assert top[1][0] == 967  # espresso


def _dedup(sets, pool_emb, eval_emb, out, **kw):
    return dedup(config.build(DedupConfig, {"pool": pool_emb, "eval_sets": [eval_emb], "out": out,
                                            "threshold": 0.99, **kw}))


def test_dedup_removes_the_injected_copies_and_score_skips_them(sets, teacher):
    root = sets["root"]
    _embed(sets["eval"], str(root / "emb-eval"))
    _embed(sets["pool"], str(root / "emb-pool"))
    out = str(root / "dd")
    summary = _dedup(sets, str(root / "emb-pool"), str(root / "emb-eval"), out)
    want = {f"pool-{i:05d}" for i in range(60, 72)}
    # brute force: each pool vector's best cosine against the eval set
    pk, pv = read_embeddings(str(root / "emb-pool"))
    _, ev = read_embeddings(str(root / "emb-eval"))
    brute = {k for k, s in zip(pk, (pv @ ev.T).max(1)) if s >= 0.99}
    assert removed_keys(out) == brute == want
    assert summary["removed"] == 12 and summary["kept"] == 60
    pairs = read_table(storage.join(out, "pairs.parquet")).to_pylist()
    assert {(p["pool_key"], p["eval_key"]) for p in pairs if p["pool_key"] in want} == \
        {(f"pool-{i:05d}", f"test-{i - 60:05d}") for i in range(60, 72)}
    kept = read_table(storage.join(out, "manifest.parquet"))["key"].to_pylist()
    assert set(kept).isdisjoint(want) and len(kept) == 60
    assert storage.get_bytes(storage.join(out, "contact_sheet.png"))[:4] == b"\x89PNG"
    s = score(config.build(ScoreConfig, {"model": teacher, "pool": sets["pool"], "out": str(root / "sc"),
                                         "decoder": "pil", "exclude": out, "top_p": 1}))
    assert s["images"] == 60 and s["deduplicated"] == 12


def test_any_embed_worker_count_gives_the_same_pair_list(sets):
    root = sets["root"]
    _embed(sets["eval"], str(root / "emb-eval-w"))
    for w in range(3):
        _embed(sets["pool"], str(root / "emb-pool-3w"), worker=w, num_workers=3)
    _embed(sets["pool"], str(root / "emb-pool-1w"))
    a = _dedup(sets, str(root / "emb-pool-1w"), str(root / "emb-eval-w"), str(root / "dd1"))
    b = _dedup(sets, str(root / "emb-pool-3w"), str(root / "emb-eval-w"), str(root / "dd3"))
    assert a["removed"] == b["removed"] == 12
    assert read_table(storage.join(str(root / "dd1"), "pairs.parquet")).equals(
        read_table(storage.join(str(root / "dd3"), "pairs.parquet")))


def test_bad_dedup_inputs_are_one_line_errors(sets):
    root = sets["root"]
    _embed(sets["eval"], str(root / "emb-eval-b"))
    _embed(sets["eval"], str(root / "emb-eval-8"), pixels_side=8)
    with pytest.raises(ConfigError, match="embed both with the same model"):
        _dedup(sets, str(root / "emb-eval-8"), str(root / "emb-eval-b"), str(root / "bad1"))
    with pytest.raises(ConfigError, match="needs calibrate: true"):
        _dedup(sets, str(root / "emb-eval-b"), str(root / "emb-eval-b"), str(root / "bad2"), threshold=None)
    with pytest.raises(StorageError, match="no embeddings at"):
        _dedup(sets, str(root / "nothing"), str(root / "emb-eval-b"), str(root / "bad3"))
    with pytest.raises(StorageError, match="not a finished dedup output"):
        removed_keys(str(root / "nothing"))
    with pytest.raises(ConfigError, match="another embedder"):
        _embed(sets["eval"], str(root / "emb-eval-b"), pixels_side=8)


def test_calibration_finds_exact_copies_and_reports_every_transform(sets):
    root = sets["root"]
    _embed(sets["eval"], str(root / "emb-eval-c"))
    _embed(sets["pool"], str(root / "emb-pool-c"))
    out = str(root / "cal")
    _dedup(sets, str(root / "emb-pool-c"), str(root / "emb-eval-c"), out, calibrate=True,
           threshold=None, calibration_images=30, target_fpr=0.05)
    cal = storage.read_json(storage.join(out, "calibration.json"))
    assert cal["images"] == 30 and set(cal["recall"]) == {"exact", "jpeg", "resize", "crop",
                                                          "photometric", "translate"}
    assert cal["recall"]["exact"] == 1.0 and cal["false_flag_rate"] <= 0.05
    assert storage.read_json(storage.join(out, "summary.json"))["threshold"] == cal["threshold"]
    keys, vecs = read_embeddings(str(root / "emb-eval-c"))
    row = {k: i for i, k in enumerate(keys)}
    top = cal["highest_flags"][0]  # the drawn image whose nearest other test image is closest
    assert top["score"] == pytest.approx(float(vecs[row[top["key"]]] @ vecs[row[top["other_key"]]]),
                                         abs=2e-3)  # float16 tables vs the calibration's float32
    assert storage.get_bytes(storage.join(out, "calibration_flags.png"))[:4] == b"\x89PNG"
    # a person marks the top pair as one image: it is no false flag any more, the next one is
    pair = [top["key"], top["other_key"]]
    _dedup(sets, str(root / "emb-pool-c"), str(root / "emb-eval-c"), out + "-known", calibrate=True,
           threshold=None, calibration_images=30, target_fpr=0.05, known_duplicates=[pair])
    again = storage.read_json(storage.join(out + "-known", "calibration.json"))
    assert again["known_duplicates"] == [sorted(pair)]
    assert all({f["key"], f["other_key"]} != set(pair) for f in again["highest_flags"])
    mine = [f for f in again["highest_flags"] if f["key"] == top["key"]]
    assert mine and mine[0]["score"] <= top["score"]
    assert again["threshold"] <= cal["threshold"]  # a statistic can only fall


def test_translate_matches_a_numpy_shift():
    img = np.arange(100, dtype=np.uint8).reshape(10, 10)
    rng = np.random.default_rng(1)
    out = transform(img, "translate", rng)
    # find the shift from where pixel value 55 (row 5, col 5) went
    (r, c), = np.argwhere(out == 55)
    dy, dx = r - 5, c - 5
    want = np.zeros_like(img)
    for y in range(10):
        for x in range(10):
            if 0 <= y - dy < 10 and 0 <= x - dx < 10:
                want[y, x] = img[y - dy, x - dx]
    assert (dy, dx) != (0, 0) and np.array_equal(out, want)
