"""What the train component runs: one semisup_core.train run, its model as a KFP Model."""

from __future__ import annotations

import hashlib
import json

from semisup.pytorchjob import JobSpec, run as run_job
from semisup_core import config, storage
from semisup_core.errors import ConfigError
from semisup_core.train import TrainConfig, train
from semisup_core.train.config import FinetuneSpec, LauncherSpec

from components.artifacts import dataset_uri, integral, location

_FILES = ("model.safetensors", "state.json", "config.yaml", "metrics.json")


def _copy_model(src: str, dst: str, extra: tuple[str, ...] = ()) -> None:
    """The model's files, and ``extra`` files or directories (e.g. LLP's pseudo-labels)."""
    for name in _FILES + extra:
        uri = storage.join(src, name)
        if storage.exists(uri):
            storage.put_bytes(storage.join(dst, name), storage.get_bytes(uri))
        elif name in extra:
            prefix = uri.rstrip("/") + "/"
            for child in storage.list_uris(uri):
                storage.put_bytes(storage.join(dst, name, child[len(prefix):]),
                                  storage.get_bytes(child))


def _arch(model_dir: str) -> dict:
    spec = storage.read_json(storage.join(model_dir, "state.json"))["model"]
    return {"model": spec["name"], "model_kwargs": spec["kwargs"]}


def _launch(cfg: TrainConfig, spec: LauncherSpec, task_out: str) -> dict:
    """Train ``cfg`` through the PyTorchJob launcher (semisup.pytorchjob, as the pytorchjob
    component does) and wait; returns the run's summary metrics."""
    if spec.backend == "pytorchjob" and storage.is_local(cfg.out):
        raise ConfigError("launcher.backend=pytorchjob needs checkpoints on s3:// or minio:// "
                          f"(the job's pods write the model there, not to {cfg.out})")
    # one job per task execution: the run's directory and this task's output artifact
    name = "train-" + hashlib.sha256(f"{cfg.out}|{task_out}".encode()).hexdigest()[:12]
    job = JobSpec(name=name, namespace=spec.namespace, train=cfg.model_dump(mode="json"),
                  workers=spec.workers, nproc_per_node=spec.nproc_per_node,
                  gpus_per_node=spec.gpus_per_node, cpu=spec.cpu, memory=spec.memory,
                  elastic_min=spec.elastic_min or None, elastic_max=spec.elastic_max or None)
    run_job(job, "kubernetes" if spec.backend == "pytorchjob" else "local")
    return dict(storage.read_json(storage.join(cfg.out, "metrics.json")), job=name)


def run(data, recipe: dict, model, seed: int = 0, init_from=None, inferred=None,
        checkpoints: str = "", launcher: dict | None = None, extra_data: tuple[str, ...] = (),
        outputs: tuple[str, ...] = ()) -> dict:
    """Train on ``data`` with ``recipe`` (a TrainRecipe, or a FinetuneSpec with ``init_from``).

    Fine-tuning takes the architecture of ``init_from`` (but ``model_kwargs.head_mlp`` of the
    recipe, when given: the pre-trained projection head's layers to keep, SimCLRv2's fine-tuning
    from the head's middle); ``enabled: false`` passes that model
    through unchanged (the paper's no-fine-tuning ablation) and ``labels: inferred`` adds the
    selected set ``inferred`` to the training data. ``launcher`` (a LauncherSpec) says where
    it trains: in this process (``pod``) or through the PyTorchJob launcher. ``extra_data``:
    dataset URIs trained on besides ``data`` (LLP's pool); ``outputs``: files or directories
    of the run the Model artifact also gets (LLP's pseudo-labels).
    """
    spec_launch = config.build(LauncherSpec, integral(launcher or {}), "launcher")
    out = location(model)
    data = [dataset_uri(data), *extra_data]
    recipe = dict(recipe, model_kwargs=integral(recipe.get("model_kwargs", {})))
    # a reference component's artifact stands for its URI, a reference to '' for no model
    init = (dataset_uri(init_from) or None) if init_from is not None else None
    spec = FinetuneSpec(**recipe) if init else None
    if spec is not None and not spec.enabled:
        _copy_model(init, out)
        model.metadata.update(_arch(init), fine_tuned=False)
        return {"skipped": True}
    fields = dict(recipe, seed=seed)
    if spec is not None:
        arch = _arch(init)
        if "head_mlp" in recipe["model_kwargs"]:  # from which projection-head layer (SimCLRv2)
            arch["model_kwargs"] = dict(arch["model_kwargs"], head_mlp=recipe["model_kwargs"]["head_mlp"])
        fields = spec.model_dump(exclude={"enabled", "labels"}) | arch | {"seed": seed}
        if spec.labels == "inferred":
            if inferred is None:
                raise ConfigError("recipe.labels is 'inferred' but no selected set was given")
            data = [dataset_uri(inferred)] + data
    # one checkpoint directory per distinct run (tasks of a ParallelFor share a name, and the
    # trainer refuses to resume a different config): keyed by everything that defines the run
    key = hashlib.sha256(json.dumps([fields, list(data), init], sort_keys=True,
                                    default=str).encode()).hexdigest()[:16]
    run_dir = storage.join(checkpoints, f"train-{key}") if checkpoints else out
    cfg = config.build(TrainConfig, dict(fields, out=run_dir, init_from=init,
                                         data={"train": list(data)}), "train component")
    summary = train(cfg) if spec_launch.backend == "pod" else _launch(cfg, spec_launch, out)
    if checkpoints:
        _copy_model(run_dir, out, outputs)
    model.metadata.update(model=fields["model"], model_kwargs=fields.get("model_kwargs", {}),
                          steps=summary.get("steps"), fine_tuned=init is not None,
                          backend=spec_launch.backend, job=summary.get("job", ""))
    return summary
