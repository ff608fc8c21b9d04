"""Read WebDataset shards with NVIDIA DALI, plus the PIL reference it is tested against.

Pipeline per batch: ``fn.readers.webdataset`` (image + ``.cls``, or image only for
unlabelled pools) -> ``fn.decoders.image`` (``cpu``, or ``mixed`` = nvJPEG on the GPU;
grey output for 1-channel datasets) -> optional ``fn.resize`` ->
``fn.crop_mirror_normalize`` to float32 CHW with ``(x / 255 - mean) / std``.

DALI reads local files only. Shards of a remote dataset (s3://, minio://) are first
staged into a local cache directory (``cache_dir``, default
``${SEMISUP_CACHE:-~/.cache/semisup}/shards``) together with their ``.idx``; a shard
already in the cache is not fetched again, so a rerun or a restarted pod reads from disk.

Workers split the samples with DALI's ``shard_id`` / ``num_shards``: worker ``i`` of
``S`` reads samples ``[N*i//S, N*(i+1)//S)`` of the dataset's N, every epoch
(``stick_to_shard``), so a worker's sample count is known in advance.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
from typing import Iterator, Sequence

import numpy as np

from semisup_core import storage
from semisup_core.data.dataset import DatasetMeta, read_meta, shard_uris
from semisup_core.data.decode import decode_image
from semisup_core.data.shards import Sample, index_uri
from semisup_core.errors import ConfigError, DataError

log = logging.getLogger(__name__)

DEVICES = ("cpu", "mixed", "auto")
_READER = "Reader"


@dataclasses.dataclass
class Batch:
    """images: N x C x H x W float32 (numpy, or torch when ``as_torch``); labels: N int64
    or None for unlabelled shards; keys: the N sample keys."""

    images: object
    labels: np.ndarray | None
    keys: list[str]


def resolve_device(device: str) -> str:
    """"auto" -> "mixed" when torch sees a GPU, else "cpu"."""
    if device not in DEVICES:
        raise ConfigError(f"device must be one of {', '.join(DEVICES)}, got {device!r}")
    if device != "auto":
        return device
    import torch
    return "mixed" if torch.cuda.is_available() else "cpu"


def default_cache_dir() -> str:
    root = os.environ.get("SEMISUP_CACHE") or os.path.expanduser("~/.cache/semisup")
    return os.path.join(root, "shards")


def stage_shards(uris: Sequence[str], cache_dir: str | None = None) -> list[str]:
    """Local paths for ``uris``: local ones as they are, remote ones copied into the cache.

    The cache file name is a hash of the URI plus its basename; copies are atomic
    (``storage.get_file``), so a present file is complete and is reused as is.
    """
    cache_dir = cache_dir or default_cache_dir()
    paths = []
    for uri in uris:
        if storage.is_local(uri):
            paths.append(storage.local_path(uri))
            continue
        digest = hashlib.sha1(uri.encode()).hexdigest()[:16]
        path = os.path.join(cache_dir, f"{digest}-{os.path.basename(uri)}")
        if not os.path.isfile(path):
            log.debug("staging %s -> %s", uri, path)
            storage.get_file(uri, path)
        paths.append(path)
    return paths


def stage_dataset(shards: Sequence[str], cache_dir: str | None = None
                  ) -> tuple[list[str], list[str] | None]:
    """Stage shards and, when every shard has one, their DALI ``.idx`` indexes.

    Returns ``(tar_paths, idx_paths or None)``; without indexes DALI scans the tars.
    """
    indexes = [index_uri(u) for u in shards]
    if not all(storage.exists(u) for u in indexes):
        log.info("some shards have no .idx index; DALI will scan the tar headers")
        return stage_shards(shards, cache_dir), None
    return stage_shards(shards, cache_dir), stage_shards(indexes, cache_dir)


def _per_channel(values, channels: int, what: str) -> list[float]:
    values = [float(v) for v in np.atleast_1d(values)]
    if len(values) == 1:
        values *= channels
    if len(values) != channels:
        raise ConfigError(f"{what} needs 1 or {channels} values, got {len(values)}")
    return values


def build_pipeline(paths: list[str], *, labelled: bool, channels: int, mean, std,
                   index_paths: list[str] | None = None,
                   device: str = "cpu", batch_size: int = 256, num_threads: int = 4,
                   shard_id: int = 0, num_shards: int = 1, shuffle: bool = False,
                   seed: int = 0, size: tuple[int, int] | None = None, normalize: bool = True):
    """The DALI pipeline (built); outputs ``(images N x C x H x W float, cls bytes?, source_info)``
    (``normalize=False``: uint8 images, for callers that normalise as the PIL path does).

    ``mean``/``std`` are per channel in [0, 1] units, as in torchvision. Grey PNGs match
    the PIL reference exactly; JPEGs decoded by nvJPEG (``mixed``) and colour images
    converted to grey may differ from PIL by a grey level.
    """
    from nvidia.dali import fn, pipeline_def, types

    device = resolve_device(device)
    mean = [m * 255.0 for m in _per_channel(mean, channels, "mean")]
    std = [s * 255.0 for s in _per_channel(std, channels, "std")]
    device_id = None
    if device == "mixed":
        import torch
        device_id = torch.cuda.current_device()

    @pipeline_def(batch_size=batch_size, num_threads=num_threads, device_id=device_id,
                  seed=seed, prefetch_queue_depth=2)
    def pipe():
        outs = fn.readers.webdataset(
            paths=paths, index_paths=index_paths,
            ext=["png;jpg", "cls"] if labelled else ["png;jpg"],
            missing_component_behavior="error", name=_READER, shard_id=shard_id,
            num_shards=num_shards, stick_to_shard=True, pad_last_batch=True,
            random_shuffle=shuffle, initial_fill=min(4096, 64 * batch_size))
        encoded = outs[0] if labelled else outs
        info = fn.get_property(encoded, key="source_info")  # "<tar>:<offset>:<key>.<ext>"
        images = fn.decoders.image(encoded, device=device,
                                   output_type=types.GRAY if channels == 1 else types.RGB)
        if size is not None:
            images = fn.resize(images, resize_y=size[0], resize_x=size[1])
        if normalize:
            images = fn.crop_mirror_normalize(images, dtype=types.FLOAT, output_layout="CHW",
                                              mean=mean, std=std)
        else:
            images = fn.transpose(images, perm=[2, 0, 1])  # HWC -> CHW, still uint8
        return (images, outs[1], info) if labelled else (images, info)

    p = pipe()
    p.build()
    return p


def shard_size(total: int, shard_id: int, num_shards: int) -> int:
    """Samples DALI gives worker ``shard_id`` of ``num_shards`` out of ``total``."""
    return total * (shard_id + 1) // num_shards - total * shard_id // num_shards


def _text(tensor) -> str:
    return np.asarray(tensor).tobytes().decode()


def sample_key(source_info) -> str:
    """The sample key from DALI's ``source_info``: ``"<tar>:<offset>:<dir/>key.ext"`` -> key."""
    return _text(source_info).rsplit(":", 1)[-1].rsplit("/", 1)[-1].split(".", 1)[0]


