"""PyTorchJobs for training stages: one definition for the launcher component and k8s/.

``JobSpec`` (typed, validated) -> ``build_job`` -> a kubeflow-training ``KubeflowOrgV1PyTorchJob``:
a Master and ``workers`` Worker replicas running ``torchrun -m semisup stage train``. The
training operator sets ``PET_NNODES``, ``PET_NPROC_PER_NODE``, ``PET_NODE_RANK``,
``PET_MASTER_ADDR``/``PORT`` (read by torchrun) and ``MASTER_ADDR``, ``WORLD_SIZE``, ``RANK``;
checkpoints and data are on MinIO (credentials from a Secret), so a restarted pod
(restartPolicy OnFailure) resumes from the newest checkpoint.

``launch`` creates the job through the training operator and waits for it; ``run_local`` runs
the very same entrypoint with a local ``torchrun`` (no cluster).
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from typing import Literal

from pydantic import Field

from semisup_core import __version__
from semisup_core import config as cfglib
from semisup_core import storage
from semisup_core.config import StageConfig
from semisup_core.errors import ConfigError, SemisupError
from semisup_core.train import TrainConfig

log = logging.getLogger(__name__)

CONFIG_NAME = "pytorchjob-config.yaml"
CONFIG_MOUNT = "/etc/semisup"  # where a config_map job mounts its ConfigMap


class JobFailed(SemisupError):
    """The PyTorchJob ended in Failed (or did not finish in time)."""


TRAIN_IMAGE = f"ghcr.io/semisup/semisup-train:{__version__}"
#: objective -> the stage (and image, semisup-<stage>) its pods run, where not ``train``
OBJECTIVE_STAGES = {"llp": "llp", "contrastive": "contrastive", "distill": "distill",
                    "weak": "weak-train"}


class JobSpec(StageConfig):
    """A distributed training stage as a PyTorchJob (or a local torchrun)."""

    name: str = Field(pattern=r"^[a-z0-9]([-a-z0-9]{0,50}[a-z0-9])?$",
                      description="job name (DNS-1035 label, <= 52 chars: pods add suffixes)")
    namespace: str = Field("semisup", description="namespace of the job")
    image: str = Field(TRAIN_IMAGE, description="the pods' image: images/train (for objective "
                       "llp, contrastive, distill or weak this default means that stage's image)")
    train: dict = Field(description="the TrainConfig of the run (out, data, model, epochs, ...); "
                                    "out and data should be s3:// or minio:// URIs on a cluster")
    config_uri: str | None = Field(None, description="where the launcher writes the TrainConfig "
                                   "YAML the pods read; default <train.out>/" + CONFIG_NAME)
    workers: int = Field(1, ge=0, description="Worker replicas besides the Master (nodes - 1)")
    nproc_per_node: int = Field(1, ge=1, description="processes per pod: GPUs per node, or 1-2 on CPU")
    gpus_per_node: int = Field(0, ge=0, description="nvidia.com/gpu per pod (0 = CPU job)")
    cpu: str = Field("2", description="CPU request and limit per pod")
    memory: str = Field("8Gi", description="memory request and limit per pod")
    shm_size: str = Field("2Gi", description="/dev/shm size (a memory-backed emptyDir) for "
                                             "DataLoader workers; Docker's 64Mi default is too small")
    elastic_min: int | None = Field(None, ge=1, description="elastic: minimum nodes (with elastic_max)")
    elastic_max: int | None = Field(None, ge=1, description="elastic: maximum nodes")
    max_restarts: int = Field(3, ge=0, description="elastic: torchrun restarts before failing")
    backoff_limit: int = Field(3, ge=0, description="pod restarts before the job fails")
    clean_pod_policy: Literal["Running", "All", "None"] = Field(
        "Running", description="pods the operator deletes when the job ends: Running (pods still "
        "running, e.g. workers left waiting on a failed master; pods that exited keep their logs "
        "until the TTL), All, or None")
    ttl_seconds_after_finished: int | None = Field(
        86400, ge=0, description="the finished job and its pods are deleted this long after it "
                                 "ends (runPolicy.ttlSecondsAfterFinished); null keeps them")
    storage_secret: str = Field("semisup-minio", description="Secret with S3_ENDPOINT, "
                                "AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY (env for the pods)")
    gpu_toleration: str = Field("nvidia.com/gpu", description="taint key tolerated on GPU nodes")
    service_account: str | None = Field(None, description="pod service account (none needed)")
    config_map: str | None = Field(None, description="read the TrainConfig from this ConfigMap "
                                   "(mounted at /etc/semisup) instead of config_uri: for jobs "
                                   "applied with kubectl, where no launcher writes the config")
    suspend: bool = Field(False, description="create the job suspended (runPolicy.suspend); "
                          "kubectl patch it to start, e.g. after the previous stage finished")
    pod_labels: dict[str, str] = Field({}, description="extra labels on the job's pods, e.g. a "
                                       "Kueue queue or a cost-attribution team")
    poll_seconds: float = Field(15, gt=0, description="how often the launcher reads the job's "
                                "status while it waits")

    @property
    def stage(self) -> str:
        """The stage the pods run: the objective's own stage and image (``llp``, whose kNN core
        needs faiss; ``contrastive``, ``distill``; ``weak-train`` for objective ``weak``), else
        ``train``."""
        objective = self.train.get("objective")
        return OBJECTIVE_STAGES.get(objective, "train")

    @property
    def pod_image(self) -> str:
        if self.image == TRAIN_IMAGE:
            return f"ghcr.io/semisup/semisup-{self.stage}:{__version__}"
        return self.image

    def train_config(self) -> TrainConfig:
        """The validated training config the pods run (typos fail here, not in the pod)."""
        return TrainConfig(**self.train)

    def config_location(self) -> str:
        """Where the pods read the TrainConfig."""
        if self.config_map:
            return f"{CONFIG_MOUNT}/{CONFIG_NAME}"
        return self.config_uri or storage.join(self.train_config().out, CONFIG_NAME)


def entrypoint(config_uri: str, stage: str = "train") -> list[str]:
    """The pods' command; torchrun takes nnodes/nproc/rank/rendezvous from the operator's PET_*."""
    return ["torchrun", "-m", "semisup", "stage", stage, "--config", config_uri]


def _resources(spec: JobSpec):
    from kubernetes.client import V1ResourceRequirements
    amounts = {"cpu": spec.cpu, "memory": spec.memory}
    if spec.gpus_per_node:
        amounts["nvidia.com/gpu"] = str(spec.gpus_per_node)
    return V1ResourceRequirements(requests=dict(amounts), limits=dict(amounts))


def _pod(spec: JobSpec, config_uri: str):
    from kubernetes.client import (V1Capabilities, V1ConfigMapVolumeSource, V1Container,
                                   V1EmptyDirVolumeSource, V1EnvFromSource, V1EnvVar, V1ObjectMeta,
                                   V1PodSecurityContext, V1PodSpec, V1PodTemplateSpec,
                                   V1SeccompProfile, V1SecretEnvSource, V1SecurityContext,
                                   V1Toleration, V1Volume, V1VolumeMount)
    # Pod Security "restricted" (tests/cluster/test_security.py) and a read-only root file
    # system: what a stage writes locally (DALI's shard cache, numba's cache, HOME) goes to /tmp
    volumes = [V1Volume(name="dshm", empty_dir=V1EmptyDirVolumeSource(
        medium="Memory", size_limit=spec.shm_size)), V1Volume(name="tmp", empty_dir=V1EmptyDirVolumeSource())]
    mounts = [V1VolumeMount(name="dshm", mount_path="/dev/shm"),
              V1VolumeMount(name="tmp", mount_path="/tmp")]
    if spec.config_map:
        volumes.append(V1Volume(name="config", config_map=V1ConfigMapVolumeSource(
            name=spec.config_map)))
        mounts.append(V1VolumeMount(name="config", mount_path=CONFIG_MOUNT, read_only=True))
    container = V1Container(
        name="pytorch",  # the operator finds the training container by this name
        image=spec.pod_image, command=entrypoint(config_uri, spec.stage), resources=_resources(spec),
        env=[V1EnvVar(name="PYTHONUNBUFFERED", value="1"), V1EnvVar(name="HOME", value="/tmp")],
        env_from=[V1EnvFromSource(secret_ref=V1SecretEnvSource(name=spec.storage_secret))],
        volume_mounts=mounts,
        security_context=V1SecurityContext(allow_privilege_escalation=False,
                                           capabilities=V1Capabilities(drop=["ALL"]),
                                           read_only_root_filesystem=True))
    tolerations = ([V1Toleration(key=spec.gpu_toleration, operator="Exists", effect="NoSchedule")]
                   if spec.gpus_per_node else None)
    return V1PodTemplateSpec(
        metadata=V1ObjectMeta(labels={**spec.pod_labels, "app.kubernetes.io/part-of": "semisup",
                                      "semisup/stage": "train"}),
        spec=V1PodSpec(containers=[container], tolerations=tolerations,
                       service_account_name=spec.service_account,
                       # training never calls the API server: no token in the pods
                       automount_service_account_token=bool(spec.service_account),
                       security_context=V1PodSecurityContext(
                           run_as_non_root=True, seccomp_profile=V1SeccompProfile(type="RuntimeDefault")),
                       volumes=volumes))


def build_job(spec: JobSpec):
    """The PyTorchJob for ``spec`` (kubeflow-training SDK models)."""
    from kubeflow.training import models as m
    from kubernetes.client import V1ObjectMeta
    spec.train_config()
    if (spec.elastic_min is None) != (spec.elastic_max is None):
        raise ConfigError("elastic_min and elastic_max go together")
    if spec.elastic_max is not None and not spec.elastic_min <= spec.workers + 1 <= spec.elastic_max:
        raise ConfigError(f"workers + 1 = {spec.workers + 1} nodes is outside elastic "
                          f"[{spec.elastic_min}, {spec.elastic_max}]")
    pod = _pod(spec, spec.config_location())
    replicas = {"Master": m.KubeflowOrgV1ReplicaSpec(replicas=1, restart_policy="OnFailure",
                                                     template=pod)}
    if spec.workers:
        replicas["Worker"] = m.KubeflowOrgV1ReplicaSpec(replicas=spec.workers,
                                                        restart_policy="OnFailure", template=pod)
    elastic = None
    if spec.elastic_max is not None:
        elastic = m.KubeflowOrgV1ElasticPolicy(min_replicas=spec.elastic_min,
                                               max_replicas=spec.elastic_max,
                                               max_restarts=spec.max_restarts, rdzv_backend="c10d")
    return m.KubeflowOrgV1PyTorchJob(
        api_version="kubeflow.org/v1", kind="PyTorchJob",
        metadata=V1ObjectMeta(name=spec.name, namespace=spec.namespace,
                              labels={"app.kubernetes.io/part-of": "semisup"}),
        spec=m.KubeflowOrgV1PyTorchJobSpec(
            pytorch_replica_specs=replicas, nproc_per_node=str(spec.nproc_per_node),
            elastic_policy=elastic,
            run_policy=m.KubeflowOrgV1RunPolicy(backoff_limit=spec.backoff_limit,
                                                clean_pod_policy=spec.clean_pod_policy,
                                                ttl_seconds_after_finished=spec.ttl_seconds_after_finished,
                                                suspend=spec.suspend or None)))


def to_manifest(job) -> dict:
    """The job as the plain dict kubectl would send (camelCase, no nulls)."""
    from kubernetes.client import ApiClient
    return ApiClient().sanitize_for_serialization(job)


def write_config(spec: JobSpec) -> str:
    """Write the TrainConfig YAML where the pods (or local torchrun) read it."""
    if spec.config_map:
        raise ConfigError(f"job {spec.name} reads ConfigMap {spec.config_map}: such jobs are "
                          "applied with kubectl (k8s/), the launcher writes config_uri instead")
    uri = spec.config_location()
    storage.put_bytes(uri, cfglib.dump(spec.train_config()).encode())
    return uri


def _api_message(e: Exception) -> str:
    """The API server's one-line message behind a TrainingClient error (e.g. AlreadyExists)."""
    cause = e.__cause__ or e.__context__
    try:
        return json.loads(cause.body)["message"]
    except (AttributeError, TypeError, ValueError, KeyError):
        return str(cause or e).splitlines()[0]


