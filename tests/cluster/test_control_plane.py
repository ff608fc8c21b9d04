"""Smoke tests of the loopback control plane (tests/cluster/conftest.py: ``cluster``): the API
server, the controllers, the fake nodes, and a PyTorchJob from semisup.pytorchjob run by the
real training operator, ending Succeeded or Failed as its pods' kwok outcome label says."""

from __future__ import annotations

import pytest
from kubernetes import client, watch
from kubernetes.client.exceptions import ApiException

from semisup.pytorchjob import JobSpec, build_job, to_manifest
from tests.cluster.conftest import JOB_NAME_LABEL, OUTCOME_LABEL, TORCHRUN_ENV

TRAIN = {"out": "s3://semisup/runs/teacher", "data": {"train": "s3://semisup/data/labelled"},
         "model": "small_resnet8", "epochs": 2, "batch_size": 16}
REPLICA_TYPE_LABEL = "training.kubeflow.org/replica-type"


def _core(cluster) -> client.CoreV1Api:
    return client.CoreV1Api(cluster.api_client)


def test_apiserver_answers(cluster):
    version = client.VersionApi(cluster.api_client).get_code()
    assert version.git_version.startswith("v1.33."), version.git_version
    body = cluster.api_client.call_api("/readyz", "GET", response_type="str")[0]
    assert body == "ok"


def test_fake_nodes_are_ready_and_the_gpu_node_is_tainted(cluster):
    nodes = {n.metadata.name: n for n in _core(cluster).list_node().items}
    assert set(nodes) == {"kwok-cpu-0", "kwok-gpu-0"}
    for n in nodes.values():
        assert any(c.type == "Ready" and c.status == "True" for c in n.status.conditions)
    gpu = nodes["kwok-gpu-0"]
    assert gpu.status.allocatable["nvidia.com/gpu"] == "8"
    assert [(t.key, t.effect) for t in gpu.spec.taints] == [("nvidia.com/gpu", "NoSchedule")]
    assert "nvidia.com/gpu" not in nodes["kwok-cpu-0"].status.allocatable


def test_pytorchjob_crd_is_established(cluster):
    crd = client.ApiextensionsV1Api(cluster.api_client).read_custom_resource_definition(
        "pytorchjobs.kubeflow.org")
    assert any(c.type == "Established" and c.status == "True" for c in crd.status.conditions)
    assert [v.name for v in crd.spec.versions] == ["v1"]


def test_namespace_gets_its_service_account_and_garbage_is_collected(cluster, namespace):
    core = _core(cluster)
    assert core.read_namespaced_service_account("default", namespace).metadata.name == "default"
    owner = core.create_namespaced_config_map(namespace, client.V1ConfigMap(
        metadata=client.V1ObjectMeta(name="owner")))
    core.create_namespaced_config_map(namespace, client.V1ConfigMap(metadata=client.V1ObjectMeta(
        name="dependent", owner_references=[client.V1OwnerReference(
            api_version="v1", kind="ConfigMap", name="owner", uid=owner.metadata.uid)])))
    core.delete_namespaced_config_map("owner", namespace)
    cluster.wait_for("the garbage collector to delete the dependent ConfigMap", lambda: all(
        cm.metadata.name != "dependent" for cm in core.list_namespaced_config_map(namespace).items))


@pytest.mark.parametrize("outcome, restart_policy, phase, exit_code", [
    ("succeed", "Never", "Succeeded", 0),
    ("fail", "Never", "Failed", 1),
])
def test_kwok_pods_end_as_their_label_says(cluster, namespace, outcome, restart_policy, phase,
                                           exit_code):
    core = _core(cluster)
    core.create_namespaced_pod(namespace, client.V1Pod(
        metadata=client.V1ObjectMeta(name="p", labels={OUTCOME_LABEL: outcome}),
        spec=client.V1PodSpec(restart_policy=restart_policy, containers=[
            client.V1Container(name="c", image="busybox")])))
    pod = cluster.wait_for(f"pod phase {phase}", lambda: _pod_in_phase(core, namespace, "p", phase))
    assert pod.status.container_statuses[0].state.terminated.exit_code == exit_code


def _pod_in_phase(core, namespace, name, phase):
    pod = core.read_namespaced_pod(name, namespace)
    return pod if pod.status.phase == phase else None


