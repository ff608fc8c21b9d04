"""The prod overlay's distributed MinIO on the real API server: four pods on four nodes, a
PodDisruptionBudget that selects them, lets a drain take one, and refuses any while one is
down (MinIO's write quorum is 3 of 4 drives), a PriorityClass.

kwok plays the kubelets, so MinIO itself does not run here (tests/storage runs the real server);
what is proven is what the control plane does with the objects: the scheduler's anti-affinity,
the disruption controller's status, the eviction API's refusal."""

from __future__ import annotations

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException
from kubernetes.dynamic import DynamicClient

from tests.cluster.test_apply import apply, in_namespace
from tests.k8s.overlays import build, kustomize_path, of
from tests.loopback import k8s_env

STORAGE_NODES = [f"kwok-store-{i}" for i in range(4)]
SELECTOR = "app.kubernetes.io/name=minio"


NAMESPACE = "semisup-storage-test"


@pytest.fixture
def storage_nodes(cluster):
    """Four more fake nodes and a volume for each MinIO drive (the loopback cluster has no
    provisioner), deleted afterwards (other tests count the default two nodes). Each volume
    is reserved for its claim (``claimRef``): the prod overlay applied by test_apply leaves
    claims of the same size pending in another namespace, which would take them otherwise."""
    core = client.CoreV1Api(cluster.api_client)
    for i, name in enumerate(STORAGE_NODES):
        core.create_node(k8s_env.node(name, "16", "64Gi"))
        core.create_persistent_volume(client.V1PersistentVolume(
            metadata=client.V1ObjectMeta(name=f"pv-{name}"),
            spec=client.V1PersistentVolumeSpec(
                capacity={"storage": "10Ti"}, access_modes=["ReadWriteOnce"],
                persistent_volume_reclaim_policy="Retain",
                claim_ref=client.V1ObjectReference(namespace=NAMESPACE, name=f"data-minio-{i}"),
                host_path=client.V1HostPathVolumeSource(path=f"/mnt/{name}"))))
    yield STORAGE_NODES
    for name in STORAGE_NODES:
        core.delete_node(name)
        core.delete_persistent_volume(f"pv-{name}")
    cluster.wait_for("the storage nodes to go", lambda: not {
        n.metadata.name for n in core.list_node().items} & set(STORAGE_NODES))


def test_prod_minio_spreads_over_nodes_and_its_pdb_keeps_three_up(cluster, storage_nodes):
    ns = NAMESPACE
    core = client.CoreV1Api(cluster.api_client)
    docs = [d for d in in_namespace(build(kustomize_path(), "prod"), ns)
            if d["kind"] in ("Namespace", "PriorityClass", "Service", "StatefulSet",
                             "PodDisruptionBudget", "NetworkPolicy")]
    docs.sort(key=lambda d: d["kind"] not in ("Namespace", "PriorityClass"))
    dyn = DynamicClient(cluster.api_client)
    try:
        for doc in docs:
            apply(dyn, doc)
        sts = of(docs, "StatefulSet")[0]
        pc = client.SchedulingV1Api(cluster.api_client).read_priority_class(
            sts["spec"]["template"]["spec"]["priorityClassName"])
        assert pc.value > 0

        def placed():
            pods = core.list_namespaced_pod(ns, label_selector=SELECTOR).items
            ready = [p for p in pods if p.spec.node_name and any(
                c.type == "Ready" and c.status == "True" for c in p.status.conditions or [])]
            return pods if len(ready) == 4 else None
        try:
            pods = cluster.wait_for("4 ready MinIO pods", placed, timeout=180)
        except BaseException:
            for p in core.list_namespaced_pod(ns, label_selector=SELECTOR).items:
                print(p.metadata.name, p.spec.node_name, p.status.phase,
                      [(c.type, c.status, c.message) for c in p.status.conditions or []])
            raise
        nodes = {p.spec.node_name for p in pods}
        assert len(nodes) == 4, nodes  # required anti-affinity: one pod per node
        assert all(p.spec.priority == pc.value for p in pods)

        policy = client.PolicyV1Api(cluster.api_client)
        def settled():
            status = policy.read_namespaced_pod_disruption_budget("minio", ns).status
            return status if status and status.expected_pods == status.current_healthy == 4 else None
        pdb = cluster.wait_for("the PDB's status", settled, timeout=120)
        assert pdb.disruptions_allowed == 1

        def evict(name):
            core.create_namespaced_pod_eviction(name, ns, client.V1Eviction(
                metadata=client.V1ObjectMeta(name=name, namespace=ns)))
        names = sorted(p.metadata.name for p in pods)
        evict(names[0])  # a drain may take one pod: quorum (3 of 4 drives) holds
        cluster.wait_for("the evicted pod's replacement", settled, timeout=120)
        # a node lost: one pod not ready (kwok recreates an evicted pod at once, so a second
        # eviction right after the first races it; an unready pod is what a lost node leaves)
        down = core.read_namespaced_pod_status(names[1], ns)
        for c in down.status.conditions:
            if c.type in ("Ready", "ContainersReady"):
                c.status = "False"
        core.patch_namespaced_pod_status(names[1], ns, {"status": {"conditions": [
            c.to_dict() for c in down.status.conditions]}})
        cluster.wait_for("the PDB to see a pod down", lambda: (lambda st: st.current_healthy == 3
                         and st.disruptions_allowed == 0)(
            policy.read_namespaced_pod_disruption_budget("minio", ns).status), timeout=120)
        with pytest.raises(ApiException) as refused:
            evict(names[2])  # no drain may take a second pod while one is down
        assert refused.value.status == 429, refused.value.body
        body = refused.value.body
        assert "disruption budget" in (body.decode() if isinstance(body, bytes) else body).lower()
    finally:
        core.delete_namespace(ns)
        cluster.wait_for(f"namespace {ns} to go", lambda: ns not in {
            n.metadata.name for n in core.list_namespace().items}, timeout=120)
