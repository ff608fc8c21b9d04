"""The one training loop every training stage uses.

SGD + Nesterov or LARS, warm-up then cosine/step decay, LR scaled with the global batch, an
objective per run (``objective.py``: supervised cross-entropy, contrastive, LLP,
distillation), AMP on GPU,
DDP under torchrun (gloo on CPU, NCCL on GPU), checkpoints to the store every N steps, and
exact resume from the newest one: the data order and the augmentation of step ``s`` depend
only on ``(seed, s)``, so a run that crashed and resumed ends with the same weights as one
that did not.
"""

from __future__ import annotations

import logging
import math
import os
import time
from contextlib import nullcontext
from dataclasses import dataclass

import torch
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader
from tqdm import tqdm

from semisup_core import checkpoint, config, storage
from semisup_core.data.dataset import read_meta, require_same_classes, shard_uris
from semisup_core.data.stream import ShardStream, decode_shards
from semisup_core.errors import ConfigError
from semisup_core.models import create_model
from semisup_core.models.heads import strip_wrapper
from semisup_core.train import augment, kernels
from semisup_core.train.config import TrainConfig
from semisup_core.train.distributed import (DistInfo, all_gather_with_grad, all_reduce_mean,
                                             barrier, cleanup, init_distributed)
from semisup_core.train.objective import OBJECTIVES, Objective
from semisup_core.train.schedule import lr_factor, scaled_lr
from semisup_core.watchdog import Watchdog

log = logging.getLogger(__name__)


class InjectedFailure(RuntimeError):
    """Raised by ``fail_at_step`` to simulate a crashed pod."""


@dataclass(frozen=True)
class TrainSet:
    """One or several labelled datasets with the same classes, read as one."""

    classes: list[str]
    channels: int
    num_samples: int
    shards: list[str]
    height: int | None
    width: int | None
    labelled: int = 0  # datasets with labels among them

    @property
    def num_classes(self) -> int:
        return len(self.classes)


def training_set(train: str | list[str], need_labels: bool = True) -> TrainSet:
    """Read and check the ``dataset.json`` of every training dataset."""
    uris = [train] if isinstance(train, str) else list(train)
    if not uris:
        raise ConfigError("data.train is an empty list")
    metas = [read_meta(u) for u in uris]
    for uri, meta in zip(uris, metas):
        if need_labels and not meta.labelled:
            raise ConfigError(f"data.train {uri} is unlabelled; the supervised objective needs "
                              "labels (objective contrastive, llp or distill trains without)")
        require_same_classes(metas[0], meta)
        if meta.channels != metas[0].channels:
            raise ConfigError(f"data.train {uri} has {meta.channels} channels, "
                              f"{uris[0]} has {metas[0].channels}")
    first = metas[0]
    return TrainSet(first.classes, first.channels, sum(m.num_samples for m in metas),
                    [s for u, m in zip(uris, metas) for s in shard_uris(u, m)], first.height,
                    first.width, sum(bool(m.labelled) for m in metas))


def _plan(cfg: TrainConfig, meta: TrainSet, world: int) -> tuple[int, int, int]:
    """(local batch, steps per epoch, total steps)."""
    if cfg.batch_size % world:
        raise ConfigError(f"batch_size {cfg.batch_size} is not divisible by {world} ranks")
    steps_per_epoch = meta.num_samples // cfg.batch_size
    if steps_per_epoch == 0:
        raise ConfigError(f"batch_size {cfg.batch_size} exceeds the {meta.num_samples} "
                          f"training samples in {cfg.data.train}")
    return cfg.batch_size // world, steps_per_epoch, math.ceil(cfg.epochs * steps_per_epoch)


def build_model(cfg: TrainConfig, meta: TrainSet, dist: DistInfo,
                objective: Objective) -> torch.nn.Module:
    """The model as training calls it: on its device and layout, wrapped by its objective
    (``objective.wrap``), under DDP when there are ranks."""
    kwargs = objective.model_kwargs()
    try:
        model = create_model(cfg.model, objective.head_classes(), meta.channels, **kwargs)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"model {cfg.model} with model_kwargs {kwargs}: {err}") from None
    if cfg.init_from:
        _init_from(model, cfg.init_from)
    if cfg.zero_init_head:  # fine-tuning starts from a zero classifier (SimCLRv2's choice)
        torch.nn.init.zeros_(model.fc.weight)
        torch.nn.init.zeros_(model.fc.bias)
    model = objective.wrap(model)
    fmt = kernels.memory_format(cfg.memory_format, dist.device)
    if cfg.sync_bn and dist.world_size > 1:
        if dist.device.type != "cuda":
            raise ConfigError("sync_bn needs GPUs (torch's SyncBatchNorm has no CPU kernel); "
                              "set sync_bn=false on CPU")
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    # channels-last on GPU; NCHW on CPU, where oneDNN's channels-last kernels crash (kernels.py)
    model = model.to(dist.device, memory_format=fmt)
    if dist.world_size > 1:
        model = DDP(model, device_ids=[dist.local_rank] if dist.device.type == "cuda" else None)
    return model


