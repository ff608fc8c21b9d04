"""What each pipeline task asks the cluster for: CPU, memory, accelerators, GPU node selection,
``/dev/shm``, caching.

Tasks fall into three kinds by their component:

| kind | components | what it needs |
|---|---|---|
| ``train`` | train, llp, contrastive, distill, weak-train | the most CPU/memory, the GPUs, a large ``/dev/shm`` for DataLoader workers |
| ``infer`` | score, embed | GPUs for the forward pass (DALI ``mixed`` decoding, faiss-gpu) |
| ``light`` | everything else (import, split, dedup, synsets, select, evaluate, report, the launcher that only waits on a PyTorchJob) | a little CPU and memory |

Every amount is a pipeline parameter (``train_cpu``, ``infer_gpus``, ...: KFP resolves them when
the run starts), so one compiled YAML serves a CPU and a GPU cluster; :data:`PROFILES` holds
the sets of values (``semisup submit --profile gpu``; ``gpu-launcher`` when the training
tasks go through the PyTorchJob launcher and only wait). GPU tasks also get the node
selector and tolerations of the profile (``gpu_node_selector``, ``gpu_tolerations``; empty on
CPU). kfp.local ignores all of it.

Caching (KFP's, keyed on a task's inputs): every stage is a deterministic function of its
inputs and seed, so caching stays on except for ``report`` (cheap, and a rerun should render
with the current code) and the launcher (its effect is a PyTorchJob on the cluster, not only
its outputs).
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

#: the extended resource GPUs are requested as (the NVIDIA device plugin's)
GPU = "nvidia.com/gpu"
KINDS = {"train": "train", "llp": "train", "contrastive": "train", "distill": "train",
         "weak-train": "train", "score": "infer", "embed": "infer"}
NOT_CACHED = {"report", "pytorchjob"}
SHM = "dshm"


class TaskResources(BaseModel):
    """Requests (= limits, so a task's QoS is Guaranteed and it is not evicted first)."""

    model_config = ConfigDict(extra="forbid")
    cpu: str = Field(description="CPU request and limit, e.g. '2' or '500m'")
    memory: str = Field(description="memory request and limit, e.g. '8Gi'")
    gpus: int = Field(0, ge=0, description="accelerators (0: none)")


class Profile(BaseModel):
    """One set of values for the resource parameters of every pipeline."""

    model_config = ConfigDict(extra="forbid")
    train: TaskResources
    infer: TaskResources
    light: TaskResources
    accelerator: str = GPU
    gpu_node_selector: dict[str, str] = {}
    gpu_tolerations: list[dict] = []

    def parameters(self, kinds: tuple[str, ...] = ("train", "infer", "light")) -> dict:
        """The pipeline parameters this profile sets, for a pipeline whose tasks are of
        ``kinds``."""
        out = {}
        for kind in kinds:
            r = getattr(self, kind)
            out.update({f"{kind}_cpu": r.cpu, f"{kind}_memory": r.memory})
            if kind != "light":
                out[f"{kind}_gpus"] = r.gpus
        return dict(out, accelerator=self.accelerator, gpu_node_selector=self.gpu_node_selector,
                    gpu_tolerations=self.gpu_tolerations)


PROFILES = {
    "cpu": Profile(train=TaskResources(cpu="4", memory="16Gi"),
                   infer=TaskResources(cpu="4", memory="8Gi"),
                   light=TaskResources(cpu="1", memory="2Gi")),
    # one GPU per train/score/embed task (multi-node training goes through the launcher's
    # PyTorchJob, whose pods request their own GPUs); the node pool README "Going to a cluster"
    # describes: tainted nvidia.com/gpu:NoSchedule, labelled by the GPU operator
    "gpu": Profile(train=TaskResources(cpu="8", memory="64Gi", gpus=1),
                   infer=TaskResources(cpu="8", memory="32Gi", gpus=1),
                   light=TaskResources(cpu="1", memory="2Gi"),
                   gpu_node_selector={"nvidia.com/gpu.present": "true"},
                   gpu_tolerations=[{"key": GPU, "operator": "Exists", "effect": "NoSchedule"}]),
    # training through the PyTorchJob launcher (launcher.backend: pytorchjob): a train task only
    # waits on its job, whose pods request the GPUs (launcher.gpus_per_node); score and embed
    # still run in their task on a GPU
    "gpu-launcher": Profile(train=TaskResources(cpu="1", memory="2Gi"),
                            infer=TaskResources(cpu="8", memory="32Gi", gpus=1),
                            light=TaskResources(cpu="1", memory="2Gi"),
                            gpu_node_selector={"nvidia.com/gpu.present": "true"},
                            gpu_tolerations=[{"key": GPU, "operator": "Exists",
                                              "effect": "NoSchedule"}]),
}
DEFAULT = PROFILES["cpu"]
SHM_SIZE = "8Gi"  # the train tasks' /dev/shm (memory-backed; counts against their memory)


def kind(task) -> str:
    return KINDS.get(task.component_spec.name, "light")


def apply(task, p: dict) -> None:
    """Resources, GPU placement, /dev/shm and caching for one task; ``p`` holds the pipeline's
    resource parameters (names as :meth:`Profile.parameters`)."""
    from kfp import kubernetes
    k = kind(task)
    task.set_cpu_request(p[f"{k}_cpu"]).set_cpu_limit(p[f"{k}_cpu"])
    task.set_memory_request(p[f"{k}_memory"]).set_memory_limit(p[f"{k}_memory"])
    if k != "light":
        task.set_accelerator_type(p["accelerator"]).set_accelerator_limit(p[f"{k}_gpus"])
        kubernetes.add_node_selector_json(task, p["gpu_node_selector"])
        kubernetes.add_toleration_json(task, p["gpu_tolerations"])
    # kfp 2.17's resource setters do not register their channels with the task (kfp-kubernetes'
    # helpers do): a task inside a ParallelFor or an If then named parameters its sub-DAG was
    # never given ("Parent pipeline input argument 'pipelinechannel--accelerator' not found")
    used = [f"{k}_cpu", f"{k}_memory"] + ([f"{k}_gpus", "accelerator"] if k != "light" else [])
    task.register_pipeline_channels([p[name] for name in used if hasattr(p[name], "pattern")])
    if k == "train":
        kubernetes.empty_dir_mount(task, volume_name=SHM, mount_path="/dev/shm", medium="Memory",
                                   size_limit=SHM_SIZE)
    task.set_caching_options(task.component_spec.name not in NOT_CACHED)
