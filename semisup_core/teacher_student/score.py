"""The ``score`` stage: the teacher scores every unlabelled image (Yalniz et al. §3.1).

For each pool shard this worker owns (shards ``i::N``, from the config or from
``RANK``/``WORLD_SIZE``; the loop is ``semisup_core.inference``, shared with ``embed``), it
writes ``out/shards/<shard>.parquet`` with the top-P classes of every image (``key, shard, id,
class_id, score, p_rank``, rows in image order; ``id`` is the image's id in the pool,
``data.dataset.first_ids``; images a dedup output removed are left out, see ``exclude``) and
then a marker ``out/shards/<shard>.done.json`` (counts, the shard's id range, corrupt keys,
top-1 counts per class). A rerun skips shards that have a marker, so a killed worker resumes
where it stopped. When all its shards are done the worker writes its partial per-class top-K
table, ``out/partials/worker-XXXXX-of-YYYYY.parquet`` (``class_id, score, id``), which
``select`` merges; the shards it scored feed it as they are written (only the shards a
killed run had finished are read back).
"""

from __future__ import annotations

import logging
from typing import Literal

import numpy as np
import pyarrow as pa
import torch
from pydantic import Field

from semisup_core import checkpoint, config, storage
from semisup_core.config import StageConfig
from semisup_core.data.dataset import first_ids, read_meta, shard_uris
from semisup_core.errors import DataError
from semisup_core.inference import ShardLoop, marker_uri, shard_name, worker_split
from semisup_core.tables import read_table, write_table
from semisup_core.teacher_student.topk import TopKPerClass
from semisup_core.train.augment import normalize

log = logging.getLogger(__name__)

CANDIDATES = pa.schema([("key", pa.string()), ("shard", pa.string()), ("id", pa.int64()),
                        ("class_id", pa.int32()), ("score", pa.float32()), ("p_rank", pa.int8())])
PARTIAL = pa.schema([("class_id", pa.int32()), ("score", pa.float32()), ("id", pa.int64())])


class ScoreConfig(StageConfig):
    """Score an unlabelled pool with a trained model."""

    model: str = Field(description="teacher model directory URI")
    pool: str = Field(description="unlabelled dataset directory URI")
    out: str = Field(description="output directory URI (shards/, partials/)")
    top_p: int = Field(10, ge=1, description="classes kept per image (paper: P=10; "
                                             "small label spaces: 1-2)")
    partial_k: int = Field(16000, ge=1, description="per-class candidates each worker keeps "
                                                    "for select (>= the K you will select)")
    use_logits: bool = Field(False, description="rank by raw logits instead of softmax "
                                                "(the paper's ablation; softmax is better)")
    batch_size: int = Field(512, ge=1)
    decoder: Literal["auto", "dali", "pil"] = Field(
        "auto", description="dali: NVIDIA DALI decodes each shard (cpu, or mixed = nvJPEG on a "
        "GPU); pil: the PIL reference path; auto: dali when installed. A shard DALI cannot "
        "decode (a corrupt record) is rescored with PIL, which counts and skips the record")
    decode_threads: int = Field(2, ge=1, description="DALI CPU threads per worker")
    decode_workers: int = Field(1, ge=0, description="PIL path: processes decoding the next "
                                "shards while the model runs (0: decode in the main process)")
    worker: int | None = Field(None, ge=0, description="this worker's index; default $RANK or 0")
    num_workers: int | None = Field(None, ge=1, description="worker count; default $WORLD_SIZE or 1")
    exclude: str | None = Field(None, description="a dedup output directory: its removed pool "
                                "images get no candidates")
    fail_after_shards: int | None = Field(None, description="testing aid: crash after N shards")


def _forward(model, state, cfg: ScoreConfig):
    """Top-P (scores, classes) of a uint8 batch, both N x P, scores descending; normalised as
    in training, channels-last as ``checkpoint.load_model`` gives; bf16 autocast on a GPU."""
    p = min(cfg.top_p, state["model"]["num_classes"])

    @torch.inference_mode()
    def forward(x: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        x = normalize(x, state["mean"], state["std"])
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=x.is_cuda):
            out = model(x).float()
        out = out if cfg.use_logits else out.softmax(dim=1)  # N x C
        top = out.topk(p, dim=1)
        return top.values.cpu().numpy(), top.indices.cpu().numpy()

    return forward, (np.zeros((0, p), np.float32), np.zeros((0, p), np.int64))


def _excluded(cfg: ScoreConfig) -> set[str]:
    """Pool keys that ``dedup`` removed (``exclude``: its output directory)."""
    if not cfg.exclude:
        return set()
    from semisup_core.dedup.stage import removed_keys
    return removed_keys(cfg.exclude)