def _init_from(model: torch.nn.Module, src: str) -> None:
    """Start from another run's weights; a head of another shape is re-initialised."""
    weights = checkpoint.load_weights(storage.join(src, "model.safetensors"))
    own = model.state_dict()
    weights = strip_wrapper(weights, own)  # a pre-trained projection head's layers, unused
    keep = {k: v for k, v in weights.items() if k in own and own[k].shape == v.shape}
    dropped = sorted(set(own) - set(keep))
    # only the classifier (weight + bias) may differ: anything else means another architecture
    # whose weights would silently not load
    if len(dropped) > 2 or any(k not in weights for k in own):
        raise ConfigError(f"init_from {src}: its weights do not fit this model ({len(dropped)} of "
                          f"{len(own)} tensors differ, e.g. {dropped[0]}); use the same model and "
                          "model_kwargs as the run that produced it")
    model.load_state_dict(keep, strict=False)
    log.info("initialised from %s (%d tensors; fresh: %s)", src, len(keep), dropped or "none")


def build_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """SGD with Nesterov momentum, or LARS (timm's ``Lars``, SimCLR's large-batch optimiser);
    no weight decay on biases and BN parameters, and under LARS no trust ratio for them either
    (SimCLR excludes both from adaptation), while the weights always adapt (also at
    weight_decay 0, as in fine-tuning: timm adapts only decayed groups unless told)."""
    trained = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in trained if p.ndim > 1]
    no_decay = [p for p in trained if p.ndim <= 1]
    o, lr = cfg.optim, scaled_lr(cfg.optim, cfg.batch_size)
    if o.optimizer == "lars":
        from timm.optim import Lars
        return Lars([{"params": decay, "weight_decay": o.weight_decay, "always_adapt": True},
                     {"params": no_decay, "weight_decay": 0.0, "always_adapt": False}],
                    lr=lr, momentum=o.momentum, nesterov=False, trust_coeff=o.trust_coeff)
    return torch.optim.SGD([{"params": decay, "weight_decay": o.weight_decay},
                            {"params": no_decay, "weight_decay": 0.0}],
                           lr=lr, momentum=o.momentum, nesterov=o.nesterov)


def _autocast(cfg: TrainConfig, device: torch.device):
    if device.type != "cuda" or cfg.amp == "off":
        return nullcontext()
    dtype = torch.float16 if cfg.amp == "fp16" else torch.bfloat16
    return torch.autocast("cuda", dtype=dtype)


SMALL_EPOCH = 20  # steps per epoch below which the data loads in the training process


RECORD_OVERHEAD = 2048  # bytes a decoded sample holds besides its pixels (measured: ~1.8 KiB)


def decoded_size_mb(meta: TrainSet) -> float | None:
    """MiB the decoded training set takes in memory; None when image sizes vary."""
    if not meta.height or not meta.width:
        return None
    per_sample = meta.channels * meta.height * meta.width + RECORD_OVERHEAD
    return meta.num_samples * per_sample / 2**20


def _cache(cfg: TrainConfig, meta: TrainSet, watchdog: Watchdog) -> dict | None:
    """The decoded training set when it fits in ``data.cache_mb`` (see ``decode_shards``)."""
    size = decoded_size_mb(meta)
    if size is None or size > cfg.data.cache_mb:
        return None
    t0 = time.time()
    cache = decode_shards(meta.shards, meta.channels, progress=lambda i: watchdog.beat(
        f"decoding shard {i} of {len(meta.shards)} into memory"), num_classes=meta.num_classes or None)
    log.info("training set decoded into memory once (%d images, %.1f MiB, %.1f s)",
             meta.num_samples, size, time.time() - t0)
    return cache


