"""The ``dedup`` stage: remove from the pool every near-duplicate of an evaluation image.

Yalniz et al. (supplement §5) and Mahajan et al. (§1.3) do this so an accuracy gain cannot be
leakage. From the ``embed`` outputs of the pool and of each evaluation set (same embedder):

1. one kNN index over the evaluation vectors (``semisup_core.knn``: exact up to 2e5 vectors,
   IVF above; ``index``/``nprobe`` override it), saved to ``out/index/eval.faiss``;
2. for every pool image its nearest evaluation image; a pair with cosine similarity
   >= ``threshold`` is a near-duplicate. Per pool shard ``out/nearest/<shard>.parquet`` keeps
   every pair within ``sheet_margin`` below the threshold (``pool_key, pool_shard, eval_set,
   eval_key, eval_shard, similarity, score, duplicate``), then a done marker, so a rerun
   resumes;
3. ``out/pairs.parquet`` (the near-duplicates), ``out/removed.parquet`` (their pool keys: the
   manifest ``score`` reads through ``exclude``), ``out/manifest.parquet`` (the pool that is
   kept: ``key, shard``), ``out/contact_sheet.png`` (the closest pairs and the pairs around the
   threshold, with their similarity) and ``out/summary.json``.

``calibrate: true`` first measures the threshold (``calibration.py``): copies of evaluation
images under transforms must be found, distinct images must not be; with ``threshold: null``
the calibrated one is used.

With a ``verifier`` (a trained ``pair_verifier``, ``verifier.py``) the cosine only proposes:
each pool image's ``verify_candidates`` nearest evaluation images are verified pair by pair,
the pool image's pair is the candidate the verifier rates highest, and ``threshold`` is on the
verifier's logit margin (copy minus distinct); ``score`` holds the decision's value (the cosine
without a verifier).
"""

from __future__ import annotations

import logging

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field, model_validator

from semisup_core import config, knn, storage
from semisup_core.config import StageConfig
from semisup_core.embed import (embedding_info, embedding_shards, iter_embeddings, shard_table,
                                 table_vectors)
from semisup_core.errors import ConfigError, StorageError
from semisup_core.tables import read_table, write_table

log = logging.getLogger(__name__)

PAIRS = pa.schema([("pool_key", pa.string()), ("pool_shard", pa.string()),
                   ("eval_set", pa.string()), ("eval_key", pa.string()),
                   ("eval_shard", pa.string()), ("similarity", pa.float32()),
                   ("score", pa.float32()), ("duplicate", pa.bool_())])


#: the threshold calibrated on the demo data (Fashion-MNIST test, pixels embedder: 0.9978 for a
#: 0.1% false-flag rate, docs/dedup.md), rounded up
DEFAULT_THRESHOLD = 0.998


def _check_threshold(threshold: float | None, verifier: str | None, given: bool) -> None:
    if verifier is None:
        if threshold is not None and not -1 < threshold <= 1:
            raise ValueError(f"threshold {threshold} is not a cosine similarity (-1, 1]")
    elif not given:
        raise ValueError("with a verifier the threshold is a logit margin: give threshold, "
                         "or threshold: null with calibrate: true")


class VerifierOption(StageConfig):
    """dedup's optional copy verifier (``verifier.py``), in every config that runs dedup."""

    verifier: str | None = Field(None, description="a trained pair_verifier's model directory "
                                 "(verify-pairs + train, docs/dedup.md): each pool image's "
                                 "nearest evaluation images are verified pair by pair, and the "
                                 "threshold is the verifier's logit margin")
    verify_candidates: int = Field(5, ge=1, le=100, description="with a verifier: nearest "
                                   "evaluation images verified per pool image")


