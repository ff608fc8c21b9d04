"""The copy verifier of ``dedup``: its training pairs (stage ``verify-pairs``) and its scores.

A copy descriptor finds the source of an edited copy among its few nearest evaluation images,
but distinct look-alikes can be as similar to each other as a cropped copy is to its source,
so no cosine threshold separates them at 0.1% false flags per image (docs/dedup.md). Copy
detection then verifies the few candidates pair by pair. The verifier is the registry model
``pair_verifier`` (a pair side by side in, logits of [distinct, copy] out; it aligns the pair
itself), trained by the ordinary supervised objective of the one training loop on a labelled
dataset of pairs this module writes from the pool:

- a positive: a pool image and an edit of it (the calibration's transforms),
- a negative: a pool image and an edit of one of its ``neighbours`` nearest *other* pool images
  by the descriptor (the look-alikes the cosine confuses; edited too, so an edit's traces do
  not give the answer away),

each pair's sides in a random order. Nothing of the evaluation sets is read. ``PairScorer``
then gives ``dedup`` the verifier's logit margin (copy minus distinct) of any pairs, both
orders averaged.
"""

from __future__ import annotations

import logging

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field, field_validator

from semisup_core import checkpoint, knn, storage
from semisup_core.config import StageConfig
from semisup_core.data.dataset import DATASET_FILE, make_meta, read_meta, write_meta
from semisup_core.data.decode import encode_png
from semisup_core.data.shards import ShardWriter
from semisup_core.dedup.calibration import TRANSFORMS, transform
from semisup_core.embed import embedding_info, embedding_shards, shard_table, table_vectors
from semisup_core.errors import ConfigError, DataError
from semisup_core.train.config import TrainRecipe

log = logging.getLogger(__name__)

CLASSES = ["distinct", "copy"]


class VerifyPairsConfig(StageConfig):
    """Training pairs for dedup's copy verifier, drawn from the pool (docs/dedup.md)."""

    dataset: str = Field(description="the pool whose images are paired")
    embeddings: str = Field(description="embed output of that pool by the copy descriptor (it "
                                        "picks each image's look-alikes)")
    out: str = Field(description="output dataset URI: labelled pairs side by side (classes "
                                 "distinct, copy)")
    images: int = Field(50000, ge=2, description="pool images drawn; they are held in memory")
    pairs_per_image: int = Field(2, ge=1, description="positive pairs per image, and as many "
                                                      "negatives (fresh edits each)")
    neighbours: int = Field(10, ge=1, description="a negative is an edit of one of the image's "
                                                  "this many nearest other images")
    transforms: list[str] = Field(list(TRANSFORMS), min_length=1,
                                  description="edits drawn from (calibration.TRANSFORMS)")
    seed: int = 0
    samples_per_shard: int = Field(20000, ge=1)

    @field_validator("transforms")
    @classmethod
    def _known(cls, v: list[str]) -> list[str]:
        bad = [t for t in v if t not in TRANSFORMS]
        if bad:
            raise ValueError(f"unknown transform {bad[0]!r}; known: {', '.join(TRANSFORMS)}")
        return v


def _draw(cfg: VerifyPairsConfig) -> tuple[list[tuple[str, str]], np.ndarray]:
    """A seeded draw of ``cfg.images`` (shard, key) of the embeddings, with their vectors."""
    names = embedding_shards(cfg.embeddings)
    counts = [shard_table(cfg.embeddings, n, ["key"]).num_rows for n in names]
    total = sum(counts)
    pick = np.sort(np.random.default_rng(cfg.seed).choice(total, min(cfg.images, total),
                                                           replace=False))
    rows, vecs, start = [], [], 0
    for name, count in zip(names, counts):
        mine = pick[(pick >= start) & (pick < start + count)] - start
        start += count
        if len(mine):
            t = shard_table(cfg.embeddings, name).take(mine)
            rows += [(name, k) for k in t["key"].to_pylist()]
            vecs.append(table_vectors(t))
    return rows, np.concatenate(vecs)


def _images(dataset: str, rows: list[tuple[str, str]]) -> list[np.ndarray]:
    from semisup_core.dedup.sheet import read_images
    wanted: dict[str, set[str]] = {}
    for shard, key in rows:
        wanted.setdefault(shard, set()).add(key)
    got = read_images(dataset, wanted)
    missing = [r for r in rows if r not in got]
    if missing:
        raise DataError(f"verify-pairs: {missing[0][1]} (shard {missing[0][0]}) of the "
                        f"embeddings is not in {dataset}: embed this dataset")
    images = [got[r] for r in rows]
    shapes = {im.shape for im in images}
    if len(shapes) > 1:
        raise DataError(f"verify-pairs: the pool's images differ in size ({sorted(shapes)[:2]}); "
                        "a pair is two images of one size side by side")
    return images


def _where(uri: str) -> tuple[str, str]:
    _, bucket, key = storage.split_uri(uri)
    return bucket, key.rstrip("/")


