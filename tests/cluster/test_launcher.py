"""The launcher component's Kubernetes backend against the real training operator: it creates
the PyTorchJob through the kubeflow-training SDK (TrainingClient, from $KUBECONFIG as in a
pod's kubeconfig), the operator makes the pods and services, kwok (the fake kubelet) ends
them, and the launcher returns success -- or fails the step with the job's reason."""

from __future__ import annotations

import pytest
from kubernetes import client

from semisup.pytorchjob import JobFailed, JobSpec, run
from semisup_core import storage
from tests.cluster.conftest import JOB_NAME_LABEL, OUTCOME_LABEL, TORCHRUN_ENV


@pytest.fixture
def kubeconfig(cluster, monkeypatch):
    monkeypatch.setenv("KUBECONFIG", str(cluster.kubeconfig))
    return cluster.kubeconfig


def _spec(tmp_path, namespace: str, outcome: str, **kw) -> JobSpec:
    train = {"out": str(tmp_path / "run"), "data": {"train": str(tmp_path / "data")},
             "model": "small_resnet8", "epochs": 1, "batch_size": 16}
    return JobSpec(name="teacher", namespace=namespace, train=train, cpu="1500m", memory="3Gi",
                   shm_size="1Gi", pod_labels={OUTCOME_LABEL: outcome}, poll_seconds=0.5, **kw)


def _pods(cluster, namespace: str) -> dict:
    pods = client.CoreV1Api(cluster.api_client).list_namespaced_pod(
        namespace, label_selector=f"{JOB_NAME_LABEL}=teacher").items
    return {p.metadata.name: p for p in pods}


def test_launcher_runs_a_gpu_job_to_success(cluster, namespace, kubeconfig, tmp_path):
    # every pod is inspected after the job: keep them (the default deletes pods still running)
    spec = _spec(tmp_path, namespace, "succeed", workers=2, nproc_per_node=4, gpus_per_node=2,
                 clean_pod_policy="None")
    assert run(spec, "kubernetes") == {"name": "teacher", "state": "Succeeded"}
    assert storage.exists(str(tmp_path / "run" / "pytorchjob-config.yaml"))  # what pods read
    pods = _pods(cluster, namespace)
    assert sorted(pods) == ["teacher-master-0", "teacher-worker-0", "teacher-worker-1"]
    services = client.CoreV1Api(cluster.api_client).list_namespaced_service(
        namespace, label_selector=f"{JOB_NAME_LABEL}=teacher").items
    assert sorted(s.metadata.name for s in services) == sorted(pods)
    ranks = set()
    assert pods["teacher-master-0"].status.phase == "Succeeded"  # the job ends with its Master
    for name, pod in pods.items():
        assert pod.spec.node_name == "kwok-gpu-0"
        (c,) = pod.spec.containers
        env = {e.name: e.value for e in c.env}
        assert TORCHRUN_ENV <= set(env), TORCHRUN_ENV - set(env)
        assert env["MASTER_ADDR"] == env["PET_MASTER_ADDR"] == "teacher-master-0"
        assert env["MASTER_PORT"] == env["PET_MASTER_PORT"]
        assert env["PET_NNODES"] == "3" and env["PET_NPROC_PER_NODE"] == "4"
        # the operator counts processes, not pods: 3 nodes x 4 (torchrun's own env wins in
        # the training processes anyway); RANK is the node's rank
        assert env["WORLD_SIZE"] == "12" and env["PET_NODE_RANK"] == env["RANK"]
        ranks.add(env["RANK"])
        assert c.command[-2:] == ["--config", str(tmp_path / "run" / "pytorchjob-config.yaml")]
        assert [e.secret_ref.name for e in c.env_from] == ["semisup-minio"]
        amounts = {"cpu": "1500m", "memory": "3Gi", "nvidia.com/gpu": "2"}
        assert c.resources.requests == amounts and c.resources.limits == amounts
        assert [(t.key, t.operator, t.effect) for t in pod.spec.tolerations
                if t.key == "nvidia.com/gpu"] == [("nvidia.com/gpu", "Exists", "NoSchedule")]
        shm = next(v for v in pod.spec.volumes if v.name == "dshm")
        assert (shm.empty_dir.medium, shm.empty_dir.size_limit) == ("Memory", "1Gi")
        # /dev/shm and the writable /tmp of a read-only root: no API token either (the
        # ServiceAccount admission would add one)
        assert [(m.name, m.mount_path) for m in c.volume_mounts] == [("dshm", "/dev/shm"),
                                                                      ("tmp", "/tmp")]
        assert pod.spec.security_context.run_as_non_root is True
    assert ranks == {"0", "1", "2"}


def test_a_cpu_job_has_no_gpu_and_no_toleration(cluster, namespace, kubeconfig, tmp_path):
    run(_spec(tmp_path, namespace, "succeed", workers=0), "kubernetes")
    (pod,) = _pods(cluster, namespace).values()
    assert pod.spec.node_name == "kwok-cpu-0"  # the GPU node's taint keeps it off
    assert "nvidia.com/gpu" not in pod.spec.containers[0].resources.limits
    assert not any(t.key == "nvidia.com/gpu" for t in pod.spec.tolerations or [])


def test_launcher_fails_the_step_with_the_jobs_reason(cluster, namespace, kubeconfig, tmp_path):
    spec = _spec(tmp_path, namespace, "fail", workers=1, backoff_limit=1)
    with pytest.raises(JobFailed, match=rf"PyTorchJob {namespace}/teacher failed \(.*backoff limit"):
        run(spec, "kubernetes")


def test_launcher_refuses_a_job_that_exists_already(cluster, namespace, kubeconfig, tmp_path):
    """A rerun of the same step must not silently attach to (or clobber) the old job."""
    run(_spec(tmp_path, namespace, "succeed", workers=0), "kubernetes")
    with pytest.raises(JobFailed) as e:
        run(_spec(tmp_path, namespace, "succeed", workers=0), "kubernetes")
    assert str(e.value) == (f"could not create PyTorchJob {namespace}/teacher: "
                            'pytorchjobs.kubeflow.org "teacher" already exists')


def test_a_finished_job_and_its_pods_go_after_the_ttl(cluster, namespace, kubeconfig, tmp_path):
    objects = client.CustomObjectsApi(cluster.api_client)
    spec = _spec(tmp_path, namespace, "succeed", workers=1, ttl_seconds_after_finished=2)
    assert run(spec, "kubernetes")["state"] == "Succeeded"
    job = objects.get_namespaced_custom_object("kubeflow.org", "v1", namespace, "pytorchjobs",
                                               "teacher")  # still there right after it ends
    assert job["spec"]["runPolicy"]["cleanPodPolicy"] == "Running"
    assert job["spec"]["runPolicy"]["ttlSecondsAfterFinished"] == 2

    def gone():
        try:
            objects.get_namespaced_custom_object("kubeflow.org", "v1", namespace, "pytorchjobs",
                                                 "teacher")
            return False
        except client.rest.ApiException as e:
            return e.status == 404
    cluster.wait_for("the TTL to delete the finished PyTorchJob", gone, timeout=60)
    cluster.wait_for("its pods to be garbage-collected", lambda: not _pods(cluster, namespace),
                     timeout=60)
