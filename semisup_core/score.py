"""The ``score`` stage: the teacher scores every unlabelled image (Yalniz et al. §3.1).

For each pool shard this worker owns (shards ``i::N``, from the config or from
``RANK``/``WORLD_SIZE``), it writes ``out/shards/<shard>.parquet`` with the top-P
classes of every image (``key, shard, class_id, score, p_rank``) and then a marker
``out/shards/<shard>.done.json`` (counts, corrupt keys, top-1 counts per class). A
rerun skips shards that have a marker, so a killed worker resumes where it stopped.
When all its shards are done the worker writes its partial per-class top-K table,
``out/partials/worker-XXXXX-of-YYYYY.parquet``, which ``select`` merges.
"""

from __future__ import annotations

import logging
import os
import posixpath
from typing import Literal

import numpy as np
import pyarrow as pa
import torch
from pydantic import Field
from tqdm import tqdm

from semisup_core import checkpoint, config, storage
from semisup_core.config import StageConfig
from semisup_core.data.dataset import read_meta, shard_uris
from semisup_core.data.decode import decode_image
from semisup_core.data.shards import iter_shard
from semisup_core.data.stream import to_chw
from semisup_core.errors import ConfigError, DataError
from semisup_core.tables import read_table, write_table
from semisup_core.topk import TopKPerClass
from semisup_core.train.augment import normalize

log = logging.getLogger(__name__)

CANDIDATES = pa.schema([("key", pa.string()), ("shard", pa.string()), ("class_id", pa.int32()),
                        ("score", pa.float32()), ("p_rank", pa.int8())])


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
    worker: int | None = Field(None, ge=0, description="this worker's index; default $RANK or 0")
    num_workers: int | None = Field(None, ge=1, description="worker count; default $WORLD_SIZE or 1")
    fail_after_shards: int | None = Field(None, description="testing aid: crash after N shards")


def _worker(cfg: ScoreConfig) -> tuple[int, int]:
    w = cfg.worker if cfg.worker is not None else int(os.environ.get("RANK", "0"))
    n = cfg.num_workers if cfg.num_workers is not None else int(os.environ.get("WORLD_SIZE", "1"))
    if not 0 <= w < n:
        raise ConfigError(f"worker {w} is not in [0, {n})")
    return w, n


def _shard_name(uri: str) -> str:
    return posixpath.basename(uri.replace("\\", "/")).rsplit(".", 1)[0]


def _decode_shard(uri: str, channels: int) -> tuple[list[str], torch.Tensor | list, list[str]]:
    """Keys, images (N x C x H x W uint8, stacked when sizes agree) and corrupt keys of one
    shard; corrupt images are counted, not fatal."""
    keys, images, corrupt = [], [], []
    for sample in iter_shard(uri):
        try:
            images.append(to_chw(decode_image(sample.image), channels))
            keys.append(sample.key)
        except DataError:
            corrupt.append(sample.key)
    if corrupt:
        log.warning("%s: skipped %d corrupt image(s): %s", uri, len(corrupt), ", ".join(corrupt[:10]))
    if images and len({tuple(i.shape) for i in images}) == 1:
        images = torch.stack(images)  # one tensor crosses the worker boundary, not N of them
    return keys, images, corrupt


@torch.inference_mode()
def _infer(model, x: torch.Tensor, p: int, cfg: ScoreConfig) -> tuple[np.ndarray, np.ndarray]:
    """Top-P of one batch from ``normalize`` (channels-last, as the model from
    ``checkpoint.load_model``); bf16 autocast on a GPU."""
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=x.is_cuda):
        out = model(x).float()
    out = out if cfg.use_logits else out.softmax(dim=1)  # N x C
    top = out.topk(p, dim=1)
    return top.values.cpu().numpy(), top.indices.cpu().numpy()


