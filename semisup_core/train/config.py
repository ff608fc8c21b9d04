"""The typed config of the ``train`` stage (shared by CLI, KFP component and PyTorchJob pod)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from semisup_core.config import StageConfig
from semisup_core.llp.objective import LLPConfig
from semisup_core.train.distill import DistillConfig
from semisup_core.train.objectives import ContrastiveConfig, Objective
from semisup_core.wsl.objective import WeakConfig


class DataConfig(StageConfig):
    train: str | list[str] = Field(description="dataset directory URI (dataset.json + shards), "
                                               "or a list of them with the same classes")
    split: Literal["auto", "shards", "samples"] = Field(
        "auto", description="how ranks share the data: whole shards (scale) or slices of each "
                            "global batch (exact, small data); auto picks shards when there are enough")
    shuffle_buffer: int = Field(4096, ge=1, description="samples held for shuffling per reader")
    num_workers: int = Field(1, ge=0, description="DataLoader workers per rank; 1-2 on a laptop "
                                                  "(epochs under 20 steps load in-process)")
    cache_mb: int = Field(512, ge=0, description="decode the training set once per run and keep "
                                                 "it in memory when it fits in this many MiB "
                                                 "(fixed-size images only; 0 = read the shards "
                                                 "every epoch)")
    mean: float = Field(0.5, description="per-channel mean of images scaled to [0,1]")
    std: float = Field(0.5, gt=0, description="per-channel std of images scaled to [0,1]")


class AugmentConfig(StageConfig):
    """The supervised objective's augmentation (a contrastive one has its views recipe)."""

    crop_padding: int = Field(2, ge=0, description="random-crop padding in pixels (2 for 28x28)")
    hflip: bool = Field(True, description="random horizontal flips (off for digits/text)")


class OptimConfig(StageConfig):
    optimizer: Literal["sgd", "lars"] = Field(
        "sgd", description="sgd (momentum, Nesterov) | lars (timm's Lars: layer-wise trust "
                           "ratio, SimCLR's optimiser for batches of thousands)")
    lr: float = Field(0.1, gt=0, description="learning rate per 256 images, scaled linearly "
                                             "with the global batch (Goyal et al. 2017); with "
                                             "lr_scaling sqrt: times sqrt(global batch)")
    lr_scaling: Literal["linear", "sqrt"] = Field(
        "linear", description="linear: lr x batch/256 | sqrt: lr x sqrt(batch) (SimCLR's "
                              "0.075 x sqrt(B) for small batches / short runs)")
    trust_coeff: float = Field(0.001, gt=0, description="LARS: eta of the trust ratio")
    momentum: float = Field(0.9, ge=0, lt=1)
    nesterov: bool = Field(True, description="SGD only (LARS runs classic momentum)")
    weight_decay: float = Field(5e-4, ge=0, description="1e-4 for ImageNet ResNets, 5e-4 small data")
    warmup_epochs: float = Field(1.0, ge=0, description="linear warm-up from 0 (Goyal et al.)")
    schedule: Literal["cosine", "step"] = "cosine"
    milestones: list[float] = Field(default_factory=lambda: [0.5, 0.75],
                                    description="step schedule: fractions of training")
    gamma: float = Field(0.1, gt=0, le=1, description="step schedule: LR factor per milestone")
    label_smoothing: float = Field(0.0, ge=0, lt=1)


class CheckpointConfig(StageConfig):
    every_steps: int = Field(200, ge=1, description="write a checkpoint to the store every N steps")
    keep: int = Field(2, ge=1, description="how many step checkpoints to keep")
    resume: bool = Field(True, description="resume from the newest checkpoint under out")


