"""The weak objective's 1/k soft-target loss against brute force, the resampling's law, the
simulated tags, and weak pre-training -> fine-tuning in the one loop on tiny data."""

from __future__ import annotations

import math
import os

import numpy as np
import pyarrow as pa
import pytest
import torch
import torch.nn.functional as F

from semisup_core import checkpoint, config, storage
from semisup_core.data.dataset import make_meta, read_meta, shard_uris, write_meta
from semisup_core.data.decode import encode_png
from semisup_core.data.shards import ShardWriter, iter_shard
from semisup_core.errors import ConfigError, DataError
from semisup_core.tables import read_table, write_table
from semisup_core.train import TrainConfig, train
from semisup_core.wsl import resample
from semisup_core.wsl.objective import WeakTargets, soft_target_loss
from semisup_core.wsl.simulate import CLASS_SYNSETS, DIGITS, SimulatedTags, simulate_tags
from semisup_core.wsl.stage import train_weak
from semisup_core.wsl.synsets import Canonicaliser, SynsetsConfig, run_synsets
from tests.train.conftest import _texture
from tests.wsl.conftest import write_tagged


def _csr(lists):
    flat = torch.tensor([t for x in lists for t in x])
    offsets = torch.tensor([0] + list(np.cumsum([len(x) for x in lists])))
    return flat, offsets


def test_soft_target_loss_is_the_formula_and_its_gradient():
    g = torch.Generator().manual_seed(0)
    lists = [[0], [1, 3], [2, 4, 5], [5], [0, 1, 2, 3, 4, 5]]
    z = torch.randn(len(lists), 6, generator=g, dtype=torch.float64, requires_grad=True)
    loss = soft_target_loss(z, *_csr(lists))
    dense = torch.zeros(len(lists), 6, dtype=torch.float64)
    for i, x in enumerate(lists):
        dense[i, x] = 1 / len(x)
    assert torch.allclose(loss, F.cross_entropy(z, dense))
    brute = 0.0  # a double loop over images and their labels
    for i, x in enumerate(lists):
        logp = [z[i, t].item() - math.log(sum(math.exp(v) for v in z[i].tolist())) for t in x]
        brute -= sum(logp) / len(x)
    assert loss.item() == pytest.approx(brute / len(lists), rel=1e-12)
    loss.backward()  # d loss / dz = (softmax - target) / B
    assert torch.allclose(z.grad, (z.softmax(1) - dense).detach() / len(lists))
    one = torch.randn(4, 6, generator=g)
    assert torch.allclose(soft_target_loss(one, *_csr([[2], [0], [5], [1]])),
                          F.cross_entropy(one, torch.tensor([2, 0, 5, 1])))  # k = 1: plain CE


def _labels(rng, n=400, vocab=12):
    # a Zipf-like tag law: tag t on an image with p ~ 1 / (t + 1)
    p = 1 / np.arange(1, vocab + 1)
    out = []
    for _ in range(n):
        k = rng.integers(1, 4)
        out.append(sorted(set(rng.choice(vocab, size=k, p=p / p.sum()).tolist())))
    return out


def test_image_weights_equal_enumerating_the_draw():
    labels = _labels(np.random.default_rng(0))
    f = np.bincount([t for x in labels for t in x], minlength=12)
    for power in (0.0, 0.5, 1.0):
        w = resample.image_weights(labels, 12, power)
        pt = f ** power / (f ** power).sum()
        brute = np.zeros(len(labels))
        for t in range(12):  # label t, then one of its f_t images uniformly
            carriers = [i for i, x in enumerate(labels) if t in x]
            for i in carriers:
                brute[i] += pt[t] / len(carriers)
        assert np.allclose(w, brute) and w.sum() == pytest.approx(1.0)