def _loader(cfg: TrainConfig, meta: TrainSet, dist: DistInfo, local_batch: int,
            steps: int, epoch: int, cache: dict | None = None) -> DataLoader:
    stream = ShardStream(meta.shards, local_batch=local_batch, steps=steps, rank=dist.rank,
                         world_size=dist.world_size, seed=cfg.seed, shuffle=True,
                         shuffle_buffer=cfg.data.shuffle_buffer, split=cfg.data.split,
                         channels=meta.channels, cache=cache, num_classes=meta.num_classes or None)
    stream.set_epoch(epoch)
    # a worker process starts anew every epoch (fork, shards reopened, shuffle buffer refilled:
    # ~25 ms a step over the demo's 7-step epochs); under SMALL_EPOCH steps, or when the data
    # is decoded in memory already (a worker would only stack tensors), load in-process.
    # The batches are the same either way (the order depends on seed and epoch only).
    workers = cfg.data.num_workers if steps >= SMALL_EPOCH and cache is None else 0
    return DataLoader(stream, batch_size=local_batch, num_workers=workers,
                      pin_memory=dist.device.type == "cuda", drop_last=False)


def _model_spec(cfg: TrainConfig, meta: TrainSet, objective: Objective) -> dict:
    return {"model": {"name": cfg.model, "num_classes": objective.head_classes(),
                      "in_chans": meta.channels, "kwargs": objective.model_kwargs()},
            "classes": meta.classes, "mean": cfg.data.mean, "std": cfg.data.std,
            "image_size": [meta.height, meta.width]}


# fields that may change between a run and its resumption without changing its result
_RESUMABLE = {"fail_at_step", "threads", "checkpoint", "amp", "check_kernels", "stall_timeout_s"}
_RESUMABLE_DATA = ("num_workers", "cache_mb")  # how the data is read, not what


def _check_same_run(cfg: TrainConfig) -> None:
    """Refuse to resume (or overwrite) a run in ``out`` that was started with another config."""
    uri = storage.join(cfg.out, "config.yaml")
    if not storage.exists(uri):
        return
    old = {k: v for k, v in config.read_yaml(uri).items() if k not in _RESUMABLE}
    new = {k: v for k, v in cfg.model_dump(mode="json").items() if k not in _RESUMABLE}
    for key in _RESUMABLE_DATA:
        old.get("data", {}).pop(key, None)
        new.get("data", {}).pop(key, None)
    diff = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    if diff:
        raise ConfigError(f"{cfg.out} holds a run with a different config ({', '.join(diff)} "
                          f"differ): use another out or delete it")


def _own_window(saved, dist: DistInfo) -> tuple[float, int]:
    """This rank's loss window from a checkpoint: ``[sum, n]`` (one process, or a checkpoint
    before the windows were kept per rank) or one ``[sum, n]`` per rank (the rank's own; the
    ranks' mean on another number of ranks, which gives the same history entry)."""
    if not saved or not isinstance(saved[0], (list, tuple)):
        return tuple(saved) if saved else (0.0, 0)
    if len(saved) == dist.world_size:
        return tuple(saved[dist.rank])
    return (sum(s for s, _ in saved) / len(saved), saved[0][1])