class TrainRecipe(StageConfig):
    """How to train: model, schedule, optimiser. Pipelines hold one recipe per model they
    train (teacher, student, fine-tuning) and add the data and output locations."""

    model: str = Field("small_resnet8", description="a name from `semisup models`")
    model_kwargs: dict = Field(default_factory=dict, description="extra model args, e.g. width")
    objective: Objective = Field("supervised", description="supervised (cross-entropy on labels) "
                                 "| contrastive (two views per image, train/objectives.py) | llp "
                                 "(Local Label Propagation: labelled + unlabelled data, llp/) | "
                                 "distill (a teacher's soft labels) | weak (1/k soft targets "
                                 "of weak tags' synsets, wsl/)")
    contrastive: ContrastiveConfig | None = Field(
        None, description="the contrastive objective's settings (null: its defaults)")
    llp: LLPConfig | None = Field(None, description="the llp objective's settings (null: the "
                                                    "paper's defaults)")
    distill: DistillConfig | None = Field(None, description="the distill objective's settings "
                                                            "(its teacher is required)")
    weak: WeakConfig | None = Field(None, description="the weak objective's settings (null: "
                                                      "targets beside data.train)")
    zero_init_head: bool = Field(False, description="start the classifier at zero (fine-tuning "
                                                    "a pre-trained network, SimCLRv2)")
    snapshot_every_epochs: int = Field(0, ge=0, description="also save the model every N epochs "
                                       "under out/snapshots/epoch-NNN (e.g. for a linear probe "
                                       "per pre-training epoch; 0 = off)")
    epochs: float = Field(10, gt=0, description="passes over the training set")
    batch_size: int = Field(128, ge=1, description="GLOBAL batch, split evenly across ranks")
    seed: int = 0
    optim: OptimConfig = Field(default_factory=OptimConfig)
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    checkpoint: CheckpointConfig = Field(default_factory=CheckpointConfig)
    amp: Literal["auto", "off", "bf16", "fp16"] = Field(
        "auto", description="mixed precision on GPU (auto = bf16 when supported); off on CPU")
    sync_bn: bool = Field(False, description="synchronise BatchNorm statistics across ranks")
    threads: int = Field(0, ge=0, description="torch CPU threads per rank; 0 = cores / ranks")
    memory_format: Literal["auto", "channels_last", "contiguous"] = Field(
        "auto", description="training tensors' layout; auto = channels_last on GPU, contiguous on "
                            "CPU (oneDNN's channels-last 1x1 backward crashes on AVX2 CPUs: README)")
    check_kernels: bool = Field(True, description="on CPU, compare the model's gradients with a "
                                                  "float64 reference before the first step")
    stall_timeout_s: float = Field(300, ge=0, description="end with one line when no training "
                                                          "step finishes for this long (0 = off)")
    @model_validator(mode="after")
    def _check(self):
        if self.objective == "contrastive" and self.contrastive is None:
            self.contrastive = ContrastiveConfig()
        if self.objective == "llp" and self.llp is None:
            self.llp = LLPConfig()
        if self.objective == "weak" and self.weak is None:
            self.weak = WeakConfig()
        if self.optim.schedule == "step" and any(not 0 < m < 1 for m in self.optim.milestones):
            raise ValueError("optim.milestones must be fractions in (0, 1)")
        return self


class FinetuneSpec(TrainRecipe):
    """Fine-tuning of a model trained on the pool (a teacher/student's student, LLP's network)
    on the labels: its own LR and schedule; the architecture is the pre-trained model's."""

    enabled: bool = Field(True, description="false skips fine-tuning (to show it matters)")
    labels: Literal["true", "inferred"] = Field(
        "true", description="true: the labelled set; inferred: selected set + labelled set")

    def recipe(self) -> TrainRecipe:
        """The training recipe alone (without ``enabled`` and ``labels``)."""
        return TrainRecipe(**self.model_dump(exclude={"enabled", "labels"}))


class TrainConfig(TrainRecipe):
    """Supervised training of one registered model on one (or several) datasets."""

    out: str = Field(description="output directory URI: checkpoints, final model, metrics")
    data: DataConfig
    init_from: str | None = Field(None, description="model dir to start from (fine-tuning); "
                                                    "a head of another shape starts fresh")
    fail_at_step: int | None = Field(
        None, description="testing aid: raise after this step to simulate a crash")

    @model_validator(mode="after")
    def _teacher(self):
        if self.objective == "distill" and not (self.distill and self.distill.teacher):
            raise ValueError("objective distill needs distill.teacher (the teacher's model dir)")
        c = self.contrastive
        if c is not None and c.memory_momentum and not c.memory:
            raise ValueError("contrastive.memory_momentum fills the memory: set contrastive.memory "
                             "(its size) too")
        return self


class LauncherSpec(StageConfig):
    """Where a pipeline's training tasks train: in their own pod (one process), or through the
    PyTorchJob launcher (``semisup.pytorchjob``), which the task then waits on.

    ``pytorchjob`` creates a PyTorchJob (Master + ``workers`` Worker pods, ``nproc_per_node``
    processes and ``gpus_per_node`` GPUs each, elastic between ``elastic_min`` and
    ``elastic_max`` nodes when both are set); ``torchrun`` is the launcher's local backend: the
    same entrypoint under torchrun on the task's own machine (what kfp.local runs)."""

    backend: Literal["pod", "pytorchjob", "torchrun"] = Field(
        "pod", description="pod (train in the task's pod) | pytorchjob (a PyTorchJob through the "
                           "training operator) | torchrun (the launcher's local backend)")
    workers: int = Field(0, ge=0, description="Worker pods besides the Master (nodes - 1)")
    nproc_per_node: int = Field(1, ge=1, description="processes per pod (GPUs per node; 1-2 on CPU)")
    gpus_per_node: int = Field(0, ge=0, description="nvidia.com/gpu per job pod (0: a CPU job)")
    cpu: str = Field("2", description="CPU request and limit per job pod")
    memory: str = Field("8Gi", description="memory request and limit per job pod")
    elastic_min: int = Field(0, ge=0, description="elastic: minimum nodes (0: not elastic)")
    elastic_max: int = Field(0, ge=0, description="elastic: maximum nodes (0: not elastic)")
    namespace: str = Field("semisup", description="namespace of the jobs")