@pytest.mark.parametrize("power", [0.0, 0.5, 1.0])
def test_drawn_labels_follow_the_configured_law(power):
    labels = _labels(np.random.default_rng(1))
    n = 100_000
    idx, drawn = resample.draw(labels, 12, power, n, seed=3)
    f = np.bincount([t for x in labels for t in x], minlength=12).astype(float)
    p = f ** power / (f ** power).sum()
    counts = np.bincount(drawn, minlength=12)
    sd = np.sqrt(n * p * (1 - p))
    assert (np.abs(counts - n * p) <= 4.5 * sd).all(), (counts, n * p)
    assert all(t in labels[i] for i, t in zip(idx[:2000], drawn[:2000]))  # an image carries it
    w = resample.image_weights(labels, 12, power)  # images at their marginal w_i
    per_image = np.bincount(idx, minlength=len(labels))
    assert (np.abs(per_image - n * w) <= 4.5 * np.sqrt(n * w * (1 - w)) + 1).all()
    again = resample.draw(labels, 12, power, n, seed=3)
    assert (again[0] == idx).all() and (again[1] == drawn).all()  # seeded


TAGS = [["shirt"], ["shirts", "dog"], ["dog"], ["coat"], ["coat", "dog"], ["shirt", "coat"]] * 8


def test_resampled_set_and_weak_training_learns_the_tags(tmp_path):
    data, keys = write_tagged(str(tmp_path / "tagged"), TAGS)
    syn = run_synsets(SynsetsConfig(data=data, out=str(tmp_path / "syn"), draws=4, seed=1))
    train_uri = syn["train"]["uri"]
    meta = read_meta(train_uri)
    assert meta.classes == ["coat.n.01", "dog.n.01", "shirt.n.01"]  # by images (tied), by name
    assert meta.num_samples == 4 * len(keys) and meta.extra["weak"]["power"] == 0.5
    samples = [s for u in shard_uris(train_uri, meta) for s in iter_shard(u)]
    targets = dict(zip(*read_table(f"{train_uri}/targets.parquet").to_pydict().values()))
    by_key = dict(zip(keys, TAGS))
    for s in samples:  # the drawn label is one of the image's, keys <image>-r<j>
        src = s.meta["source_key"]
        assert s.key.startswith(src + "-r") and resample.source_key(s.key) == src
        assert s.cls in targets[src]
        assert {meta.classes[t].split(".")[0] for t in targets[src]} == \
            {t.rstrip("s") for t in by_key[src]}
    cfg = config.build(TrainConfig, {
        "out": str(tmp_path / "weak"), "data": {"train": train_uri}, "objective": "weak",
        "model": "small_resnet8", "model_kwargs": {"width": 4}, "epochs": 3, "batch_size": 32,
        "optim": {"lr": 0.2, "warmup_epochs": 0}})
    train_weak(cfg)
    model, state = checkpoint.load_model(cfg.out, "cpu")
    assert state["model"]["num_classes"] == 3
    metrics = storage.read_json(os.path.join(cfg.out, "metrics.json"))
    losses = [h["loss"] for h in metrics["history"]]
    assert losses[-1] < losses[0]
    # the supervised objective on the same set: the drawn-label ablation trains as well
    sup = cfg.model_copy(update={"objective": "supervised", "out": str(tmp_path / "sup")})
    train(sup)
    with pytest.raises(ConfigError, match="semisup stage weak-train trains objective weak"):
        train_weak(sup)


def test_weak_targets_errors(tmp_path):
    uri = str(tmp_path / "t.parquet")
    write_table(uri, pa.table({"key": ["a", "b"], "labels": pa.array([[0, 2], []], pa.list_(pa.int32()))}))
    with pytest.raises(DataError, match="1 images have no label"):
        WeakTargets(uri, 3)
    write_table(uri, pa.table({"key": ["a"], "labels": pa.array([[0, 7]], pa.list_(pa.int32()))}))
    with pytest.raises(DataError, match="outside the 3-label vocabulary"):
        WeakTargets(uri, 3)
    write_table(uri, pa.table({"key": ["a"], "labels": pa.array([[0, 2]], pa.list_(pa.int32()))}))
    t = WeakTargets(uri, 3)
    flat, off = t.batch(["a-r0", "a-r5", "a"], "cpu")
    assert flat.tolist() == [0, 2] * 3 and off.tolist() == [0, 2, 4, 6]
    with pytest.raises(DataError, match="no labels for sample 'zz-r1'"):
        t.batch(["zz-r1"], "cpu")
    with pytest.raises(ConfigError, match="weak.targets .*nothere"):
        WeakTargets(str(tmp_path / "nothere.parquet"), 3)


