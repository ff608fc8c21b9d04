"""KFP pipelines; each module compiles itself to the YAML beside it (``python -m pipelines.x``)."""

from __future__ import annotations

import json
import os
import re

#: pipeline module name -> pipeline function name
PIPELINES = {"teacher_student": "teacher_student", "dedup": "dedup_pipeline", "llp": "llp",
             "simclr": "simclr", "wsl": "wsl", "split": "split_pipeline",
             "copy_verifier": "copy_verifier"}


#: the Secret with the platform MinIO's endpoint and credentials (k8s/base; README "Going to a
#: cluster"); every task streams shards from that store, so every task gets it as env
STORAGE_SECRET = "semisup-minio"
STORAGE_ENV = ("S3_ENDPOINT", "MINIO_ROOT_USER", "MINIO_ROOT_PASSWORD")
#: the label k8s/base's NetworkPolicy admits to MinIO
MINIO_CLIENT_LABEL = ("semisup.io/minio-client", "true")


#: the pipeline parameters of pipelines.resources, described (a pipeline has those of the task
#: kinds it runs, with the defaults of pipelines.resources.DEFAULT)
RESOURCE_PARAMETERS = {
    "train_cpu": "CPU request and limit of each train task (pipelines/resources.py).",
    "train_memory": "memory request and limit of each train task.",
    "train_gpus": "accelerators per train task (0: none).",
    "infer_cpu": "CPU request and limit of each score and embed task.",
    "infer_memory": "memory request and limit of each score and embed task.",
    "infer_gpus": "accelerators per score and embed task (0: none).",
    "light_cpu": "CPU request and limit of every other task.",
    "light_memory": "memory request and limit of every other task.",
    "accelerator": "the accelerator resource of GPU tasks, e.g. nvidia.com/gpu.",
    "gpu_node_selector": "node selector of the train, score and embed tasks ({} on CPU).",
    "gpu_tolerations": "tolerations of the train, score and embed tasks ([] on CPU)."}


def with_resource_docs(func):
    """Add the resource parameters' descriptions to a pipeline function's Args (its last
    section), before ``dsl.pipeline`` reads them."""
    import inspect
    doc = func.__doc__.rstrip()
    assert "Args:" in doc and "Returns:" not in doc, func.__name__
    lines = [f"        {name}: {text}" for name, text in RESOURCE_PARAMETERS.items()
             if name in inspect.signature(func).parameters]
    func.__doc__ = doc + "\n" + "\n".join(lines) + "\n    "
    return func


def on_platform(tasks, params: dict) -> None:
    """Cluster settings for every task of a pipeline: the storage Secret as env, the MinIO
    client label, and what it requests (``pipelines.resources.apply``, from the resource
    parameters among ``params``: the pipeline function's ``locals()``). kfp.local ignores
    all of it."""
    from kfp import kubernetes

    from pipelines import resources as res
    for task in tasks:
        kubernetes.use_secret_as_env(task, secret_name=STORAGE_SECRET,
                                     secret_key_to_env={k: k for k in STORAGE_ENV})
        kubernetes.add_pod_label(task, *MINIO_CLIENT_LABEL)
        res.apply(task, {k: v for k, v in params.items() if k in RESOURCE_PARAMETERS})


def yaml_path(module_file: str) -> str:
    return os.path.splitext(module_file)[0] + ".yaml"


def _stable_header(text: str) -> str:
    """The compiler's header comment prints dict defaults in protobuf map order, which
    changes between processes; print them with sorted keys so the YAML is reproducible."""
    import yaml

    header, sep, body = text.partition("\ncomponents:")
    spec = next(yaml.safe_load_all(sep + body))  # (a second document: platform settings)
    params = spec["root"]["inputDefinitions"]["parameters"]
    lines = []
    for line in header.splitlines():
        m = re.match(r"^#    (\w+): dict \[Default: .*\]$", line)
        if m and m.group(1) in params:
            value = json.dumps(params[m.group(1)]["defaultValue"], sort_keys=True)
            line = f"#    {m.group(1)}: dict [Default: {value}]"
        lines.append(line)
    return "\n".join(lines) + sep + body


def compile_pipeline(func, path: str) -> str:
    """Compile ``func`` to ``path`` (IR YAML, reproducible byte for byte); returns the path."""
    from kfp import compiler
    compiler.Compiler().compile(func, path)
    with open(path) as f:
        text = _stable_header(f.read())
    with open(path, "w") as f:
        f.write(text)
    return path


def compile_main(func, module_file: str) -> None:
    print(compile_pipeline(func, yaml_path(module_file)))