class DedupSpec(VerifierOption):
    """Dedup as a step of a pipeline (teacher_student): on by default."""

    enabled: bool = Field(True, description="remove the pool's near-duplicates of the test set "
                                            "before scoring")
    embedder: str = Field("pixels", description="embed's model: pixels | efficientnet_lite0 | a "
                                                "model directory URI")
    threshold: float = Field(DEFAULT_THRESHOLD, description="cosine similarity of a "
                             "near-duplicate pair (with a verifier: its logit margin)")

    @model_validator(mode="after")
    def _threshold_units(self):
        _check_threshold(self.threshold, self.verifier, "threshold" in self.model_fields_set)
        return self


class DedupConfig(VerifierOption):
    """Remove near-duplicates of evaluation images from the pool."""

    pool: str = Field(description="embed output of the unlabelled pool")
    eval_sets: list[str] = Field(min_length=1, description="embed outputs of the evaluation "
                                                           "sets (the test set first)")
    out: str = Field(description="output directory URI")
    threshold: float | None = Field(DEFAULT_THRESHOLD, description="cosine similarity at and "
                                    "above which a pair is a near-duplicate (default: calibrated "
                                    "on Fashion-MNIST with the pixels embedder; recalibrate for "
                                    "other data); with a verifier its logit margin instead (no "
                                    "default); null: the calibrated one (needs calibrate: true)")
    calibrate: bool = Field(False, description="measure recall per transform and the false-"
                                               "positive rate first (calibration.json)")
    calibration_images: int = Field(1000, ge=10, description="evaluation images copied")
    target_fpr: float = Field(0.001, gt=0, lt=1, description="calibration: the largest share "
                              "of distinct images flagged that the chosen threshold allows")
    known_duplicates: list[tuple[str, str]] = Field([], description="calibration: pairs of "
                                                    "evaluation keys a person judged to be the "
                                                    "same image (calibration_flags.png); not "
                                                    "counted as false flags")
    seed: int = 0
    index: str = Field("auto", description="auto (from the size) | flat | ivf_flat | ivf_pq")
    nlist: int | None = Field(None, ge=1, description="IVF lists (auto: ~4 sqrt(n))")
    nprobe: int | None = Field(None, ge=1, description="IVF lists visited per query")
    sheet_pairs: int = Field(24, ge=0, description="pairs on each half of the contact sheet")
    sheet_margin: float | None = Field(None, ge=0, description="pairs this far below the "
                                       "threshold are kept for the sheet (null: 0.02 of a cosine, "
                                       "2 logits with a verifier)")

    @model_validator(mode="after")
    def _threshold_units(self):
        _check_threshold(self.threshold, self.verifier, "threshold" in self.model_fields_set)
        return self

    def margin(self) -> float:
        if self.sheet_margin is not None:
            return self.sheet_margin
        return 2.0 if self.verifier else 0.02


def _spec(cfg: DedupConfig, n: int, d: int) -> knn.IndexSpec:
    if cfg.index == "auto":
        spec = knn.IndexSpec.for_size(n, d, cfg.nprobe)
    elif cfg.index in ("flat", "ivf_flat", "ivf_pq"):
        auto = knn.IndexSpec.for_size(max(n, knn.index.EXACT_MAX + 1), d)
        spec = knn.IndexSpec(cfg.index, nlist=auto.nlist if cfg.index != "flat" else 0,
                             pq_m=auto.pq_m if cfg.index == "ivf_pq" else 0,
                             nprobe=cfg.nprobe or auto.nprobe)
    else:
        raise ConfigError(f"index: {cfg.index!r} is not auto, flat, ivf_flat or ivf_pq")
    if cfg.nlist and spec.kind != "flat":
        spec = knn.IndexSpec(spec.kind, cfg.nlist, spec.pq_m, spec.nprobe)
    return spec


def set_name(dataset: str) -> str:
    """An evaluation set's name in the pair list: the last part of its dataset URI."""
    return dataset.rstrip("/").rsplit("/", 1)[-1]