def _pool_and_oracle(tmp_path, n=600):
    """A pool of Fashion-MNIST-like keys (classes 0..9) and MNIST-like digits, with its oracle."""
    rng = np.random.default_rng(0)
    classes = list(CLASS_SYNSETS)
    rows = []
    pool = str(tmp_path / "pool")
    with ShardWriter(pool, 128) as w:
        for i in range(n):
            digit = i % 3 == 2
            key = f"{'mnist' if digit else 'fm'}-{i:05d}"
            w.write(key, encode_png(_texture(i % 4, rng)), "png", None, {"source": "x"})
            rows.append({"key": key, "true_class": -1 if digit else i % 10,
                         "source_class_name": str(i % 10) if digit else classes[i % 10]})
    write_meta(pool, make_meta(pool, "pool", classes, w.shards, None, source="split", channels=1,
                               hw=(28, 28)))
    oracle = str(tmp_path / "oracle.parquet")
    write_table(oracle, pa.Table.from_pylist(rows))
    return pool, oracle, rows


def test_simulated_tags_are_seeded_marked_and_noisy_at_the_rate(tmp_path, wn):
    pool, oracle, rows = _pool_and_oracle(tmp_path)
    spec = SimulatedTags(noise_rate=0.3)
    info = simulate_tags(pool, oracle, str(tmp_path / "a"), spec, seed=5)
    again = simulate_tags(pool, oracle, str(tmp_path / "b"), spec, seed=5)
    assert info == again
    meta = read_meta(str(tmp_path / "a"))
    assert meta.extra["tags_simulated"]["noise_rate"] == 0.3
    a = [s for u in shard_uris(str(tmp_path / "a"), meta) for s in iter_shard(u)]
    b = [s for u in shard_uris(str(tmp_path / "b"), meta) for s in iter_shard(u)]
    assert [s.meta["tags"] for s in a] == [s.meta["tags"] for s in b]  # same seed, same tags
    assert [s.key for s in a] == [r["key"] for r in rows] and all(s.cls is None for s in a)
    assert all(s.meta["tags_simulated"] is True and 1 <= len(s.meta["tags"]) <= 3 for s in a)
    n = info["tags"]  # the measured noise within binomial bounds of the rate
    assert abs(info["noise_measured"] - 0.3) <= 4 * math.sqrt(0.3 * 0.7 / n)
    # a garment's clean tags resolve to its own class's bank; a digit's first tag is a digit word
    c = Canonicaliser(wn)
    own = {cls: {s for name in ss for s in [wn.synset(name)]} for cls, ss in CLASS_SYNSETS.items()}
    classes = list(CLASS_SYNSETS)
    clean = simulate_tags(pool, oracle, str(tmp_path / "clean"), SimulatedTags(noise_rate=0.0), 5)
    assert clean["noise_measured"] == 0
    meta_c = read_meta(str(tmp_path / "clean"))
    for s, r in zip([s for u in shard_uris(str(tmp_path / "clean"), meta_c) for s in iter_shard(u)], rows):
        if r["true_class"] < 0:
            assert s.meta["tags"][0] in DIGITS + ["digit", "number", "handwriting"]
            if s.meta["tags"][0] in DIGITS:
                assert DIGITS.index(s.meta["tags"][0]) == int(r["source_class_name"])
        else:
            targets = own[classes[r["true_class"]]]
            near = set()
            for t in targets:  # the class's synsets and two levels of hypernyms
                h1 = t.hypernyms()
                near |= {t, *h1, *[g for x in h1 for g in x.hypernyms()]}
            for tag in s.meta["tags"]:
                assert set(c.resolve(tag).senses) & near, (tag, r)
    assert simulate_tags(pool, oracle, str(tmp_path / "a"), SimulatedTags(noise_rate=0.9), 1) == info  # reused