def pair_neighbours(vectors: np.ndarray, k: int) -> np.ndarray:
    """Each row's ``k`` nearest *other* rows by inner product (exact; the row itself dropped
    wherever it ranks, so a duplicate of it is still a neighbour)."""
    k = min(k, len(vectors) - 1)
    _, ids = knn.exact_search(vectors, vectors, k + 1)
    out = np.empty((len(vectors), k), np.int64)
    for i, row in enumerate(ids):
        others = row[row != i]
        out[i] = others[:k]
    return out


def verify_pairs(cfg: VerifyPairsConfig) -> dict:
    """Write the verifier's training pairs (module doc); deterministic under ``seed``, so a
    killed run is simply rerun (a finished output is kept)."""
    meta_uri = storage.join(cfg.out, DATASET_FILE)
    if storage.exists(meta_uri):
        meta = read_meta(cfg.out)
        log.info("verify-pairs: %s is already written (%d pairs)", cfg.out, meta.num_samples)
        return {"pairs": meta.num_samples, "out": cfg.out, "resumed": True}
    info = embedding_info(cfg.embeddings)
    if _where(info["dataset"]) != _where(cfg.dataset):
        raise ConfigError(f"embeddings {cfg.embeddings} are of {info['dataset']}, not of "
                          f"dataset {cfg.dataset}")
    pool = read_meta(cfg.dataset)
    rows, vectors = _draw(cfg)
    if len(rows) < 2:
        raise DataError(f"verify-pairs: {cfg.dataset} has {len(rows)} image; pairs need two")
    images = _images(cfg.dataset, rows)
    near = pair_neighbours(vectors, cfg.neighbours)
    h, w, c = images[0].shape
    with ShardWriter(cfg.out, cfg.samples_per_shard, name="pairs") as writer:
        for i, img in enumerate(images):
            for p in range(cfg.pairs_per_image):
                rng = np.random.default_rng([cfg.seed, i, p])
                j = int(near[i, rng.integers(near.shape[1])])
                for label, other in ((1, img), (0, images[j])):
                    t = cfg.transforms[int(rng.integers(len(cfg.transforms)))]
                    a, b = img, transform(other, t, rng)
                    if rng.random() < 0.5:
                        a, b = b, a
                    writer.write(f"pair-{i:07d}-{p:02d}-{label}",
                                 encode_png(np.concatenate([a, b], axis=1)), "png", label)
    meta = make_meta(cfg.out, "verifier-pairs", CLASSES, writer.shards, dict(writer.class_counts),
                     source="dedup-verify-pairs", channels=c, hw=(h, 2 * w),
                     extra={"pool": cfg.dataset, "embeddings": cfg.embeddings,
                            "images": len(rows), "neighbours": int(near.shape[1]),
                            "transforms": cfg.transforms, "seed": cfg.seed,
                            "pool_samples": pool.num_samples})
    write_meta(cfg.out, meta)
    log.info("verify-pairs: %d pairs of %d pool images -> %s", meta.num_samples, len(rows), cfg.out)
    return {"pairs": meta.num_samples, "images": len(rows), "out": cfg.out, "resumed": False}


