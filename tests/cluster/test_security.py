"""Issue 22, security proved by the real API server of tests/cluster: Pod Security Admission
"restricted" admits every pod the platform creates (both overlays' pod templates, dry-run
created as pods, and a PyTorchJob the operator turns into pods) and refuses a privileged one;
the launcher's ServiceAccount can do what the launcher needs and nothing else
(SubjectAccessReviews answered by the RBAC authorizer); the MinIO NetworkPolicy admits the
platform's pods and no other (evaluated from its selectors: without a CNI nothing enforces a
NetworkPolicy, so the test checks the policy's meaning, not packets)."""

from __future__ import annotations

import copy
import json
import uuid

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException
from kubernetes.dynamic import DynamicClient

from semisup.pytorchjob import JobSpec, build_job, to_manifest
from tests.cluster.conftest import JOB_NAME_LABEL, OUTCOME_LABEL
from tests.cluster.test_apply import apply, in_namespace
from tests.k8s.overlays import OVERLAYS, build, kustomize_path, of

RESTRICTED = {"pod-security.kubernetes.io/enforce": "restricted",
              "pod-security.kubernetes.io/enforce-version": "latest"}


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict]]:
    kustomize = kustomize_path()
    return {o: build(kustomize, o) for o in OVERLAYS}


@pytest.fixture
def restricted(cluster):
    """A namespace that enforces Pod Security "restricted", with its default ServiceAccount."""
    core = client.CoreV1Api(cluster.api_client)
    name = f"r-{uuid.uuid4().hex[:10]}"
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name,
                                                                           labels=RESTRICTED)))
    cluster.wait_for(f"ServiceAccount {name}/default", lambda: any(
        sa.metadata.name == "default" for sa in core.list_namespaced_service_account(name).items))
    yield name
    core.delete_namespace(name)


def pod_templates(docs: list[dict]):
    """(what, pod template) of every workload in ``docs``."""
    for d in docs:
        name = f"{d['kind']}/{d['metadata']['name']}"
        if d["kind"] in ("StatefulSet", "Deployment", "Job", "DaemonSet"):
            tpl = copy.deepcopy(d["spec"]["template"])
            for claim in d["spec"].get("volumeClaimTemplates", []):  # what the controller adds
                tpl["spec"].setdefault("volumes", []).append({
                    "name": claim["metadata"]["name"],
                    "persistentVolumeClaim": {"claimName": f"{claim['metadata']['name']}-0"}})
            yield name, tpl
        elif d["kind"] == "PyTorchJob":
            for role, replica in d["spec"]["pytorchReplicaSpecs"].items():
                yield f"{name}/{role}", replica["template"]


def _as_pod(tpl: dict, namespace: str) -> dict:
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": f"p-{uuid.uuid4().hex[:8]}", "namespace": namespace,
                         "labels": tpl.get("metadata", {}).get("labels", {})},
            "spec": tpl["spec"]}


def test_every_platform_pod_is_admitted_by_restricted(cluster, rendered, restricted):
    core = client.CoreV1Api(cluster.api_client)
    checked = []
    for overlay, docs in rendered.items():
        for doc in of(docs, "PriorityClass"):  # cluster-scoped, what prod's MinIO pods name
            apply(DynamicClient(cluster.api_client), doc)
        for what, tpl in pod_templates(docs):
            try:
                core.create_namespaced_pod(restricted, _as_pod(tpl, restricted), dry_run="All")
            except ApiException as e:
                pytest.fail(f"{overlay}: {what} refused by Pod Security restricted: {e.body}")
            checked.append(what)
    # both overlays: MinIO, the bucket Job, and every PyTorchJob role
    assert {w.split("/")[0] for w in checked} == {"StatefulSet", "Job", "PyTorchJob"}
    assert len(checked) >= 2 * (2 + 3)