def score_shard(uri: str, keys: list[str], outputs, corrupt: list[str], cfg: ScoreConfig,
                num_classes: int, first_id: int, count: int, members: np.ndarray,
                excluded: set[str] = frozenset()) -> tuple[dict, pa.Table]:
    """Write one shard's candidate table (top-P of each image not in ``excluded``), then its
    done marker; returns both. The images' ids are ``first_id + members`` (their positions in
    the shard, ascending); ``count``: the shard's samples in dataset.json, so the shard's ids
    are ``[first_id, first_id + count)``, recorded in the marker."""
    name = shard_name(uri)
    scores, classes = outputs
    members = np.asarray(members, np.int64)
    if len(members) != len(keys) or (len(members) and (members.min() < 0 or members.max() >= count
                                                       or (np.diff(members) <= 0).any())):
        raise DataError(f"{uri}: {len(keys)} images but sample positions that are not ascending "
                        f"in [0, {count}) (does dataset.json's count match the shard?)")
    ids = first_id + members
    if excluded:
        keep = np.array([k not in excluded for k in keys], bool)
        removed = int((~keep).sum())
        keys = [k for k, kept in zip(keys, keep) if kept]
        scores, classes, ids = scores[keep], classes[keep], ids[keep]
    else:
        removed = 0
    n, p = scores.shape
    table = pa.table({"key": np.repeat(np.array(keys, dtype=object), p), "shard": [name] * (n * p),
                      "id": np.repeat(ids, p), "class_id": classes.reshape(-1).astype(np.int32),
                      "score": scores.reshape(-1).astype(np.float32),
                      "p_rank": np.tile(np.arange(p, dtype=np.int8), n)}, schema=CANDIDATES)
    write_table(storage.join(cfg.out, "shards", f"{name}.parquet"), table)
    top1 = np.bincount(classes[:, 0], minlength=num_classes) if n else np.zeros(num_classes, np.int64)
    marker = {"shard": name, "images": n, "first_id": int(first_id), "count": int(count),
              "corrupt": len(corrupt), "corrupt_keys": corrupt[:1000], "deduplicated": removed,
              "lost": int(count) - len(members) - len(corrupt),  # after damage to the tar
              "top1_counts": top1.tolist()}
    storage.write_json(marker_uri(cfg.out, name), marker)
    return marker, table


def worker_partial(cfg: ScoreConfig, tables, num_classes: int) -> TopKPerClass:
    """Per-class top-K of (class, score, image id) over score tables (an iterable of them)."""
    top = TopKPerClass(cfg.partial_k, num_classes)
    for t in tables:
        top.add(t["class_id"].to_numpy(), t["score"].to_numpy(), t["id"].to_numpy())
    return top


def write_partial(cfg: ScoreConfig, worker: int, num_workers: int, top: TopKPerClass) -> None:
    """This worker's partial top-K table, ``out/partials/worker-XXXXX-of-YYYYY.parquet``."""
    res = top.result()
    ids = res["key"] if len(res["key"]) else np.zeros(0, np.int64)  # a worker without shards
    write_table(storage.join(cfg.out, "partials", f"worker-{worker:05d}-of-{num_workers:05d}.parquet"),
                pa.table({"class_id": res["class_id"], "score": res["score"], "id": ids},
                         schema=PARTIAL))


def score(cfg: ScoreConfig) -> dict:
    """Score this worker's shards (skipping finished ones) and write its partial top-K."""
    w, n = worker_split(cfg.worker, cfg.num_workers)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model, state = checkpoint.load_model(cfg.model, device)
    meta = read_meta(cfg.pool)
    if meta.classes != state["classes"] and meta.classes:
        raise DataError(f"class mismatch: pool {cfg.pool} uses {meta.num_classes} classes, "
                        f"model {cfg.model} {len(state['classes'])}")
    uris = shard_uris(cfg.pool, meta)
    place = {u: (f, e["count"]) for u, f, e in zip(uris, first_ids(meta), meta.shards)}
    mine = uris[w::n]
    for name in (shard_name(u) for u in mine):  # shards an earlier run finished are resumed:
        done = marker_uri(cfg.out, name)       # they must carry image ids
        if storage.exists(done) and "first_id" not in storage.read_json(done):
            raise DataError(f"{cfg.out}: shard {name} was scored without image ids (an older "
                            "semisup); score the pool again into a new out")
    excluded = _excluded(cfg)
    config.save(cfg, cfg.out, f"config-worker-{w:05d}.yaml")
    forward, empty = _forward(model, state, cfg)
    loop = ShardLoop(out=cfg.out, channels=state["model"]["in_chans"], forward=forward, empty=empty,
                     batch_size=cfg.batch_size, decoder=cfg.decoder,
                     decode_threads=cfg.decode_threads, decode_workers=cfg.decode_workers,
                     counts={u: e["count"] for u, e in zip(uris, meta.shards)}, device=device,
                     fail_after_shards=cfg.fail_after_shards)
    num_classes = len(state["classes"])
    top = TopKPerClass(cfg.partial_k, num_classes)
    fresh: set[str] = set()

    def write(uri, keys, outputs, corrupt, members):
        marker, table = score_shard(uri, keys, outputs, corrupt, cfg, num_classes, *place[uri],
                                    members=members, excluded=excluded)
        top.add(table["class_id"].to_numpy(), table["score"].to_numpy(), table["id"].to_numpy())
        fresh.add(marker["shard"])
        return marker

    names = loop.run(mine, write, desc=f"score worker {w}/{n}")
    for name in names:  # shards a killed run had finished: read back, only what the top-K needs
        if name not in fresh:
            t = read_table(storage.join(cfg.out, "shards", f"{name}.parquet"),
                           columns=["class_id", "score", "id"])
            top.add(t["class_id"].to_numpy(), t["score"].to_numpy(), t["id"].to_numpy())
    write_partial(cfg, w, n, top)
    markers = [storage.read_json(marker_uri(cfg.out, nm)) for nm in names]
    summary = {"worker": w, "num_workers": n, "shards": len(names),
               "images": sum(m["images"] for m in markers), "corrupt": sum(m["corrupt"] for m in markers),
               "deduplicated": sum(m.get("deduplicated", 0) for m in markers),
               "lost": sum(m.get("lost", 0) for m in markers)}
    log.info("scored %d images in %d shards (%d corrupt, %d removed by dedup, %d lost to damaged "
             "shards)", summary["images"], summary["shards"], summary["corrupt"],
             summary["deduplicated"], summary["lost"])
    if summary["lost"]:
        log.warning("%d images were lost to damaged shards (each marker's \"lost\"; the log "
                    "names the shards)", summary["lost"])
    return summary