def _stack(parts: list[tuple[np.ndarray, np.ndarray]], p: int) -> tuple[np.ndarray, np.ndarray]:
    if not parts:
        return np.zeros((0, p), np.float32), np.zeros((0, p), np.int64)
    return np.concatenate([a for a, _ in parts]), np.concatenate([b for _, b in parts])


def _top_p(model, images, state, cfg: ScoreConfig, device) -> tuple[np.ndarray, np.ndarray]:
    """Top-P (scores, classes) per image of uint8 images: both N x P, scores descending."""
    p = min(cfg.top_p, state["model"]["num_classes"])
    parts = []
    for i in range(0, len(images), cfg.batch_size):
        batch = images[i:i + cfg.batch_size]
        batch = batch if isinstance(batch, torch.Tensor) else torch.stack(batch)
        parts.append(_infer(model, normalize(batch.to(device), state["mean"], state["std"]), p, cfg))
    return _stack(parts, p)


def dali_available() -> bool:
    try:
        import nvidia.dali  # noqa: F401
    except ImportError:
        return False
    return True


def _dali_top_p(model, state, uri: str, cfg: ScoreConfig, device: str
                ) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Keys and top-P of one shard decoded by DALI (``mixed`` on a GPU, else ``cpu``)."""
    from semisup_core.data.dali_reader import _READER, _to_host, build_pipeline, sample_key, stage_dataset
    paths, index_paths = stage_dataset([uri])
    pipe = build_pipeline(paths, index_paths=index_paths, labelled=False,
                          channels=state["model"]["in_chans"], mean=state["mean"], std=state["std"],
                          device="mixed" if device == "cuda" else "cpu", batch_size=cfg.batch_size,
                          num_threads=cfg.decode_threads, normalize=False)
    left = pipe.epoch_size(_READER)
    p = min(cfg.top_p, state["model"]["num_classes"])
    keys, parts = [], []
    while left > 0:
        images, info = pipe.run()
        n = min(left, cfg.batch_size)
        left -= n
        keys += [sample_key(info[i]) for i in range(n)]
        x = _to_host(images, n, as_torch=True).to(device)  # uint8: normalised as in the PIL path
        parts.append(_infer(model, normalize(x, state["mean"], state["std"]), p, cfg))
    del pipe
    scores, classes = _stack(parts, p)
    return keys, scores, classes


class _DecodedShards(torch.utils.data.IterableDataset):
    """Decodes whole shards in a DataLoader worker, so decoding the next shard overlaps
    with inference on the current one."""

    def __init__(self, uris: list[str], channels: int):
        super().__init__()
        self.uris, self.channels = uris, channels

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        wid, nw = (info.id, info.num_workers) if info else (0, 1)
        for uri in self.uris[wid::nw]:
            yield (uri, *_decode_shard(uri, self.channels))


def score_shard(model, state, uri: str, decoded, cfg: ScoreConfig, device, top=None) -> dict:
    """Score one shard (decoded by PIL: ``decoded`` = keys, images, corrupt keys; or already
    scored by DALI: ``top`` = keys, scores, classes); write its candidate table, then its
    done marker."""
    name = _shard_name(uri)
    if top is not None:
        (keys, scores, classes), corrupt = top, []
    else:
        keys, images, corrupt = decoded
        scores, classes = _top_p(model, images, state, cfg, device)
    n, p = scores.shape
    table = pa.table({"key": np.repeat(np.array(keys, dtype=object), p), "shard": [name] * (n * p),
                      "class_id": classes.reshape(-1).astype(np.int32),
                      "score": scores.reshape(-1).astype(np.float32),
                      "p_rank": np.tile(np.arange(p, dtype=np.int8), n)}, schema=CANDIDATES)
    write_table(storage.join(cfg.out, "shards", f"{name}.parquet"), table)
    top1 = np.bincount(classes[:, 0], minlength=state["model"]["num_classes"]) if n else \
        np.zeros(state["model"]["num_classes"], np.int64)
    marker = {"shard": name, "images": n, "corrupt": len(corrupt), "corrupt_keys": corrupt[:1000],
              "top1_counts": top1.tolist()}
    storage.write_json(storage.join(cfg.out, "shards", f"{name}.done.json"), marker)
    return marker


def worker_partial(cfg: ScoreConfig, names: list[str], num_classes: int) -> TopKPerClass:
    """Per-class top-K over this worker's finished shards (read back from the store)."""
    top = TopKPerClass(cfg.partial_k, num_classes, payload=("shard",))
    for name in names:
        t = read_table(storage.join(cfg.out, "shards", f"{name}.parquet"))
        top.add(t["class_id"].to_numpy(), t["score"].to_numpy(), t["key"], shard=t["shard"])
    return top