def eval_index(cfg: DedupConfig):
    """(index, eval keys, eval shards, eval set of each row, the IndexSpec) over every
    evaluation set; checks that all were embedded the same way as the pool."""
    pool_info = embedding_info(cfg.pool)
    keys, shards, sets, parts = [], [], [], []
    for uri in cfg.eval_sets:
        info = embedding_info(uri)
        same = {k: v for k, v in info.items() if k != "dataset"}
        if same != {k: v for k, v in pool_info.items() if k != "dataset"}:
            raise ConfigError(f"{uri} was embedded by {info.get('model')} ({info.get('dim')}-d), "
                              f"the pool by {pool_info.get('model')} ({pool_info.get('dim')}-d): "
                              "embed both with the same model")
        name = set_name(info["dataset"])
        for shard, k, v in iter_embeddings(uri):
            keys += k
            shards += [shard] * len(k)
            sets += [name] * len(k)
            parts.append(v)
    if not keys:
        raise StorageError("dedup: the evaluation sets hold no images")
    vectors = np.concatenate(parts)
    spec = _spec(cfg, len(vectors), vectors.shape[1])
    index = knn.build(vectors, spec, seed=cfg.seed)
    return index, np.array(keys, object), np.array(shards, object), np.array(sets, object), spec


def eval_images(cfg: DedupConfig, keys: np.ndarray, shards: np.ndarray, sets: np.ndarray
                ) -> np.ndarray:
    """Every evaluation image (N x H x W x C uint8) in the index's row order, for the verifier
    (held in memory: 10,000 28 px images are 8 MB, 50,000 224 px ones 7.5 GB)."""
    from semisup_core.dedup.sheet import read_images
    out = None
    for uri in cfg.eval_sets:
        dataset = embedding_info(uri)["dataset"]
        mine = np.flatnonzero(sets == set_name(dataset))
        wanted: dict[str, set[str]] = {}
        for i in mine:
            wanted.setdefault(shards[i], set()).add(keys[i])
        got = read_images(dataset, wanted)
        for i in mine:
            img = got.get((shards[i], keys[i]))
            if img is None:
                raise StorageError(f"dedup: {keys[i]} of {uri} is not in {dataset}")
            if out is None:
                out = np.zeros((len(keys), *img.shape), np.uint8)
            if img.shape != out.shape[1:]:
                raise ConfigError(f"dedup: the verifier needs evaluation images of one size; "
                                  f"{keys[i]} is {img.shape}, others {out.shape[1:]}")
            out[i] = img
    return out


def shard_images(dataset: str, shard: str, keys: list[str]) -> np.ndarray:
    """The images of ``keys`` (one shard of ``dataset``) in that order."""
    from semisup_core.dedup.sheet import read_images
    got = read_images(dataset, {shard: set(keys)})
    missing = [k for k in keys if (shard, k) not in got]
    if missing:
        raise StorageError(f"dedup: {missing[0]} of shard {shard} is not in {dataset}")
    return np.stack([got[(shard, k)] for k in keys]) if keys else np.zeros((0, 1, 1, 1), np.uint8)


def _nearest(out: str, shard: str) -> pa.Table:
    """A shard's nearest table; one written before ``score`` existed gets it (its cosine)."""
    t = read_table(storage.join(out, "nearest", f"{shard}.parquet"))
    if "score" not in t.column_names:
        t = t.add_column(t.column_names.index("similarity") + 1, "score", t["similarity"])
    return t


