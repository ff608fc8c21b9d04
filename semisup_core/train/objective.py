"""What one training step minimises, behind one interface, so that the loop (``loop.py``)
stays one loop whatever the method: each objective says which model it trains (``wrap``),
what the network sees (``inputs``), the loss, what it updates after the optimiser step,
which tensors a checkpoint must hold for an exact resume, and which registry model the run
exports. ``OBJECTIVES`` maps ``TrainRecipe.objective`` to its class.

- ``supervised``: cross-entropy on the labels after a random crop and flip.
- ``contrastive``: two views of every image, InfoNCE over the global batch (``objectives.py``):
  SSCD's copy descriptor (``views: copy``) or SimCLRv2's pre-training (``views: simclr``,
  ``proj_layers: 3``).
- ``llp``: Local Label Propagation's memory bank, pseudo-labels and losses (``llp/``).
- ``distill``: a fixed teacher's soft labels (``distill.py``; SimCLRv2's third step).
- ``weak``: 1/k soft targets of every image's weak labels (``wsl/objective.py``; Mahajan et al.).
"""

from __future__ import annotations

import logging

import torch
import torch.nn as nn
import torch.nn.functional as F

from semisup_core.errors import ConfigError
from semisup_core.train import augment, views

log = logging.getLogger(__name__)


class Objective:
    """The supervised objective, and the defaults of every other one."""

    needs_labels = True  # every dataset of data.train must be labelled

    def __init__(self, cfg, meta, dist):
        self.cfg, self.meta, self.dist = cfg, meta, dist
        self.steps_per_epoch = 1  # the trainer sets it
        self.stats: dict = {}  # diagnostics of the last step (logged in the history)

    def model_kwargs(self) -> dict:
        """The registry model's kwargs (the final model's spec holds them)."""
        return dict(self.cfg.model_kwargs)

    def head_classes(self) -> int:
        return self.meta.num_classes

    def wrap(self, model: nn.Module) -> nn.Module:
        """The module training calls (before DDP)."""
        return model

    def exported(self, module: nn.Module) -> nn.Module:
        """The registry model inside ``wrap``'s module (what model.safetensors holds)."""
        return module

    def inputs(self, images: torch.Tensor, gen: torch.Generator, offset: int,
               memory_format: torch.memory_format) -> torch.Tensor:
        """uint8 batch -> what the network sees (augmented, normalised)."""
        cfg = self.cfg
        x = augment.normalize(images, cfg.data.mean, cfg.data.std, memory_format)
        return augment.random_crop_flip(x, cfg.augment.crop_padding, cfg.augment.hflip, gen,
                                        cfg.batch_size, offset)

    def loss(self, model: nn.Module, x: torch.Tensor, labels: torch.Tensor, keys, step: int
             ) -> torch.Tensor:
        return F.cross_entropy(model(x), labels, label_smoothing=self.cfg.optim.label_smoothing)

    def after_step(self) -> None:
        """After the optimiser step (LLP's memory bank and labels)."""

    def start(self, trainer) -> None:
        """Before the first step of this process (a resumed run too)."""

    def start_epoch(self, epoch: int, resumed_mid_epoch: bool, beat) -> None:
        pass

    def end_epoch(self, epoch: int, out: str) -> None:
        pass

    def finish(self, out: str) -> None:
        pass

    def state(self) -> dict[str, torch.Tensor]:
        """The tensors besides the weights and the optimiser an exact resume needs (the same
        on every rank: the main rank writes them)."""
        return {}

    def rank_state(self) -> dict[str, torch.Tensor]:
        """Tensors each rank holds for itself (e.g. its block of a sharded memory bank): every
        rank writes its own file into the checkpoint. Empty on every rank, or on none."""
        return {}

    def load(self, tensors: dict[str, torch.Tensor]) -> None:
        pass

    def load_checkpoint(self, ckpt: str) -> None:
        from semisup_core import checkpoint
        self.load(checkpoint.load_extra(ckpt))