def test_a_privileged_pod_is_refused(cluster, restricted):
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "privileged"},
           "spec": {"containers": [{"name": "x", "image": "busybox",
                                    "securityContext": {"privileged": True}}]}}
    with pytest.raises(ApiException) as refused:
        client.CoreV1Api(cluster.api_client).create_namespaced_pod(restricted, pod, dry_run="All")
    message = json.loads(refused.value.body)["message"]
    assert refused.value.status == 403
    assert 'violates PodSecurity "restricted:latest": privileged (container "x" must not set ' \
        'securityContext.privileged=true)' in message


def test_the_operator_creates_the_launchers_pods_under_restricted(cluster, restricted, tmp_path):
    """A PyTorchJob built by the launcher (Master + 1 Worker) in the restricted namespace: the
    training operator's pods exist, so admission let them in (on failure the namespace's events
    say why, e.g. FailedCreatePod ... violates PodSecurity)."""
    train = {"out": str(tmp_path / "run"), "data": {"train": str(tmp_path / "data")},
             "model": "small_resnet8", "epochs": 1, "batch_size": 16}
    spec = JobSpec(name="secure", namespace=restricted, train=train, workers=1, cpu="1",
                   memory="1Gi", pod_labels={OUTCOME_LABEL: "succeed"})
    client.CustomObjectsApi(cluster.api_client).create_namespaced_custom_object(
        "kubeflow.org", "v1", restricted, "pytorchjobs", to_manifest(build_job(spec)))
    core = client.CoreV1Api(cluster.api_client)

    def both():
        pods = core.list_namespaced_pod(restricted, label_selector=f"{JOB_NAME_LABEL}=secure").items
        return pods if len(pods) == 2 else None

    try:
        pods = cluster.wait_for("the operator's pods", both)
    except BaseException:
        events = core.list_namespaced_event(restricted).items
        print("\n".join(f"{e.reason}: {e.message}" for e in events))
        raise
    for p in pods:
        c = p.spec.containers[0].security_context
        assert c.read_only_root_filesystem and not c.allow_privilege_escalation
        assert p.spec.security_context.seccomp_profile.type == "RuntimeDefault"
    # the operator's own init container (Workers wait for the Master's DNS name) comes from
    # k8s/operator/pytorch-init-container.yaml: its built-in one runs as root and is refused
    worker = next(p for p in pods if "worker" in p.metadata.name)
    init = {c.name: c for c in worker.spec.init_containers}["init-pytorch"].security_context
    assert init.run_as_user == 65534 and init.capabilities.drop == ["ALL"]


def test_containers_have_a_read_only_root_and_writable_volumes(rendered):
    """Pod Security does not require it; the platform does: every container's root file
    system is read-only and what it writes goes to a volume (/tmp, MinIO's /data)."""
    for overlay, docs in rendered.items():
        for what, tpl in pod_templates(docs):
            for c in tpl["spec"]["containers"]:
                assert c.get("securityContext", {}).get("readOnlyRootFilesystem") is True, \
                    f"{overlay}: {what}/{c['name']}"
                mounts = {m["mountPath"] for m in c.get("volumeMounts", [])}
                assert "/tmp" in mounts, f"{overlay}: {what}/{c['name']} has no writable /tmp"


def _review(cluster, namespace, verb, resource, group="", subresource=None, as_namespace=None,
            name="semisup-launcher") -> bool:
    sa_ns = as_namespace or namespace
    body = client.V1SubjectAccessReview(spec=client.V1SubjectAccessReviewSpec(
        user=f"system:serviceaccount:{sa_ns}:{name}",
        groups=["system:serviceaccounts", f"system:serviceaccounts:{sa_ns}", "system:authenticated"],
        resource_attributes=client.V1ResourceAttributes(
            namespace=namespace, verb=verb, group=group, resource=resource, subresource=subresource)))
    return client.AuthorizationV1Api(cluster.api_client).create_subject_access_review(body).status.allowed