def dedup(cfg: DedupConfig) -> dict:
    """Find the pool's near-duplicates of the evaluation sets and write the kept pool."""
    from semisup_core.dedup import calibration
    if cfg.threshold is None and not cfg.calibrate:
        raise ConfigError("threshold: null needs calibrate: true (or give a threshold)")
    config.save(cfg, cfg.out)
    index, ekeys, eshards, esets, spec = eval_index(cfg)
    knn.save(index, storage.join(cfg.out, "index", "eval.faiss"))
    scorer = gallery = None
    if cfg.verifier:
        from semisup_core.dedup.verifier import PairScorer, best_verified
        scorer, gallery = PairScorer(cfg.verifier), eval_images(cfg, ekeys, eshards, esets)
    threshold = cfg.threshold
    if cfg.calibrate:
        cal = calibration.calibrate(cfg, index, ekeys, esets, eshards, scorer, gallery)
        storage.write_json(storage.join(cfg.out, "calibration.json"), cal)
        if threshold is None:
            threshold = cal["threshold"]
    names = embedding_shards(cfg.pool)
    state_uri = storage.join(cfg.out, "nearest", "threshold.json")
    state = {"threshold": threshold, "verifier": cfg.verifier,
             "verify_candidates": cfg.verify_candidates if cfg.verifier else None}
    if storage.exists(state_uri):
        before = {"verifier": None, "verify_candidates": None, **storage.read_json(state_uri)}
        if before != state:
            raise ConfigError(f"{cfg.out} was searched with {before}, now {state}: use a new out")
    storage.write_json(state_uri, state)
    low = threshold - cfg.margin()
    pool_dataset = embedding_info(cfg.pool)["dataset"]
    k = cfg.verify_candidates if scorer else 1
    for name in names:
        done = storage.join(cfg.out, "nearest", f"{name}.done.json")
        if storage.exists(done):
            continue
        t = shard_table(cfg.pool, name)
        keys, vectors = t["key"].to_pylist(), table_vectors(t)
        sims, ids = knn.search(index, vectors, k, nprobe=spec.nprobe if spec.kind != "flat" else None)
        if scorer:
            score, col = best_verified(scorer, shard_images(pool_dataset, name, keys), gallery, ids)
            rows = np.arange(len(keys))
            s, i = sims[rows, col], ids[rows, col]
        else:
            s, i = sims[:, 0], ids[:, 0]
            score = s
        near = np.flatnonzero((i >= 0) & (score >= low))
        t = pa.table({"pool_key": pa.array([keys[j] for j in near], pa.string()),
                      "pool_shard": pa.array([name] * len(near), pa.string()),
                      "eval_set": pa.array(esets[i[near]].tolist(), pa.string()),
                      "eval_key": pa.array(ekeys[i[near]].tolist(), pa.string()),
                      "eval_shard": pa.array(eshards[i[near]].tolist(), pa.string()),
                      "similarity": pa.array(s[near], pa.float32()),
                      "score": pa.array(score[near], pa.float32()),
                      "duplicate": pa.array(score[near] >= threshold, pa.bool_())}, schema=PAIRS)
        write_table(storage.join(cfg.out, "nearest", f"{name}.parquet"), t)
        storage.write_json(done, {"shard": name, "images": len(keys),
                                  "duplicates": int(((i >= 0) & (score >= threshold)).sum())})
    near = pa.concat_tables([_nearest(cfg.out, n) for n in names]) if names else PAIRS.empty_table()
    pairs = near.filter(near["duplicate"])
    order = np.lexsort((np.array(pairs["pool_key"].to_pylist(), object).astype(str),
                        -pairs["score"].to_numpy()))
    pairs = pairs.take(order)
    write_table(storage.join(cfg.out, "pairs.parquet"), pairs.drop(["duplicate"]))
    removed = set(pairs["pool_key"].to_pylist())
    write_table(storage.join(cfg.out, "removed.parquet"),
                pa.table({"key": pa.array(sorted(removed), pa.string())}))
    removed_set = pa.array(sorted(removed), pa.string())
    kept = [t.filter(pc.invert(pc.is_in(t["key"], value_set=removed_set)))
            for t in (shard_table(cfg.pool, n, ["key", "shard"]) for n in names)]
    kept = pa.concat_tables(kept) if kept else pa.table({"key": pa.array([], pa.string()),
                                                         "shard": pa.array([], pa.string())})
    write_table(storage.join(cfg.out, "manifest.parquet"), kept)
    from semisup_core.dedup.sheet import contact_sheet
    sheet = contact_sheet(near, threshold, cfg)
    storage.put_bytes(storage.join(cfg.out, "contact_sheet.png"), sheet)
    per_set = {s: int(c) for s, c in zip(*np.unique(np.array(pairs["eval_set"].to_pylist(), object)
                                                    .astype(str), return_counts=True))} if len(pairs) else {}
    pool_n = kept.num_rows + len(removed)
    summary = {"pool_images": pool_n, "removed": len(removed), "kept": kept.num_rows,
               "removed_fraction": len(removed) / max(pool_n, 1), "threshold": threshold,
               "per_eval_set": per_set, "eval_images": int(index.ntotal),
               "index": spec.factory(), "nprobe": spec.nprobe if spec.kind != "flat" else None,
               "embedder": embedding_info(cfg.pool)["model"], "calibrated": cfg.calibrate,
               "verifier": cfg.verifier,
               "verify_candidates": cfg.verify_candidates if cfg.verifier else None,
               "score": "verifier logit margin" if cfg.verifier else "cosine similarity"}
    storage.write_json(storage.join(cfg.out, "summary.json"), summary)
    log.info("dedup: %d of %d pool images are near-duplicates of an evaluation image "
             "(%s >= %.4f); sheet: %s", len(removed), pool_n, summary["score"], threshold,
             storage.join(cfg.out, "contact_sheet.png"))
    return summary