class Contrastive(Objective):
    """Two views per image, NT-Xent/InfoNCE with cross-rank negatives (``objectives.py``);
    with ``proj_layers`` > 0, SimCLRv2's projection head (``models/heads.py``)."""

    needs_labels = False

    def __init__(self, cfg, meta, dist):
        super().__init__(cfg, meta, dist)
        self.memory = self.key = self._online = None

    def model_kwargs(self) -> dict:
        kw = dict(self.cfg.model_kwargs)
        layers = self.cfg.contrastive.proj_layers
        if layers > 1:
            kw["head_mlp"] = layers - 1
        return kw

    def head_classes(self) -> int:  # a classifier it does not train
        return max(1, self.meta.num_classes)

    def wrap(self, model: nn.Module) -> nn.Module:
        from semisup_core.models.heads import ProjectionHead
        from semisup_core.train.objectives import Features, NegativeMemory, freeze_unreached
        c = self.cfg.contrastive
        side = (self.meta.height or 32, self.meta.width or 32)
        sample = torch.zeros(2, self.meta.channels, *side)
        wrapped = ProjectionHead(model, c.proj_dim) if c.proj_layers else Features(model)
        forward = wrapped.forward if c.proj_layers else None
        frozen = freeze_unreached(wrapped if c.proj_layers else model, sample, forward)
        log.info("contrastive: %d tensors not trained (%s)", len(frozen), ", ".join(frozen))
        if c.memory:
            self.memory = NegativeMemory(c.memory, wrapped.feature_dim if c.proj_layers
                                         else model.feature_dim, self.dist.device)
            if c.memory_momentum:
                from semisup_core.train.objectives import MomentumEncoder
                self.key = MomentumEncoder(wrapped, c.memory_momentum)
        return wrapped

    def exported(self, module: nn.Module) -> nn.Module:
        # ``checkpoint.unwrap`` already took ``Features`` off; a projection head stays in the
        # checkpoints (an exact resume needs it) and out of the final model
        from semisup_core.models.heads import ProjectionHead
        return module.net if isinstance(module, ProjectionHead) else module

    def inputs(self, images, gen, offset, memory_format):
        cfg, c = self.cfg, self.cfg.contrastive
        both = torch.cat(views.two_views(images.float(), c.views, c.copy_views, gen,
                                         cfg.batch_size, offset, c.simclr_views))
        return augment.normalize(both, cfg.data.mean, cfg.data.std, memory_format)

    def loss(self, model, x, labels, keys, step):
        from semisup_core.train.objectives import contrastive_loss
        c = self.cfg.contrastive
        use_memory = step >= c.memory_after_epochs * self.steps_per_epoch
        push = None
        if self.key is not None:  # the momentum encoder's descriptors of the first views
            push = self.key(x[:len(x) // 2])
            self._online = getattr(model, "module", model)  # under DDP, the network it wraps
        loss, self.stats = contrastive_loss(model(x), c, self.dist.rank, self.memory, use_memory,
                                            push)
        return loss

    def start(self, trainer):
        if self.key is not None:  # built beside the network in wrap(), before it moved
            self.key.module.to(trainer.dist.device)

    def after_step(self):
        if self.key is not None:
            self.key.update(self._online)

    def state(self):
        out = self.memory.state() if self.memory is not None else {}
        return {**out, **(self.key.state() if self.key is not None else {})}

    def load(self, tensors):
        if self.memory is not None:
            self.memory.load(tensors)
        if self.key is not None:
            self.key.load(tensors)


class LLP(Objective):
    """Local Label Propagation (``llp/objective.py``: the bank, the labels, their updates)."""

    needs_labels = False

    def __init__(self, cfg, meta, dist):
        super().__init__(cfg, meta, dist)
        from semisup_core.llp.objective import LLPState
        if not meta.labelled:
            raise ConfigError("objective llp needs a labelled dataset among data.train (the "
                              "labels to propagate) besides the unlabelled pool")
        self.llp = LLPState(cfg.llp, meta.num_samples, meta.num_classes, cfg.seed, dist.device,
                            dist.rank, dist.world_size)
        self._step = None

    def wrap(self, model):
        from semisup_core.llp.objective import LLPNet
        return LLPNet(model, self.cfg.llp.embed_dim)

    def exported(self, module):
        return module.net

    def loss(self, model, x, labels, keys, step):
        warm = step < self.cfg.llp.warm_epochs * self.steps_per_epoch
        rows = self.llp.rows_of(keys)
        v, logits = model(x)
        loss, self.stats = self.llp.loss(v, logits, rows, labels, warm, step)
        self._step = (rows, v, logits, labels, warm)
        return loss

    def after_step(self):
        rows, v, logits, labels, warm = self._step
        self.llp.update(rows, v, logits, labels, propagate=not warm)
        self.stats.update(self.llp.stats())
        self._step = None

    def start(self, trainer):
        self.llp.index_rows(self.meta.shards, trainer.cache, trainer.beat)
        if trainer.step == 0 and self.cfg.llp.bank_init == "forward":
            trainer.model.eval()
            self.llp.fill(trainer.embed, self.meta.shards, self.meta.channels, trainer.cache,
                          trainer.beat)
            trainer.model.train()

    def start_epoch(self, epoch, resumed_mid_epoch, beat):
        if not resumed_mid_epoch:  # a resumed epoch has its densities (in the checkpoint)
            beat(f"epoch {epoch}: local densities of the labelled bank entries")
            self.llp.refresh_density()

    def end_epoch(self, epoch, out):
        from semisup_core import storage
        if self.dist.is_main:  # one propagation round's labels
            self.llp.write_labels(storage.join(out, "pseudo_labels", f"epoch-{epoch + 1:03d}.parquet"))

    def finish(self, out):
        from semisup_core import storage
        self.llp.write_labels(storage.join(out, "pseudo_labels.parquet"))

    def state(self):
        return self.llp.state()

    def rank_state(self):
        return self.llp.rank_state()

    def load_checkpoint(self, ckpt):
        from semisup_core import checkpoint
        self.llp.load(checkpoint.load_extra(ckpt), checkpoint.rank_extras(ckpt))


class Distill(Objective):
    """A fixed teacher's soft labels on every image (``distill.py``), the student's crop and
    flip seen by both."""

    needs_labels = False

    def __init__(self, cfg, meta, dist):
        super().__init__(cfg, meta, dist)
        from semisup_core import checkpoint
        d = cfg.distill
        try:
            teacher, state = checkpoint.load_model(d.teacher, str(dist.device))
        except Exception as err:  # noqa: BLE001 -- one line naming the teacher
            raise ConfigError(f"distill.teacher {d.teacher}: {err}") from None
        if state.get("classes") != meta.classes:
            raise ConfigError(f"distill.teacher {d.teacher} predicts {len(state.get('classes') or [])} "
                              f"classes {state.get('classes')}, data.train has {meta.classes}")
        if d.label_weight and not meta.labelled:
            raise ConfigError("distill.label_weight > 0 needs a labelled dataset in data.train")
        self.teacher = teacher.to(memory_format=torch.contiguous_format).eval()
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        self.teacher_norm = (state.get("mean", cfg.data.mean), state.get("std", cfg.data.std))

    def loss(self, model, x, labels, keys, step):
        from semisup_core.train.distill import distillation_loss
        with torch.no_grad():
            xt = x
            if self.teacher_norm != (self.cfg.data.mean, self.cfg.data.std):  # the teacher's own
                m, s = self.teacher_norm
                xt = (x * self.cfg.data.std + self.cfg.data.mean - m) / s
            t = self.teacher(xt)
        loss, self.stats = distillation_loss(model(x), t, labels, self.cfg.distill)
        return loss


class Weak(Objective):
    """Mahajan et al.'s weak pre-training: softmax cross-entropy against 1/k on each of an
    image's k labels (``wsl/objective.py``), the supervised crop and flip. data.train is the
    synsets stage's resampled set (its classes: the vocabulary)."""

    def start(self, trainer):
        from semisup_core import storage
        from semisup_core.wsl.objective import WeakTargets
        train = self.cfg.data.train
        uri = self.cfg.weak.targets or storage.join(train if isinstance(train, str) else train[0],
                                                    "targets.parquet")
        self.targets = WeakTargets(uri, self.meta.num_classes)

    def loss(self, model, x, labels, keys, step):
        from semisup_core.wsl.objective import soft_target_loss
        flat, offsets = self.targets.batch(list(keys), x.device)
        return soft_target_loss(model(x), flat, offsets)


OBJECTIVES: dict[str, type[Objective]] = {
    "supervised": Objective, "contrastive": Contrastive, "llp": LLP, "distill": Distill,
    "weak": Weak}


def make_objective(cfg, meta, dist) -> Objective:
    return OBJECTIVES[cfg.objective](cfg, meta, dist)