class PairScorer:
    """A trained ``pair_verifier`` run (its model directory) as a function of image pairs:
    ``scorer(a, b)`` -> the logit margin copy minus distinct of each pair (a[i], b[i]) (uint8
    N x H x W x C), both orders averaged. Images of another size than it was trained on are
    resized to it."""

    def __init__(self, model_dir: str, device: str | None = None, batch: int | None = None):
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.model, state = checkpoint.load_model(model_dir, self.device)
        spec = state["model"]
        if spec["name"] != "pair_verifier" or state.get("classes") != CLASSES:
            raise ConfigError(f"verifier {model_dir} is a {spec['name']} over classes "
                              f"{state.get('classes')}; a verifier is a pair_verifier trained on "
                              "verify-pairs output (classes distinct, copy)")
        self.mean, self.std = state["mean"], state["std"]
        h, w2 = state["image_size"]
        self.size = (int(h), int(w2) // 2)
        # pairs per forward: 1,024 of 28 px; ~80 of 224 px (the first conv's activations ~1 GB)
        self.batch = batch or max(8, min(1024, 2 ** 22 // (self.size[0] * self.size[1])))
        self.channels = int(spec["in_chans"])
        self.model_dir = model_dir

    def _side_by_side(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        x = torch.cat([a, b], 3).float() / 255.0
        return ((x - self.mean) / self.std).to(self.device)

    def _prepare(self, imgs: np.ndarray) -> torch.Tensor:
        t = torch.from_numpy(np.ascontiguousarray(imgs))
        t = (t.unsqueeze(1) if t.ndim == 3 else t.permute(0, 3, 1, 2)).float()
        if t.shape[1] != self.channels:
            raise DataError(f"verifier {self.model_dir} takes {self.channels}-channel images, "
                            f"got {t.shape[1]}")
        if tuple(t.shape[2:]) != self.size:
            t = F.interpolate(t, size=self.size, mode="bilinear", antialias=True,
                              align_corners=False)
        return t

    @torch.inference_mode()
    def __call__(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        if len(a) != len(b):
            raise ValueError(f"{len(a)} left images, {len(b)} right ones")
        out = []
        for i in range(0, len(a), self.batch):
            x, y = self._prepare(a[i:i + self.batch]), self._prepare(b[i:i + self.batch])
            both = self.model(self._side_by_side(torch.cat([x, y]), torch.cat([y, x]))).float()
            margin = both[:, 1] - both[:, 0]
            out.append(((margin[:len(x)] + margin[len(x):]) / 2).cpu().numpy())
        return np.concatenate(out) if out else np.zeros(0, np.float32)


def best_verified(scorer: PairScorer, images: np.ndarray, gallery: np.ndarray, ids: np.ndarray,
                  block: int = 512) -> tuple[np.ndarray, np.ndarray]:
    """For each row i of ``images`` (N x H x W x C): the best verifier margin among the pairs
    (images[i], gallery[ids[i, j]]) and its column j; ids < 0 (fewer candidates) score -inf."""
    n, k = ids.shape
    scores = np.full((n, k), -np.inf, np.float32)
    for start in range(0, n, block):
        sub = ids[start:start + block]
        rows, cols = np.nonzero(sub >= 0)
        if len(rows):
            scores[start + rows, cols] = scorer(images[start + rows], gallery[sub[rows, cols]])
    col = scores.argmax(1) if k else np.zeros(n, np.int64)
    return scores[np.arange(n), col], col


def verifier_recipe() -> TrainRecipe:
    """The verifier's training recipe (configs/copy_verifier.yaml's, measured in docs/dedup.md):
    pair_verifier width 16, shifts within 3 px and five magnifications, supervised cross-entropy,
    3 epochs of batch 256, no random crop (it would move the seam between the two images)."""
    return TrainRecipe(model="pair_verifier",
                       model_kwargs={"width": 16, "align": 3,
                                     "scales": [0.82, 0.9, 1.0, 1.1, 1.22]},
                       epochs=3, batch_size=256,
                       optim={"lr": 0.1, "weight_decay": 5e-4, "warmup_epochs": 0.3},
                       augment={"crop_padding": 0, "hflip": True})


class CopyVerifierRunConfig(StageConfig):
    """``semisup run copy_verifier``: train dedup's copy verifier on Fashion-MNIST's training
    set (the pool) and dedup the pool against the test set with it, calibrated
    (configs/copy_verifier_demo.yaml)."""

    out: str = Field("runs/copy-verifier-run", description="where data and the outputs go")
    fashion_mnist: str = Field("/usr/share/datasets/fashion-mnist", description="Fashion-MNIST IDX dir")
    seed: int = Field(0, description="seed of the pairs, the verifier and the calibration draw")
    descriptor: str = Field("pixels", description="embed's model that proposes the candidates: "
                                                  "a copy descriptor's model directory URI "
                                                  "(configs/copy_descriptor.yaml), or pixels")
    pairs_images: int = Field(VerifyPairsConfig.model_fields["images"].default, ge=2,
                              description="pool images the pairs are drawn from")
    pairs_per_image: int = Field(VerifyPairsConfig.model_fields["pairs_per_image"].default, ge=1,
                                 description="positive pairs per image, and as many negatives")
    neighbours: int = Field(VerifyPairsConfig.model_fields["neighbours"].default, ge=1,
                            description="negatives among each image's nearest other images")
    recipe: TrainRecipe = Field(default_factory=lambda: verifier_recipe(),
                                description="the verifier's training recipe (model pair_verifier)")
    verify_candidates: int = Field(5, ge=1, le=100, description="nearest test images verified "
                                                                "per pool image")
    calibration_images: int = Field(1000, ge=10, description="test images copied by the "
                                                             "calibration")
    known_duplicates: list[tuple[str, str]] = Field(
        [], description="calibration: pairs of test-set keys judged to be the same image "
                        "(calibration_flags.png); not counted as false flags")

    @field_validator("recipe", mode="before")
    @classmethod
    def _onto_default(cls, v):
        """A partial recipe (``recipe: {epochs: 1}``) changes those fields of the default one."""
        if not isinstance(v, dict):
            return v

        def merge(base: dict, over: dict) -> dict:
            return {**base, **{k: merge(base[k], x) if isinstance(x, dict) and
                               isinstance(base.get(k), dict) else x for k, x in over.items()}}
        return merge(verifier_recipe().model_dump(mode="json", exclude_none=True), v)

    @field_validator("recipe")
    @classmethod
    def _recipe(cls, v):
        if v.model != "pair_verifier":
            raise ValueError(f"the verifier is a pair_verifier, not {v.model}")
        return v