def removed_keys(out: str) -> set[str]:
    """The pool keys a dedup output removed (one line when it is not a finished one)."""
    uri = storage.join(out, "removed.parquet")
    if not storage.exists(uri):
        raise StorageError(f"exclude: {out} is not a finished dedup output (no removed.parquet)")
    return set(read_table(uri)["key"].to_pylist())


class DedupRunConfig(VerifierOption):
    """``semisup run dedup``: the dedup pipeline on Fashion-MNIST (pool: its training set),
    calibrated; configs/dedup_demo.yaml."""

    out: str = Field("runs/dedup", description="where data and the dedup output go")
    fashion_mnist: str = Field("/usr/share/datasets/fashion-mnist", description="Fashion-MNIST IDX dir")
    seed: int = Field(0, description="seed of the calibration draw")
    embedder: str = Field("pixels", description="embed's model")
    calibrate: bool = Field(True, description="measure the threshold first")
    threshold: float = Field(-1.0, description="with calibrate, a negative value takes the "
                                               "calibrated threshold")
    calibration_images: int = Field(1000, ge=10)
    known_duplicates: list[tuple[str, str]] = Field(
        [], description="calibration: pairs of test-set keys judged to be the same image")

    @model_validator(mode="after")
    def _threshold_units(self):
        if self.verifier is None and not -1 <= self.threshold <= 1:
            raise ValueError(f"threshold {self.threshold} is not a cosine similarity [-1, 1]")
        return self


def dedup_pool(spec: DedupSpec, pool: str, test: str, out: str) -> tuple[str, dict]:
    """Dedup as a step of a method's in-process run: embed the test set and the pool with
    ``spec.embedder``, find the pool's near-duplicates at ``spec.threshold``, and return a copy
    of the pool without them (``data.manifest.without_keys``) with the summary; everything
    under ``out`` (``embed-test``, ``embed-pool``, ``dedup``, ``pool``), resumable."""
    if not spec.enabled:
        return pool, {"enabled": False}
    from semisup_core.data.manifest import without_keys
    from semisup_core.embed import EmbedConfig, embed
    emb = {}
    for name, data in (("test", test), ("pool", pool)):
        emb[name] = storage.join(out, f"embed-{name}")
        embed(EmbedConfig(dataset=data, out=emb[name], model=spec.embedder))
    result = storage.join(out, "dedup")
    summary = dedup(DedupConfig(pool=emb["pool"], eval_sets=[emb["test"]], out=result,
                                threshold=spec.threshold, verifier=spec.verifier,
                                verify_candidates=spec.verify_candidates))
    return without_keys(pool, removed_keys(result), storage.join(out, "pool")), summary
