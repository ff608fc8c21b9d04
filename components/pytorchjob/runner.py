"""What the launcher component runs: semisup.pytorchjob (a PyTorchJob, or a local torchrun)."""

from __future__ import annotations

from semisup.pytorchjob import JobSpec, run as run_job
from semisup_core import storage

from components.artifacts import integral, location
from components.train.runner import _copy_model


def run(name: str, train: dict, model, backend: str, **spec) -> dict:
    """Build the job from the typed JobSpec, run it, publish the final model as ``model``.

    Zero for ``elastic_min``/``elastic_max`` means "not elastic" and an empty ``image`` the
    release's train image (KFP parameters cannot be None).
    """
    for key in ("elastic_min", "elastic_max"):
        spec[key] = spec.get(key) or None
    if not spec.get("image"):  # empty: the train stage image of this release (JobSpec default)
        spec.pop("image", None)
    train = dict(train, model_kwargs=integral(train.get("model_kwargs", {})))
    job = JobSpec(name=name, train=train, **spec)
    result = run_job(job, backend)
    out = job.train_config().out
    _copy_model(out, location(model))
    model.metadata.update(job=name, backend=backend, source=out,
                          world=(job.workers + 1) * job.nproc_per_node)
    return dict(result, model=storage.join(out, "model.safetensors"))