def _manifest(namespace: str, outcome: str, **spec) -> dict:
    """A PyTorchJob as the launcher builds it, its pods labelled with the kwok outcome."""
    job = to_manifest(build_job(JobSpec(name="smoke", namespace=namespace, train=TRAIN,
                                        cpu="1", memory="1Gi", **spec)))
    for replica in job["spec"]["pytorchReplicaSpecs"].values():
        replica["template"]["metadata"]["labels"][OUTCOME_LABEL] = outcome
    return job


def _submit(cluster, namespace: str, outcome: str, **spec) -> dict:
    return client.CustomObjectsApi(cluster.api_client).create_namespaced_custom_object(
        "kubeflow.org", "v1", namespace, "pytorchjobs", _manifest(namespace, outcome, **spec))


def test_the_operators_webhook_rejects_a_job_it_cannot_run(cluster, namespace):
    """The CRD schema allows any container name; the operator's validating webhook (served on
    127.0.0.1, its CA in the caBundle) requires one named "pytorch"."""
    job = _manifest(namespace, "succeed")
    job["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0]["name"] = "x"
    with pytest.raises(ApiException) as err:
        client.CustomObjectsApi(cluster.api_client).create_namespaced_custom_object(
            "kubeflow.org", "v1", namespace, "pytorchjobs", job)
    assert "validator.pytorchjob.training-operator.kubeflow.org" in err.value.body
    assert "must have at least one container with name pytorch" in err.value.body


def _job_condition(cluster, namespace: str, name: str, kind: str):
    job = client.CustomObjectsApi(cluster.api_client).get_namespaced_custom_object(
        "kubeflow.org", "v1", namespace, "pytorchjobs", name)
    conds = (job.get("status") or {}).get("conditions") or []
    return next((c for c in conds if c["type"] == kind and c["status"] == "True"), None)


def _job_pods(core, namespace: str, n: int):
    pods = core.list_namespaced_pod(namespace, label_selector=f"{JOB_NAME_LABEL}=smoke").items
    return pods if len(pods) == n else None


def test_pytorchjob_runs_through_the_operator_and_succeeds(cluster, namespace):
    core = _core(cluster)
    _submit(cluster, namespace, "succeed", workers=1, gpus_per_node=1)
    pods = cluster.wait_for("the operator's Master and Worker pods",
                            lambda: _job_pods(core, namespace, 2))
    services = core.list_namespaced_service(namespace,
                                            label_selector=f"{JOB_NAME_LABEL}=smoke").items
    assert sorted(s.metadata.name for s in services) == ["smoke-master-0", "smoke-worker-0"]
    ranks = {}
    for pod in pods:
        env = {e.name: e.value for e in pod.spec.containers[0].env}
        assert TORCHRUN_ENV <= set(env), TORCHRUN_ENV - set(env)
        assert env["MASTER_ADDR"] == env["PET_MASTER_ADDR"] == "smoke-master-0"
        assert env["WORLD_SIZE"] == env["PET_NNODES"] == "2" and env["PET_NPROC_PER_NODE"] == "1"
        ranks[pod.metadata.labels[REPLICA_TYPE_LABEL]] = env["RANK"]
    assert ranks == {"master": "0", "worker": "1"}
    cluster.wait_for("PyTorchJob Succeeded",
                     lambda: _job_condition(cluster, namespace, "smoke", "Succeeded"))
    master = core.read_namespaced_pod("smoke-master-0", namespace)
    assert master.spec.node_name == "kwok-gpu-0"  # 1 nvidia.com/gpu + the toleration
    assert master.status.phase == "Succeeded"
    assert master.status.container_statuses[0].state.terminated.exit_code == 0


def test_pytorchjob_whose_pods_exit_1_fails(cluster, namespace):
    core = _core(cluster)
    _submit(cluster, namespace, "fail", workers=1, backoff_limit=2)
    # Watch, not poll: the operator deletes the pods as soon as it fails the job.
    restarted = {}
    stream = watch.Watch()
    for event in stream.stream(core.list_namespaced_pod, namespace, timeout_seconds=60):
        pod = event["object"]
        for status in pod.status.container_statuses or []:
            if status.restart_count:
                restarted[pod.metadata.name] = (pod.spec.node_name,
                                                status.last_state.terminated.exit_code)
        if len(restarted) == 2:
            stream.stop()
    # restartPolicy OnFailure: the (fake) kubelet restarted the containers that exited 1
    assert restarted == {"smoke-master-0": ("kwok-cpu-0", 1),
                         "smoke-worker-0": ("kwok-cpu-0", 1)}, restarted
    condition = cluster.wait_for("PyTorchJob Failed",
                                 lambda: _job_condition(cluster, namespace, "smoke", "Failed"))
    assert "backoff limit" in condition["message"], condition