def _to_host(tl, n: int, as_torch: bool):
    """First ``n`` samples of a TensorList as one N x C x H x W array / tensor."""
    if not tl.is_dense_tensor():
        raise DataError("images in a batch differ in size; pass size=(H, W) to resize them")
    if as_torch and type(tl).__name__ == "TensorListGPU":
        # copy out: DALI recycles its output buffers on the next run(), so no zero-copy view
        import torch
        from nvidia.dali.plugin.pytorch import feed_ndarray
        dense = tl.as_tensor()
        dtype = torch.uint8 if "UINT8" in str(dense.dtype) else torch.float32
        out = torch.empty(dense.shape(), dtype=dtype, device=torch.cuda.current_device())
        feed_ndarray(dense, out, cuda_stream=torch.cuda.current_stream())
        return out[:n]
    arr = (tl.as_cpu() if hasattr(tl, "as_cpu") else tl).as_array()[:n]
    if as_torch:
        import torch
        return torch.from_numpy(arr)
    return arr


class DaliReader:
    """Iterate over one worker's part of a dataset with DALI, one epoch per ``iter()``.

    Each epoch yields ``Batch``es covering exactly this worker's samples once (the
    last batch may be short). ``len(reader)`` is that sample count.
    """

    def __init__(self, dataset_uri: str, *, mean=0.5, std=0.5, batch_size: int = 256,
                 device: str = "auto", shard_id: int = 0, num_shards: int = 1,
                 shuffle: bool = False, seed: int = 0, num_threads: int = 4,
                 size: tuple[int, int] | None = None, cache_dir: str | None = None,
                 as_torch: bool = False, meta: DatasetMeta | None = None):
        if not 0 <= shard_id < num_shards:
            raise ConfigError(f"shard_id must be in [0, {num_shards}), got {shard_id}")
        self.meta = meta or read_meta(dataset_uri)
        self.batch_size, self.as_torch = batch_size, as_torch
        self.device = resolve_device(device)
        self.num_samples = shard_size(self.meta.num_samples, shard_id, num_shards)
        paths, index_paths = stage_dataset(shard_uris(dataset_uri, self.meta), cache_dir)
        self.pipe = build_pipeline(
            paths, index_paths=index_paths, labelled=self.meta.labelled,
            channels=self.meta.channels, mean=mean, std=std, device=self.device,
            batch_size=batch_size, num_threads=num_threads, shard_id=shard_id, num_shards=num_shards, shuffle=shuffle, seed=seed, size=size)

    def __len__(self) -> int:
        return self.num_samples

    def __iter__(self) -> Iterator[Batch]:
        left = self.num_samples
        while left > 0:
            outs = self.pipe.run()
            n = min(left, self.batch_size)
            left -= n
            info = outs[-1]
            keys = [sample_key(info[i]) for i in range(n)]
            labels = None
            if self.meta.labelled:
                labels = np.array([int(_text(outs[1][i])) for i in range(n)], dtype=np.int64)
            yield Batch(_to_host(outs[0], n, self.as_torch), labels, keys)


def iter_dali(dataset_uri: str, **kw) -> Iterator[Batch]:
    """One pass over a dataset with DALI; keyword arguments as for ``DaliReader``."""
    return iter(DaliReader(dataset_uri, **kw))


def reference_batch(samples: Sequence[Sample], mean=0.5, std=0.5,
                    channels: int | None = None) -> np.ndarray:
    """The PIL/numpy reference of the DALI pipeline (without resize).

    Returns N x C x H x W float32 ``(x / 255 - mean) / std``; all images must share a size.
    """
    arrays = [decode_image(s.image, channels) for s in samples]  # each H x W x C uint8
    if len({a.shape for a in arrays}) > 1:
        raise DataError("reference_batch needs images of one size")
    x = np.stack(arrays).astype(np.float32).transpose(0, 3, 1, 2)  # N x C x H x W
    c = x.shape[1]
    m = np.asarray(_per_channel(mean, c, "mean"), np.float32).reshape(1, c, 1, 1)
    s = np.asarray(_per_channel(std, c, "std"), np.float32).reshape(1, c, 1, 1)
    return (x / np.float32(255.0) - m) / s
