"""KFP component that runs a training stage as a PyTorchJob (or a local torchrun)."""

from kfp import dsl
from kfp.dsl import Model, Output

from components import image


@dsl.component(base_image=image("launcher"), install_kfp_package=False)
def pytorchjob(name: str, train: dict, model: Output[Model], backend: str = "kubernetes",
               namespace: str = "semisup", train_image: str = "", workers: int = 1,
               nproc_per_node: int = 1, gpus_per_node: int = 0, cpu: str = "2",
               memory: str = "8Gi", shm_size: str = "2Gi", elastic_min: int = 0,
               elastic_max: int = 0, storage_secret: str = "semisup-minio") -> str:
    """Train on several nodes: create a PyTorchJob (Master + Workers), wait, fail if it fails.

    Args:
        name: job name (lowercase DNS label, <= 52 characters).
        train: the TrainConfig (out, data, model, epochs, ...); out and data on s3:// or
            minio:// so every pod reads and checkpoints there.
        backend: kubernetes (create the PyTorchJob through the training operator) or local
            (run the same entrypoint with torchrun on this machine).
        namespace: namespace of the job.
        train_image: image of the job's pods; empty = the train stage image of this release.
        workers: Worker replicas besides the Master (nodes - 1).
        nproc_per_node: processes per pod (GPUs per node; 1-2 on CPU).
        gpus_per_node: nvidia.com/gpu per pod; > 0 adds the GPU toleration.
        cpu: CPU request/limit per pod.
        memory: memory request/limit per pod.
        shm_size: /dev/shm size for DataLoader workers.
        elastic_min: elastic training: minimum nodes (0 = not elastic).
        elastic_max: elastic training: maximum nodes (0 = not elastic).
        storage_secret: Secret with the MinIO endpoint and credentials, as env for the pods.

    Returns:
        model: the trained model (copied from train.out when the job succeeded).
        Output: the job's final state.
    """
    from components.pytorchjob.runner import run
    return run(name=name, train=train, model=model, backend=backend, namespace=namespace,
               image=train_image, workers=workers, nproc_per_node=nproc_per_node,
               gpus_per_node=gpus_per_node, cpu=cpu, memory=memory, shm_size=shm_size,
               elastic_min=elastic_min, elastic_max=elastic_max,
               storage_secret=storage_secret)["state"]
