"""The PyTorchJobs of k8s/overlays/<overlay>/jobs.yaml, generated from the launcher's JobSpec.

One definition: the launcher component and these committed manifests both come from
``semisup.pytorchjob.build_job``; only the per-overlay presets below differ. Each training
stage (teacher, student pre-training, fine-tuning) is a ConfigMap holding its TrainConfig plus a
PyTorchJob created suspended, so applying an overlay starts nothing: start a stage with
``kubectl -n semisup patch pytorchjob teacher --type merge -p '{"spec":{"runPolicy":{"suspend":false}}}'``
once the previous one finished. Checkpoints go to MinIO (``out``), so restarted pods resume.

    python -m semisup.k8s_manifests        # rewrite every overlay's jobs.yaml (a test diffs them)
"""

from __future__ import annotations

import os

import yaml

from semisup.pytorchjob import CONFIG_NAME, JobSpec, build_job, to_manifest
from semisup_core import config as cfglib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OVERLAYS_DIR = os.path.join(REPO, "k8s", "overlays")
STORE = "minio://semisup"

#: per overlay: where the data is, the models, and the pods' size
OVERLAYS = {
    "dev": {  # CPU: the demo's Fashion-MNIST regime, Master + 2 small Workers
        "run": f"{STORE}/runs/dev",
        "labelled": f"{STORE}/data/fmnist/split/labelled",
        "teacher": {"model": "small_resnet14", "model_kwargs": {"width": 16}, "epochs": 40,
                    "batch_size": 64, "optim": {"lr": 0.4}},
        "student": {"model": "small_resnet8", "model_kwargs": {"width": 4}, "epochs": 10,
                    "batch_size": 128, "optim": {"lr": 0.4}},
        "finetune": {"epochs": 30, "batch_size": 64, "optim": {"lr": 0.1, "warmup_epochs": 0}},
        "pods": {"workers": 2, "nproc_per_node": 1, "cpu": "1", "memory": "2Gi",
                 "shm_size": "256Mi"},
        "elastic": {},
    },
    "prod": {  # multi-node GPU: the paper's ImageNet setting (ResNeXt teacher, ResNet-50 student)
        "run": f"{STORE}/runs/prod",
        "labelled": f"{STORE}/data/imagenet/split/labelled",
        "teacher": {"model": "resnext101_32x8d", "epochs": 90, "batch_size": 1024,
                    "optim": {"lr": 0.1, "weight_decay": 1e-4, "warmup_epochs": 5},
                    "data": {"num_workers": 8}, "amp": "bf16"},
        "student": {"model": "resnet50", "epochs": 30, "batch_size": 1024,
                    "optim": {"lr": 0.1, "weight_decay": 1e-4, "warmup_epochs": 2},
                    "data": {"num_workers": 8}, "amp": "bf16"},
        "finetune": {"epochs": 30, "batch_size": 1024,
                     "optim": {"lr": 0.004, "weight_decay": 1e-4, "warmup_epochs": 0,
                               "schedule": "step", "milestones": [0.33, 0.66]},
                     "data": {"num_workers": 8}, "amp": "bf16"},
        "pods": {"workers": 3, "nproc_per_node": 8, "gpus_per_node": 8, "cpu": "64",
                 "memory": "480Gi", "shm_size": "64Gi"},
        # pre-training is the longest stage: let it shrink to 2 nodes and grow to 8 (c10d)
        "elastic": {"student-pretrain": {"elastic_min": 2, "elastic_max": 8}},
    },
}


def stage_specs(overlay: str) -> list[JobSpec]:
    """The three training stages of ``overlay`` as JobSpecs (teacher, student, fine-tuning)."""
    o = OVERLAYS[overlay]
    run = o["run"]
    trains = {
        "teacher": dict(o["teacher"], out=f"{run}/teacher", data={"train": o["labelled"]}),
        # the select stage writes the ranked, materialised set here (semisup stage select)
        "student-pretrain": dict(o["student"], out=f"{run}/student-pretrain",
                                 data={"train": f"{run}/select/selected"}),
        "finetune": dict(o["finetune"], model=o["student"]["model"],
                         model_kwargs=o["student"].get("model_kwargs", {}),
                         out=f"{run}/student", data={"train": o["labelled"]},
                         init_from=f"{run}/student-pretrain"),
    }
    return [JobSpec(name=name, train=train, config_map=f"{name}-config", suspend=True,
                    **o["pods"], **o["elastic"].get(name, {}))
            for name, train in trains.items()]


def config_map(spec: JobSpec) -> dict:
    """The ConfigMap the pods mount at /etc/semisup (the validated TrainConfig as YAML)."""
    return {"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": spec.config_map, "namespace": spec.namespace},
            "data": {CONFIG_NAME: cfglib.dump(spec.train_config())}}


class _Dumper(yaml.SafeDumper):
    """Multi-line strings (the ConfigMaps' YAML) as literal blocks a person can read."""


_Dumper.add_representer(str, lambda d, s: d.represent_scalar(
    "tag:yaml.org,2002:str", s, style="|" if "\n" in s else None))


def render(overlay: str) -> str:
    """jobs.yaml of ``overlay``: per stage a ConfigMap and its (suspended) PyTorchJob."""
    docs = []
    for spec in stage_specs(overlay):
        docs += [config_map(spec), to_manifest(build_job(spec))]
    head = (f"# GENERATED by `python -m semisup.k8s_manifests` from semisup/k8s_manifests.py "
            f"(overlay {overlay}); do not edit.\n")
    return head + yaml.dump_all(docs, Dumper=_Dumper, sort_keys=False)


def jobs_path(overlay: str) -> str:
    return os.path.join(OVERLAYS_DIR, overlay, "jobs.yaml")


def main() -> None:
    for overlay in OVERLAYS:
        with open(jobs_path(overlay), "w") as f:
            f.write(render(overlay))
        print(jobs_path(overlay))


if __name__ == "__main__":
    main()