def test_cluster_job_config_runs_the_weak_train_image():
    """configs/wsl_cluster_job.yaml validates as a JobSpec whose pods run images/weak-train."""
    from semisup.pytorchjob import JobSpec
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    job = config.load(JobSpec, os.path.join(repo, "configs", "wsl_cluster_job.yaml"))
    assert job.stage == "weak-train" and "semisup-weak-train:" in job.pod_image
    cfg = job.train_config()
    assert cfg.objective == "weak" and cfg.model == "resnext101_32x8d" and cfg.weak is not None


def _in_memory_copy(cfg, meta, keys, labels, vocab, out) -> None:
    """The resampled set as the first version wrote it (every drawn image's bytes in a dict,
    one writer in draw order): the brute-force twin of the streamed copy."""
    idx, drawn = resample.draw(labels, len(vocab), cfg.power, int(round(cfg.draws * len(keys))),
                               cfg.seed)
    row_of = {k: i for i, k in enumerate(keys)}
    encoded = {row_of[s.key]: (s.image, s.ext) for u in shard_uris(cfg.data, meta)
               for s in iter_shard(u) if s.key in row_of}
    copies: dict[int, int] = {}
    with ShardWriter(out, cfg.samples_per_shard) as writer:
        for i, t in zip(idx.tolist(), drawn.tolist()):
            j = copies[i] = copies.get(i, -1) + 1
            writer.write(f"{keys[i]}-r{j}", *encoded[i], int(t), {"source_key": keys[i]})


def _tree(root: str) -> dict[str, bytes]:
    return {os.path.relpath(os.path.join(d, n), root): open(os.path.join(d, n), "rb").read()
            for d, _, names in os.walk(root) for n in names}


@pytest.mark.parametrize("spill_mb", [1e-4, 256])  # a spill per image / none until the end
def test_streamed_resampling_writes_the_in_memory_copy_byte_for_byte(tmp_path, spill_mb):
    """2.5 draws per image of 48 tagged images into shards of 7: the streamed copy (spilled
    per output shard, written shard by shard) equals the in-memory copy's shards, keys, copy
    numbers and drawn labels byte for byte, and leaves no work files."""
    data, keys = write_tagged(str(tmp_path / "tagged"), TAGS)
    cfg = SynsetsConfig(data=data, out=str(tmp_path / "syn"), draws=2.5, seed=4,
                        samples_per_shard=7, spill_mb=spill_mb)
    syn = run_synsets(cfg)
    got = _tree(syn["train"]["uri"])
    targets = read_table(os.path.join(syn["train"]["uri"], "targets.parquet")).to_pydict()
    ref = str(tmp_path / "ref")
    _in_memory_copy(cfg, read_meta(data), targets["key"], targets["labels"],
                    read_meta(syn["train"]["uri"]).classes, ref)
    want = _tree(ref)
    shards = sorted(k for k in want if k.endswith(".tar"))
    assert len(shards) == math.ceil(2.5 * 48 / 7) == 18
    assert {k: got[k] for k in want} == want  # every shard and its index, byte for byte
    assert not any(k.startswith("_work") for k in got)
    copies = [s.key for u in sorted(shards) for s in iter_shard(os.path.join(ref, u))]
    assert len(copies) == 120 and len(set(copies)) == 120  # each copy numbered once


def test_resampling_refuses_a_pool_that_lost_an_image(tmp_path):
    """An image removed from the data between tagging and the copy: one line, not a short set."""
    data, keys = write_tagged(str(tmp_path / "tagged"), TAGS)
    meta = read_meta(data)
    cfg = SynsetsConfig(data=data, out=str(tmp_path / "syn"), draws=2, seed=4)
    labels = [[0]] * len(keys)
    with pytest.raises(DataError, match="no longer holds every image"):
        resample.write_resampled(cfg, meta, keys + ["gone"], labels + [[0]], ["a.n.01"],
                                 str(tmp_path / "out"))
