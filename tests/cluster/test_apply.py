"""Every overlay of k8s/ applied to the real API server (server-side apply, strict field
validation, the training operator's CRD and validating webhook installed): accepted as a
whole, and each deliberately broken object refused by the server itself."""

from __future__ import annotations

import copy

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException
from kubernetes.dynamic import DynamicClient

from tests.k8s.overlays import BREAKAGES, NAMESPACE, OVERLAYS, build, kustomize_path, of

MANAGER = "semisup-tests"


@pytest.fixture(scope="module")
def kustomize() -> str:
    return kustomize_path()


def in_namespace(docs: list[dict], namespace: str) -> list[dict]:
    """The overlay moved to another namespace (what `kustomize edit set namespace` does), so
    that overlays with different immutable fields (StatefulSet volume claims) coexist."""
    docs = copy.deepcopy(docs)
    for d in docs:
        if d["kind"] == "Namespace":
            d["metadata"]["name"] = namespace
        elif d["metadata"].get("namespace") == NAMESPACE:
            d["metadata"]["namespace"] = namespace
        for subject in d.get("subjects", []):
            if subject.get("namespace") == NAMESPACE:
                subject["namespace"] = namespace
    return docs


def apply(dyn: DynamicClient, doc: dict, dry_run: bool = False):
    """kubectl apply --server-side --field-manager=semisup-tests [--dry-run=server]."""
    resource = dyn.resources.get(api_version=doc["apiVersion"], kind=doc["kind"])
    params = [("fieldValidation", "Strict")] + ([("dryRun", "All")] if dry_run else [])
    return dyn.server_side_apply(resource, body=doc, field_manager=MANAGER, force_conflicts=True,
                                 query_params=params)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_overlay_is_accepted(cluster, kustomize, overlay):
    dyn = DynamicClient(cluster.api_client)
    docs = in_namespace(build(kustomize, overlay), f"{NAMESPACE}-{overlay}")
    docs.sort(key=lambda d: d["kind"] != "Namespace")  # the namespace first, as kubectl does
    for doc in docs:
        try:
            apply(dyn, doc)
        except ApiException as e:
            pytest.fail(f"{overlay}: {doc['kind']}/{doc['metadata']['name']} refused: "
                        f"{e.status} {e.body}")
    jobs = client.CustomObjectsApi(cluster.api_client).list_namespaced_custom_object(
        "kubeflow.org", "v1", f"{NAMESPACE}-{overlay}", "pytorchjobs")["items"]
    assert sorted(j["metadata"]["name"] for j in jobs) == ["finetune", "student-pretrain", "teacher"]
    for job in jobs:  # what the server stored is what we sent (strict: nothing pruned)
        sent = next(d for d in of(docs, "PyTorchJob") if d["metadata"]["name"] == job["metadata"]["name"])
        assert job["spec"]["pytorchReplicaSpecs"] == sent["spec"]["pytorchReplicaSpecs"]
        assert job["spec"]["runPolicy"]["suspend"] is True
    sts = client.AppsV1Api(cluster.api_client).read_namespaced_stateful_set(
        "minio", f"{NAMESPACE}-{overlay}")
    assert sts.metadata.managed_fields[0].manager == MANAGER


NAMED = {"statefulset_type": ".spec.replicas", "container_field": "imagePullPolicyy",
         "networkpolicy": "policyTypes", "pytorchjob_field": "replica",
         "pytorchjob_type": "backoffLimit"}  # what the server's refusal names


@pytest.mark.parametrize("breakage", BREAKAGES, ids=lambda f: f.__name__.removeprefix("_break_"))
def test_the_server_refuses_a_broken_object(cluster, kustomize, breakage):
    dyn = DynamicClient(cluster.api_client)
    docs = in_namespace(build(kustomize, "dev"), f"{NAMESPACE}-broken")
    apply(dyn, next(d for d in docs if d["kind"] == "Namespace"))
    broken = copy.deepcopy(docs)
    breakage(broken)
    (i,) = [i for i, (a, b) in enumerate(zip(docs, broken)) if a != b]
    apply(dyn, docs[i], dry_run=True)  # the intact object passes
    with pytest.raises(ApiException) as refused:
        apply(dyn, broken[i], dry_run=True)
    # 400 BadRequest (strict: unknown field), 422 Invalid; a type mismatch fails earlier, in
    # the server-side apply machinery, as a 500 that names the field
    assert refused.value.status in (400, 422, 500), refused.value.body
    assert NAMED[breakage.__name__.removeprefix("_break_")] in refused.value.body.decode()