def test_the_launcher_may_do_its_job_and_nothing_else(cluster, rendered, namespace):
    dyn = DynamicClient(cluster.api_client)
    for doc in in_namespace(rendered["dev"], namespace):
        if doc["kind"] in ("ServiceAccount", "Role", "RoleBinding"):
            apply(dyn, doc)
    allowed = [("create", "pytorchjobs", "kubeflow.org"), ("watch", "pytorchjobs", "kubeflow.org"),
               ("delete", "pytorchjobs", "kubeflow.org"), ("get", "pods", ""),
               ("list", "events", ""), ("get", "pods", "", "log")]
    for verb, resource, group, *sub in allowed:
        assert _review(cluster, namespace, verb, resource, group, *sub), (verb, resource, sub)
    denied = [("get", "secrets", ""), ("list", "secrets", ""), ("create", "pods", ""),
              ("update", "pytorchjobs", "kubeflow.org"), ("create", "rolebindings",
                                                          "rbac.authorization.k8s.io"),
              ("create", "pods", "", "exec"), ("get", "configmaps", "")]
    for verb, resource, group, *sub in denied:
        assert not _review(cluster, namespace, verb, resource, group, *sub), (verb, resource, sub)
    # another namespace, and anything cluster-scoped
    assert not _review(cluster, "default", "create", "pytorchjobs", "kubeflow.org",
                       as_namespace=namespace)
    assert not _review(cluster, "kube-system", "get", "pods", as_namespace=namespace)
    for verb, resource in (("list", "nodes"), ("list", "namespaces"), ("create", "namespaces")):
        assert not _review(cluster, "", verb, resource, as_namespace=namespace), resource
    assert not _review(cluster, "", "create", "clusterrolebindings", "rbac.authorization.k8s.io",
                       as_namespace=namespace)
    # the training pods' own (default) ServiceAccount has nothing
    assert not _review(cluster, namespace, "get", "pods", name="default")


def _selects(selector: dict, labels: dict) -> bool:
    """Kubernetes label-selector semantics (matchLabels and matchExpressions)."""
    if any(labels.get(k) != v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for e in selector.get("matchExpressions", []):
        have, op, values = labels.get(e["key"]), e["operator"], e.get("values", [])
        if not {"In": have in values, "NotIn": have not in values, "Exists": have is not None,
                "DoesNotExist": have is None}[op]:
            return False
    return True


def _admitted(policy: dict, pod_labels: dict, ns_labels: dict, same_namespace: bool) -> bool:
    for rule in policy["spec"]["ingress"]:
        for peer in rule.get("from", []):
            ns_ok = (_selects(peer["namespaceSelector"], ns_labels) if "namespaceSelector" in peer
                     else same_namespace)
            if ns_ok and _selects(peer.get("podSelector", {}), pod_labels):
                return True
    return False


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_network_policy_admits_only_the_platforms_pods(rendered, overlay):
    """The policy as accepted by the API server (tests/cluster/test_apply.py), evaluated on the
    labels of every pod that must reach MinIO and of pods that must not."""
    docs = rendered[overlay]
    policy = of(docs, "NetworkPolicy")[0]
    ns_labels = of(docs, "Namespace")[0]["metadata"]["labels"]
    minio = of(docs, "StatefulSet")[0]["spec"]["template"]["metadata"]["labels"]
    assert _selects(policy["spec"]["podSelector"], minio)  # the policy guards MinIO
    clients = [(w, t) for w, t in pod_templates(docs) if not w.startswith("StatefulSet")]
    assert clients
    for what, tpl in clients:
        assert _admitted(policy, tpl["metadata"]["labels"], ns_labels, True), what
    kfp_task = {"semisup.io/minio-client": "true", "pipelines.kubeflow.org/v2_component": "true"}
    assert _admitted(policy, kfp_task, {"semisup.io/platform": "true"}, False)
    assert not _admitted(policy, {"app": "intruder"}, ns_labels, True)
    assert not _admitted(policy, {"app.kubernetes.io/part-of": "semisup"}, {"team": "other"}, False)
    assert not _admitted(policy, {"semisup.io/minio-client": "false"}, ns_labels, True)