def launch(spec: JobSpec, client=None, timeout_s: int = 7 * 24 * 3600) -> dict:
    """Create the PyTorchJob, log its status until it ends; raises JobFailed if it fails."""
    from kubeflow.training import TrainingClient
    # $KUBECONFIG as kubectl reads it (when the launcher runs), else in-cluster credentials
    client = client or TrainingClient(config_file=os.environ.get("KUBECONFIG") or None,
                                      namespace=spec.namespace, job_kind="PyTorchJob")
    write_config(spec)
    try:
        client.create_job(job=build_job(spec), namespace=spec.namespace)
    except RuntimeError as e:  # the SDK wraps the API error in a multi-line message
        raise JobFailed(f"could not create PyTorchJob {spec.namespace}/{spec.name}: "
                        f"{_api_message(e)}") from e
    log.info("created PyTorchJob %s/%s", spec.namespace, spec.name)
    deadline, last = time.time() + timeout_s, None
    while time.time() < deadline:
        # one read decides: the state and the reason come from the same object
        job = client.get_job(spec.name, spec.namespace, job_kind="PyTorchJob")
        conds = (job.status.conditions if job.status else None) or []
        state = conds[-1].type if conds else "Pending"
        if state != last:
            log.info("PyTorchJob %s: %s", spec.name, state)
            last = state
        ended = {c.type: c for c in conds if c.status == "True" and c.type in ("Succeeded", "Failed")}
        if "Succeeded" in ended:
            return {"name": spec.name, "state": "Succeeded"}
        if "Failed" in ended:
            c = ended["Failed"]
            raise JobFailed(f"PyTorchJob {spec.namespace}/{spec.name} failed ({c.reason}: {c.message})")
        time.sleep(spec.poll_seconds)
    raise JobFailed(f"PyTorchJob {spec.namespace}/{spec.name} did not finish in {timeout_s} s")


def run_local(spec: JobSpec) -> dict:
    """The same entrypoint under a local torchrun (--standalone, ``nproc_per_node`` processes)."""
    uri = write_config(spec)
    cmd = entrypoint(uri, spec.stage)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           f"--nproc_per_node={spec.nproc_per_node}"] + cmd[1:]
    log.info("running %s", " ".join(cmd))
    rc = subprocess.run(cmd, env=dict(os.environ, PYTHONUNBUFFERED="1")).returncode
    if rc != 0:
        raise JobFailed(f"local torchrun of {spec.name} exited with status {rc}")
    return {"name": spec.name, "state": "Succeeded", "local": True}


Backend = Literal["kubernetes", "local"]


def run(spec: JobSpec, backend: Backend) -> dict:
    return launch(spec) if backend == "kubernetes" else run_local(spec)
