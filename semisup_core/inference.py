"""The shard-inference loop that ``score`` and ``embed`` share.

Every pool shard a worker owns (shards ``i::N``) is decoded (DALI, or the PIL reference
path), run through a model in batches and written by the caller, which writes the shard's
table and then its ``out/shards/<shard>.done.json`` marker. A rerun skips shards that have a
marker, so a killed worker resumes where it stopped; a marker is written only after the
table, so a half-written shard is redone. Corrupt records are counted and skipped: DALI stops
at the first one, so that shard is decoded again by PIL, which skips them one by one.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Callable, Literal, Sequence

import numpy as np
import torch
from tqdm import tqdm

from semisup_core import storage
from semisup_core.data.decode import decode_image
from semisup_core.data.manifest import shard_name  # noqa: F401  (score, embed import it here)
from semisup_core.data.shards import iter_shard
from semisup_core.data.stream import to_chw
from semisup_core.errors import ConfigError, DataError

log = logging.getLogger(__name__)

Decoder = Literal["auto", "dali", "pil"]
# a batch of uint8 N x C x H x W images on the device -> per-image arrays (N x ...)
Forward = Callable[[torch.Tensor], tuple[np.ndarray, ...]]
# (shard uri, keys, per-image arrays, corrupt keys, members) -> the shard's done marker (written
# by it); members[i] is key i's position among the shard's samples (tar order, corrupt ones
# counted), from which ``score`` makes the image ids
Write = Callable[[str, list[str], tuple[np.ndarray, ...], list[str], np.ndarray], dict]


def worker_split(worker: int | None, num_workers: int | None) -> tuple[int, int]:
    """This worker's index and the worker count (default ``$RANK``/``$WORLD_SIZE``)."""
    w = worker if worker is not None else int(os.environ.get("RANK", "0"))
    n = num_workers if num_workers is not None else int(os.environ.get("WORLD_SIZE", "1"))
    if not 0 <= w < n:
        raise ConfigError(f"worker {w} is not in [0, {n})")
    return w, n


def marker_uri(out: str, name: str) -> str:
    return storage.join(out, "shards", f"{name}.done.json")


def dali_available() -> bool:
    try:
        import nvidia.dali  # noqa: F401
    except ImportError:
        return False
    return True


def use_dali(decoder: Decoder) -> bool:
    if decoder == "dali" and not dali_available():
        raise ConfigError("decoder: dali is not installed (pip install nvidia-dali-cuda120); "
                          "use decoder: pil")
    return decoder == "dali" or (decoder == "auto" and dali_available())


def decode_shard(uri: str, channels: int, count: int | None = None
                 ) -> tuple[list[str], torch.Tensor | list, list[str], np.ndarray]:
    """Keys, images (N x C x H x W uint8, stacked when sizes agree), corrupt keys and the
    decoded images' positions among the shard's samples; corrupt images are counted, not
    fatal. With the shard's ``count`` (dataset.json) the images are decoded straight into one
    tensor (no list of N images to stack: half the peak); a size that differs from the first
    image's falls back to a list."""
    keys, corrupt, members = [], [], []
    images: list = []
    block: torch.Tensor | None = None
    for i, sample in enumerate(iter_shard(uri)):
        try:
            img = to_chw(decode_image(sample.image), channels)
        except DataError:
            corrupt.append(sample.key)
            continue
        if count and block is None and not images:
            block = torch.empty((count, *img.shape), dtype=img.dtype)
        if block is not None and (img.shape != block.shape[1:] or len(keys) >= len(block)):
            images, block = list(block[:len(keys)]), None  # sizes vary: a list from here on
        if block is not None:
            block[len(keys)] = img
        else:
            images.append(img)
        keys.append(sample.key)
        members.append(i)
    if corrupt:
        log.warning("%s: skipped %d corrupt image(s): %s", uri, len(corrupt), ", ".join(corrupt[:10]))
    if block is not None:
        images = block[:len(keys)]
    elif images and len({tuple(i.shape) for i in images}) == 1:
        images = torch.stack(images)  # one tensor crosses the worker boundary, not N of them
    return keys, images, corrupt, np.array(members, np.int64)


def _stack(parts: list[tuple[np.ndarray, ...]], empty: tuple[np.ndarray, ...]) -> tuple[np.ndarray, ...]:
    if not parts:
        return empty
    return tuple(np.concatenate([p[i] for p in parts]) for i in range(len(parts[0])))