class Trainer:
    """Holds the state of one run; ``run()`` trains to the end and returns metrics."""

    def __init__(self, cfg: TrainConfig):
        self.cfg, self.dist = cfg, init_distributed()
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", self.dist.world_size))
        torch.set_num_threads(cfg.threads or max(1, (os.cpu_count() or 1) // local_world))
        torch.manual_seed(cfg.seed)  # same initial weights on every rank
        self.meta = training_set(cfg.data.train, OBJECTIVES[cfg.objective].needs_labels)
        self.local_batch, self.steps_per_epoch, self.total_steps = _plan(
            cfg, self.meta, self.dist.world_size)
        self.memory_format = kernels.memory_format(cfg.memory_format, self.dist.device)
        self.objective = OBJECTIVES[cfg.objective](cfg, self.meta, self.dist)
        self.objective.steps_per_epoch = self.steps_per_epoch
        self.model = build_model(cfg, self.meta, self.dist, self.objective)
        self.optimizer = build_optimizer(self.model, cfg)
        self.peak_lr = scaled_lr(cfg.optim, cfg.batch_size)
        self.scaler = torch.amp.GradScaler("cuda", enabled=(
            self.dist.device.type == "cuda" and cfg.amp == "fp16"))
        self.step, self.history, self._checked, self.cache = 0, [], False, None
        self._saved = None  # the step of the newest checkpoint
        self._window = (0.0, 0)  # the loss summed over the steps since the last history entry
        self.beat = lambda msg: None  # the watchdog's, while run() runs
        _check_same_run(cfg)
        if cfg.checkpoint.resume:
            self._resume()

    def _resume(self) -> None:
        found = checkpoint.latest(self.cfg.out)
        if found:
            state = checkpoint.restore(found[1], self.model, self.optimizer)
            self.objective.load_checkpoint(found[1])
            self.step, self.history = state["step"], state.get("history", [])
            self._saved = self.step
            self._window = _own_window(state.get("loss_window", (0.0, 0)), self.dist)
            log.info("resumed from %s at step %d", found[1], self.step)

    def _train_step(self, images: torch.Tensor, labels: torch.Tensor,
                    keys: list[str] | None = None) -> torch.Tensor:
        cfg, dev = self.cfg, self.dist.device
        for group in self.optimizer.param_groups:
            group["lr"] = self.peak_lr * lr_factor(
                cfg.optim, self.step, self.total_steps, self.steps_per_epoch)
        gen = augment.step_generator(cfg.seed, self.step)
        images, offset = images.to(dev, non_blocking=True), self.dist.rank * self.local_batch
        x = augment.to_layout(self.objective.inputs(images, gen, offset, self.memory_format),
                              self.memory_format)
        labels = labels.to(dev)
        if not self._checked:  # the first batch, exactly as training sees it (layout included)
            self._check_kernels(x, labels.clamp_min(0))
        torch.manual_seed(cfg.seed * 7919 + self.step * 31 + self.dist.rank)  # dropout
        with _autocast(cfg, dev):
            loss = self.objective.loss(self.model, x, labels, keys, self.step)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.objective.after_step()  # e.g. LLP's bank and labels, after the step
        return loss.detach()

    def _check_kernels(self, x: torch.Tensor, labels: torch.Tensor) -> None:
        """On CPU: this model's gradients on (up to 8 of) this batch against float64."""
        self._checked = True
        if self.dist.device.type == "cpu" and self.cfg.check_kernels:
            kernels.check_gradients(self._exported(), x[:8], labels[:8])

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """LLP's embedding of a uint8 batch as inference sees it (no augmentation)."""
        cfg, dev = self.cfg, self.dist.device
        x = augment.normalize(images.to(dev), cfg.data.mean, cfg.data.std, self.memory_format)
        return self.model(augment.to_layout(x, self.memory_format))[0]

    def _exported(self) -> torch.nn.Module:
        """The registry model the final model.safetensors holds (without the objective's heads,
        which its checkpoints keep)."""
        return self.objective.exported(checkpoint.unwrap(self.model))

    def _after_step(self, bar) -> None:
        every = max(1, min(50, self.steps_per_epoch))
        if self.step % every == 0 or self.step == self.total_steps:
            loss_sum, n = self._window
            loss = all_reduce_mean(loss_sum / n).item()
            # a new window, before any checkpoint of this step: a resume continues it
            self._window = (torch.zeros((), device=self.dist.device), 0)
            self.history.append({"step": self.step, "epoch": round(self.step / self.steps_per_epoch, 3),
                                 "loss": round(loss, 5), "lr": self.optimizer.param_groups[0]["lr"],
                                 **{k: round(v, 4) for k, v in self.objective.stats.items()}})
            if bar is not None:
                bar.set_postfix(loss=f"{loss:.4f}")
        ended = self.step % self.steps_per_epoch == 0 or self.step == self.total_steps
        if ended:  # what the objective writes per epoch (LLP's round of pseudo-labels) and
            # the snapshot, before any checkpoint of this step: a run killed in between redoes
            # them from the previous checkpoint, never skips them
            epoch = math.ceil(self.step / self.steps_per_epoch)
            self.objective.end_epoch(epoch - 1, self.cfg.out)
            every = self.cfg.snapshot_every_epochs
            if every and self.dist.is_main and self.step % self.steps_per_epoch == 0 and (
                    epoch % every == 0):  # the model after this epoch (e.g. for a probe)
                checkpoint.save_final(storage.join(self.cfg.out, "snapshots",
                                                   f"epoch-{epoch:03d}"),
                                      self._exported(), self._state())
        if self.step % self.cfg.checkpoint.every_steps == 0:
            self._checkpoint()
        if self.cfg.fail_at_step is not None and self.step == self.cfg.fail_at_step:
            raise InjectedFailure(f"injected failure after step {self.step}")

    def _checkpoint(self) -> None:
        """A checkpoint of this step: each rank's own tensors first (when the objective has
        any), then, after a barrier, the main rank's files and state.json, which publishes it."""
        # every rank's loss window (each rank's losses differ; the history entry is their mean)
        windows = [[float(s), int(self._window[1])]
                   for s in all_gather_with_grad(torch.as_tensor(
                       self._window[0], dtype=torch.float32,
                       device=self.dist.device).reshape(1)).detach().cpu()]
        own = self.objective.rank_state()
        if own:
            checkpoint.save_rank_extra(self.cfg.out, self.step, self.dist.rank,
                                       self.dist.world_size, own)
            barrier()
        if self.dist.is_main:
            state = dict(self._state(windows), **({"rank_files": self.dist.world_size} if own else {}))
            checkpoint.save_checkpoint(self.cfg.out, self.step, self.model, self.optimizer,
                                       state, keep=self.cfg.checkpoint.keep, extra=self._extra())
        self._saved = self.step

    def _extra(self) -> dict:
        """The objective's tensors a checkpoint must hold for an exact resume."""
        return self.objective.state()

    def _state(self, windows: list | None = None) -> dict:
        return dict(_model_spec(self.cfg, self.meta, self.objective), history=self.history,
                    loss_window=windows or [[float(self._window[0]), int(self._window[1])]],
                    total_steps=self.total_steps, steps_per_epoch=self.steps_per_epoch,
                    config=self.cfg.model_dump(mode="json"))

    def _run_epoch(self, epoch: int, bar, watchdog: Watchdog) -> None:
        start_in_epoch = self.step - epoch * self.steps_per_epoch
        loader = _loader(self.cfg, self.meta, self.dist, self.local_batch,
                         self.steps_per_epoch, epoch, self.cache)
        self.model.train()
        self.objective.start_epoch(epoch, start_in_epoch > 0, watchdog.beat)
        # a resumed epoch continues the window its checkpoint saved (a fresh epoch: empty)
        self._window = (torch.tensor(float(self._window[0]) if start_in_epoch else 0.0,
                                     device=self.dist.device), self._window[1] if start_in_epoch else 0)
        for i, (images, labels, keys) in enumerate(loader):
            if i < start_in_epoch:  # resuming mid-epoch: replay the order, skip the work
                continue
            loss = self._train_step(images, labels, keys)
            self._window = (self._window[0] + loss, self._window[1] + 1)
            self.step += 1
            watchdog.beat(f"step {self.step + 1} of {self.total_steps}")
            if bar is not None:
                bar.update(1)
            self._after_step(bar)
            if self.step >= self.total_steps:
                break

    def run(self) -> dict:
        cfg, t0 = self.cfg, time.time()
        if self.dist.is_main:
            config.save(cfg, cfg.out)
        bar = tqdm(total=self.total_steps, initial=self.step, desc=f"train {cfg.model}",
                   unit="step", disable=not self.dist.is_main, mininterval=2.0)
        with Watchdog("train", cfg.stall_timeout_s,
                      "raise stall_timeout_s if one step really takes this long") as watchdog:
            if self.step < self.total_steps:
                self.cache = _cache(cfg, self.meta, watchdog)
            self.beat = watchdog.beat
            self.objective.start(self)
            watchdog.beat(f"step {self.step + 1} of {self.total_steps} (loading data)")
            while self.step < self.total_steps:
                self._run_epoch(self.step // self.steps_per_epoch, bar, watchdog)
        bar.close()
        if self._saved != self.total_steps:
            # the last step is a checkpoint too: a rerun then finds the run finished
            self._checkpoint()
        result = {"steps": self.total_steps, "epochs": cfg.epochs,
                  "final_loss": self.history[-1]["loss"] if self.history else None,
                  "seconds": round(time.time() - t0, 1), "world_size": self.dist.world_size}
        if self.dist.is_main:
            checkpoint.save_final(cfg.out, self._exported(), self._state())
            self.objective.finish(cfg.out)
            storage.write_json(storage.join(cfg.out, "metrics.json"),
                               dict(result, history=self.history))
        return result


def train_objective(cfg: TrainConfig, objective: str, stage: str | None = None) -> dict:
    """``train`` for a method's own stage (``semisup stage llp|contrastive|distill|weak-train``),
    refusing a config of another objective with one line."""
    if cfg.objective != objective:
        raise ConfigError(f"semisup stage {stage or objective} trains objective {objective}; the "
                          f"config says {cfg.objective!r} (use semisup stage train for it)")
    return train(cfg)


def train(cfg: TrainConfig) -> dict:
    """Train to the end (resuming if a checkpoint exists); returns summary metrics."""
    try:
        return Trainer(cfg).run()
    finally:
        cleanup()
