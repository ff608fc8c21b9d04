"""The shard-inference loop that ``score`` and ``embed`` share.

Every pool shard a worker owns (shards ``i::N``) is decoded (DALI, or the PIL reference
path), run through a model in batches and written by the caller, which writes the shard's
table and then its ``out/shards/<shard>.done.json`` marker. A rerun skips shards that have a
marker, so a killed worker resumes where it stopped; a marker is written only after the
table, so a half-written shard is redone. Corrupt records are counted and skipped: DALI stops
at the first one, so that shard is decoded again by PIL, which skips them one by one.

Damage is counted, never fatal to the other shards: an undecodable image is skipped with its
key in the marker; a shard whose tar is damaged (truncated mid-member, zero bytes, no
members) keeps the images read before the damage and the marker records the rest as
``lost``; on the CPU, DALI decodes in a worker process, so a native crash of its decoder
(some corrupt PNGs make it segfault) costs that shard a PIL redo, not the task. On a GPU
(``mixed``) DALI decodes in this process: a crash there kills the task, but each shard's
decoding is announced first (``<shard>.dali-attempt``), so the retry finds the shard the
attempt died on and decodes it with PIL instead of crashing again. A model or
device failure (inference) is never taken for a decoding one: it fails the task. A shard
that dataset.json lists but the store lacks fails the task before anything is scored.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import shutil
import tempfile
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


def attempt_uri(out: str, name: str) -> str:
    """Written just before DALI decodes a shard in this process, removed once the shard is
    decoded (or, when PIL redoes the shard, once it is written): one left behind names the
    shard a killed attempt was decoding."""
    return storage.join(out, "shards", f"{name}.dali-attempt")


def dali_in_process(device: str) -> bool:
    """Whether DALI decodes in the task's own process: on a GPU (``mixed``: its output stays
    on the device), not on the CPU (a child process)."""
    return device == "cuda"


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
    for i, sample in enumerate(_readable(uri)):
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


def _readable(uri: str):
    """The samples of shard ``uri`` up to any damage to the tar (logged: the shard's marker
    counts the rest as lost)."""
    samples, n = iter_shard(uri), 0
    while True:
        try:
            sample = next(samples)
        except StopIteration:
            return
        except DataError as err:
            log.warning("%s: damaged after %d sample(s), the rest is lost: %s", uri, n, err)
            return
        n += 1
        yield sample


def dali_decode(uri: str, channels: int, batch_size: int, threads: int, device: str = "cpu"
                ) -> tuple[list[str], torch.Tensor]:
    """Keys and uint8 images (N x C x H x W, on ``device``) of one whole shard, decoded by
    DALI (``mixed`` on a GPU, else ``cpu``). Raises RuntimeError where DALI stops (at the first
    undecodable record)."""
    from semisup_core.data.dali_reader import (_READER, _to_host, build_pipeline, sample_key,
                                               stage_dataset)
    paths, index_paths = stage_dataset([uri])
    pipe = build_pipeline(paths, index_paths=index_paths, labelled=False, channels=channels,
                          mean=0.0, std=1.0, device="mixed" if device == "cuda" else "cpu",
                          batch_size=batch_size, num_threads=threads, normalize=False)
    left = pipe.epoch_size(_READER)
    keys, parts = [], []
    try:
        while left > 0:
            images, info = pipe.run()
            n = min(left, batch_size)
            left -= n
            keys += [sample_key(info[i]) for i in range(n)]
            part = _to_host(images, n, as_torch=True)  # CPU: a copy, DALI reuses its buffers
            parts.append(part if device == "cuda" else part.clone())
    finally:
        del pipe
    if not parts:
        raise RuntimeError("DALI read no samples")
    return keys, torch.cat(parts)


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

    def _dali_shards(self, todo: list[str]):
        """(uri, (keys, images) or None) per shard: DALI's decoding of it, or None where DALI
        stopped (a corrupt record) or crashed. On the CPU DALI runs in a worker process (a
        segfault in its decoder kills the worker: that shard is reported as failed and a new
        worker takes the rest); on a GPU (``mixed``) in this process, each shard announced by
        its attempt marker (``attempt_uri``): a shard an earlier attempt died on goes to PIL."""
        if dali_in_process(self.device):
            for uri in todo:
                attempt = attempt_uri(self.out, shard_name(uri))
                if storage.exists(attempt):
                    self._dali_failed(uri, "an earlier attempt died while DALI decoded this "
                                           "shard (a crash in the decoder)")
                    yield uri, None
                    continue
                storage.put_bytes(attempt, b"")
                try:
                    decoded = dali_decode(uri, self.channels, self.batch_size,
                                          self.decode_threads, self.device)
                except RuntimeError as e:  # DALI stops at the first undecodable record
                    self._dali_failed(uri, e)
                    decoded = None
                else:  # decoded: a crash from here on (inference, a preemption) is not DALI's
                    storage.delete(attempt)
                yield uri, decoded
            return
        # not a DataLoader: its SIGCHLD handler raises a worker's death inside whatever this
        # process runs at that moment (the model), where it cannot be told from a model error
        ctx = multiprocessing.get_context("fork")
        left = list(todo)
        while left:
            # a pipe, not a Queue: a Queue's feeder thread dies with the process and loses the
            # message of a shard decoded just before a crash; ``ahead`` bounds the prefetch
            receive, send = ctx.Pipe(duplex=False)
            ahead = ctx.Semaphore(2)  # the shard being inferred + one decoded ahead
            spool = tempfile.mkdtemp(prefix="semisup-dali-")
            proc = ctx.Process(target=_dali_worker, daemon=True, args=(
                left, self.channels, self.batch_size, self.decode_threads, send, ahead, spool))
            proc.start()
            send.close()  # the child's end: EOF here once the child is gone
            got = 0
            try:
                while got < len(left):
                    try:
                        uri, path, error = receive.recv()
                    except EOFError:
                        break  # it died (a native crash) while decoding left[got]
                    ahead.release()
                    got += 1
                    if error:
                        self._dali_failed(uri, error)
                    yield uri, path and _load_spooled(path)
            finally:  # also when the caller stops early
                if proc.is_alive() and got < len(left):
                    proc.kill()
                proc.join()
                receive.close()
                shutil.rmtree(spool, ignore_errors=True)
            if got < len(left):
                self._dali_failed(left[got], f"the decoding process died with exit code "
                                             f"{proc.exitcode} (a crash in the decoder)")
                yield left[got], None
                got += 1
            left = left[got:]

    @staticmethod
    def _dali_failed(uri: str, err) -> None:
        log.warning("%s: DALI failed (%s); redoing it with PIL, which skips corrupt records",
                    uri, str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__)

    def run(self, uris: Sequence[str], write: Write, desc: str) -> list[str]:
        """Run every shard of ``uris`` that has no done marker; returns all their names."""
        todo = [u for u in uris if not storage.exists(marker_uri(self.out, shard_name(u)))]
        if len(todo) < len(uris):
            log.info("skipping %d finished shard(s)", len(uris) - len(todo))
        missing = [u for u in todo if not storage.exists(u)]
        if missing:
            raise DataError(f"{len(missing)} shard(s) listed in dataset.json are missing from "
                            f"the store, e.g. {missing[0]}")
        if use_dali(self.decoder):
            shards = ((uri, None if d is None else (*d, [], np.arange(len(d[0]), dtype=np.int64)))
                      for uri, d in self._dali_shards(todo))
        else:  # decoding the next shard in a DataLoader worker overlaps with inference
            workers = min(self.decode_workers, len(todo))
            loader = torch.utils.data.DataLoader(
                _DecodedShards(todo, self.channels, self.counts or {}), batch_size=None,
                num_workers=workers, prefetch_factor=1 if workers else None)
            shards = ((uri, decoded) for uri, *decoded in loader)
        done = 0
        for uri, decoded in tqdm(shards, total=len(todo), desc=desc, unit="shard"):
            redo = decoded is None and use_dali(self.decoder)
            if decoded is None:  # DALI failed on it: PIL, which counts and skips corrupt images
                decoded = decode_shard(uri, self.channels, (self.counts or {}).get(uri))
            keys, images, corrupt, members = decoded
            outputs = self.run_images(images)  # outside any catch: a model error fails the task
            write(uri, list(keys), outputs, list(corrupt), np.asarray(members))
            if redo and dali_in_process(self.device):  # the attempt marker, after the shard's
                storage.delete(attempt_uri(self.out, shard_name(uri)))
            done += 1
            if self.fail_after_shards is not None and done >= self.fail_after_shards:
                raise RuntimeError(f"injected failure after {done} shard(s)")
        return [shard_name(u) for u in uris]


def _dali_worker(uris: list[str], channels: int, batch_size: int, threads: int, send, ahead,
                 spool: str) -> None:
    """DALI decoding of whole shards in a child process, in order: each shard's keys and
    images go to a file in ``spool`` and only a short message (uri, file or None, DALI's
    error or None) through ``send``, written before the next shard starts: a pipe write under
    PIPE_BUF is atomic, so a crash never leaves half a message that the parent would wait on
    for ever, nor loses the message of a shard already decoded."""
    torch.set_num_threads(1)
    for i, uri in enumerate(uris):
        ahead.acquire()
        try:
            keys, images = dali_decode(uri, channels, batch_size, threads)
        except RuntimeError as e:
            send.send((uri, None, (str(e).strip() or type(e).__name__)[:500]))
            continue
        path = os.path.join(spool, f"{i}.npz")
        np.savez(path + ".tmp.npz", keys=np.array(keys), images=images.numpy())
        os.replace(path + ".tmp.npz", path)
        send.send((uri, path, None))


def _load_spooled(path: str) -> tuple[list[str], torch.Tensor]:
    with np.load(path) as f:
        keys, images = f["keys"].tolist(), torch.from_numpy(f["images"])
    os.unlink(path)
    return keys, images


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