@dataclass
class ShardLoop:
    """How one worker runs a model over its shards (see the module docstring)."""

    out: str
    channels: int
    forward: Forward
    empty: tuple[np.ndarray, ...]  # what ``forward`` gives for zero images (shapes N=0)
    batch_size: int = 512
    decoder: Decoder = "auto"
    decode_threads: int = 2
    decode_workers: int = 1  # PIL path: DataLoader processes decoding the next shards
    counts: dict | None = None  # shard uri -> samples (dataset.json): decode into one tensor
    device: str = "cpu"
    fail_after_shards: int | None = None

    def run_images(self, images) -> tuple[np.ndarray, ...]:
        """``forward`` over uint8 images (a tensor or a list of C x H x W tensors) in batches."""
        parts = []
        for i in range(0, len(images), self.batch_size):
            batch = images[i:i + self.batch_size]
            batch = batch if isinstance(batch, torch.Tensor) else torch.stack(batch)
            parts.append(self.forward(batch.to(self.device)))
        return _stack(parts, self.empty)

    def _run_dali(self, uri: str) -> tuple[list[str], tuple[np.ndarray, ...]]:
        """Keys and outputs of one shard decoded by DALI (``mixed`` on a GPU, else ``cpu``)."""
        from semisup_core.data.dali_reader import (_READER, _to_host, build_pipeline, sample_key,
                                                   stage_dataset)
        paths, index_paths = stage_dataset([uri])
        pipe = build_pipeline(paths, index_paths=index_paths, labelled=False,
                              channels=self.channels, mean=0.0, std=1.0,
                              device="mixed" if self.device == "cuda" else "cpu",
                              batch_size=self.batch_size, num_threads=self.decode_threads,
                              normalize=False)
        left = pipe.epoch_size(_READER)
        keys, parts = [], []
        while left > 0:
            images, info = pipe.run()
            n = min(left, self.batch_size)
            left -= n
            keys += [sample_key(info[i]) for i in range(n)]
            parts.append(self.forward(_to_host(images, n, as_torch=True).to(self.device)))
        del pipe
        return keys, _stack(parts, self.empty)

    def run(self, uris: Sequence[str], write: Write, desc: str) -> list[str]:
        """Run every shard of ``uris`` that has no done marker; returns all their names."""
        todo = [u for u in uris if not storage.exists(marker_uri(self.out, shard_name(u)))]
        if len(todo) < len(uris):
            log.info("skipping %d finished shard(s)", len(uris) - len(todo))
        dali = use_dali(self.decoder)
        if dali:
            shards = ((uri, None) for uri in todo)
        else:  # decoding the next shard in a DataLoader worker overlaps with inference
            workers = min(self.decode_workers, len(todo))
            loader = torch.utils.data.DataLoader(
                _DecodedShards(todo, self.channels, self.counts or {}), batch_size=None,
                num_workers=workers, prefetch_factor=1 if workers else None)
            shards = ((uri, decoded) for uri, *decoded in loader)
        done = 0
        for uri, decoded in tqdm(shards, total=len(todo), desc=desc, unit="shard"):
            outputs = None
            if dali:
                try:
                    keys, outputs = self._run_dali(uri)
                    corrupt, members = [], np.arange(len(keys), dtype=np.int64)  # all, in order
                except RuntimeError as e:  # DALI stops at the first undecodable record
                    log.warning("%s: DALI failed (%s); redoing it with PIL, which skips corrupt "
                                "records", uri, str(e).strip().splitlines()[0][:200])
                    decoded = decode_shard(uri, self.channels, (self.counts or {}).get(uri))
            if outputs is None:
                keys, images, corrupt, members = decoded
                outputs = self.run_images(images)
            write(uri, list(keys), outputs, list(corrupt), np.asarray(members))
            done += 1
            if self.fail_after_shards is not None and done >= self.fail_after_shards:
                raise RuntimeError(f"injected failure after {done} shard(s)")
        return [shard_name(u) for u in uris]


class _DecodedShards(torch.utils.data.IterableDataset):
    """Decodes whole shards in a DataLoader worker, so decoding the next shard overlaps
    with inference on the current one."""

    def __init__(self, uris: list[str], channels: int, counts: dict):
        super().__init__()
        self.uris, self.channels, self.counts = uris, channels, counts

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        wid, nw = (info.id, info.num_workers) if info else (0, 1)
        for uri in self.uris[wid::nw]:
            yield (uri, *decode_shard(uri, self.channels, self.counts.get(uri)))