def score(cfg: ScoreConfig) -> dict:
    """Score this worker's shards (skipping finished ones) and write its partial top-K."""
    w, n = _worker(cfg)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model, state = checkpoint.load_model(cfg.model, device)
    meta = read_meta(cfg.pool)
    if meta.classes != state["classes"] and meta.classes:
        raise DataError(f"class mismatch: pool {cfg.pool} uses {meta.num_classes} classes, "
                        f"model {cfg.model} {len(state['classes'])}")
    mine = shard_uris(cfg.pool, meta)[w::n]
    config.save(cfg, cfg.out, f"config-worker-{w:05d}.yaml")
    todo = [u for u in mine
            if not storage.exists(storage.join(cfg.out, "shards", f"{_shard_name(u)}.done.json"))]
    if len(todo) < len(mine):
        log.info("skipping %d already scored shard(s)", len(mine) - len(todo))
    use_dali = cfg.decoder == "dali" or (cfg.decoder == "auto" and dali_available())
    if cfg.decoder == "dali" and not dali_available():
        raise ConfigError("decoder: dali is not installed (pip install nvidia-dali-cuda120); "
                          "use decoder: pil")
    if use_dali:
        shards = ((uri, None, None) for uri in todo)
    else:  # decoding the next shard in a DataLoader worker overlaps with inference
        loader = torch.utils.data.DataLoader(_DecodedShards(todo, state["model"]["in_chans"]),
                                             batch_size=None, num_workers=min(1, len(todo)))
        shards = ((uri, decoded, None) for uri, *decoded in loader)
    done = 0
    for uri, decoded, _ in tqdm(shards, total=len(todo), desc=f"score worker {w}/{n}", unit="shard"):
        top = None
        if use_dali:
            try:
                top = _dali_top_p(model, state, uri, cfg, device)
            except RuntimeError as e:  # DALI stops at the first undecodable record
                log.warning("%s: DALI failed (%s); rescoring with PIL, which skips corrupt records",
                            uri, str(e).strip().splitlines()[0][:200])
                decoded = _decode_shard(uri, state["model"]["in_chans"])
        score_shard(model, state, uri, decoded, cfg, device, top=top)
        done += 1
        if cfg.fail_after_shards is not None and done >= cfg.fail_after_shards:
            raise RuntimeError(f"injected failure after {done} shard(s)")
    names = [_shard_name(u) for u in mine]
    res = worker_partial(cfg, names, len(state["classes"])).result()
    write_table(storage.join(cfg.out, "partials", f"worker-{w:05d}-of-{n:05d}.parquet"),
                 pa.table({"class_id": res["class_id"], "score": res["score"], "key": res["key"],
                           "shard": res["shard"]}))
    markers = [storage.read_json(storage.join(cfg.out, "shards", f"{nm}.done.json")) for nm in names]
    summary = {"worker": w, "num_workers": n, "shards": len(names),
               "images": sum(m["images"] for m in markers), "corrupt": sum(m["corrupt"] for m in markers)}
    log.info("scored %d images in %d shards (%d corrupt)", summary["images"], summary["shards"],
             summary["corrupt"])
    return summary
