"""k8s/: every overlay rendered by a real kustomize (pinned, built from its Go module), every
built-in object validated with kubernetes-validate --strict at a pinned Kubernetes version,
every PyTorchJob against the training operator's own CRD; the jobs come from the launcher's
JobSpec (one definition); broken fields fail."""

import copy

import jsonschema
import kubernetes_validate
import pytest
import yaml

from semisup import k8s_manifests
from semisup.pytorchjob import build_job, to_manifest
from semisup_core.train import TrainConfig
from tests.k8s.overlays import BREAKAGES, OVERLAYS, build, kustomize_path, of

KUBERNETES = "1.33.0"  # the cluster version the manifests target
CUSTOM = {("kubeflow.org/v1", "PyTorchJob")}  # kinds kubernetes-validate has no schema for


@pytest.fixture(scope="session")
def kustomize() -> str:
    return kustomize_path()


def validate(doc: dict, pytorchjob_schema: dict) -> None:
    """Raises on an invalid object; custom kinds are checked against their CRDs, because
    kubernetes-validate passes kinds it has no schema for."""
    if (doc["apiVersion"], doc["kind"]) in CUSTOM:
        jsonschema.validate(doc, pytorchjob_schema)
    else:
        kubernetes_validate.validate(doc, KUBERNETES, strict=True)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_object_of_every_overlay_validates(overlay, kustomize, pytorchjob_schema):
    docs = build(kustomize, overlay)
    kinds = {d["kind"] for d in docs}
    assert {"Namespace", "StatefulSet", "Service", "Job", "ServiceAccount", "Role",
            "RoleBinding", "NetworkPolicy", "ConfigMap", "PyTorchJob"} <= kinds
    for doc in docs:
        validate(doc, pytorchjob_schema)
    cluster_scoped = {"Namespace", "PriorityClass"}
    assert all(d["metadata"].get("namespace") == "semisup" for d in docs
               if d["kind"] not in cluster_scoped)
    assert all("namespace" not in d["metadata"] for d in docs if d["kind"] in cluster_scoped)


@pytest.mark.parametrize("breakage", BREAKAGES)
def test_a_broken_field_fails(breakage, kustomize, pytorchjob_schema):
    docs = build(kustomize, "dev")
    broken = copy.deepcopy(docs)
    breakage(broken)
    changed = [b for a, b in zip(docs, broken) if a != b]
    assert len(changed) == 1
    with pytest.raises((kubernetes_validate.ValidationError, jsonschema.ValidationError)):
        validate(changed[0], pytorchjob_schema)


@pytest.mark.parametrize("overlay", sorted(k8s_manifests.OVERLAYS))
def test_generated_jobs_are_current(overlay):
    with open(k8s_manifests.jobs_path(overlay)) as f:
        assert f.read() == k8s_manifests.render(overlay), (
            f"{k8s_manifests.jobs_path(overlay)} is stale: run .venv/bin/python -m "
            "semisup.k8s_manifests")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_jobs_are_the_launchers_jobs(overlay, kustomize):
    """One definition: what kubectl applies is exactly what the launcher component builds."""
    rendered = {d["metadata"]["name"]: d for d in of(build(kustomize, overlay), "PyTorchJob")}
    specs = k8s_manifests.stage_specs(overlay)
    assert sorted(rendered) == sorted(s.name for s in specs) == [
        "finetune", "student-pretrain", "teacher"]
    configs = {d["metadata"]["name"]: d for d in of(build(kustomize, overlay), "ConfigMap")}
    for spec in specs:
        assert rendered[spec.name]["spec"] == to_manifest(build_job(spec))["spec"]
        text = configs[spec.config_map]["data"]["pytorchjob-config.yaml"]
        assert TrainConfig(**yaml.safe_load(text)) == spec.train_config()


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_job_pods_are_what_a_cluster_needs(overlay, kustomize):
    gpu = overlay == "prod"
    for job in of(build(kustomize, overlay), "PyTorchJob"):
        spec = job["spec"]
        assert spec["runPolicy"]["suspend"] is True  # applying starts nothing
        assert spec["pytorchReplicaSpecs"]["Worker"]["replicas"] == (3 if gpu else 2)
        for replica in spec["pytorchReplicaSpecs"].values():
            assert replica["restartPolicy"] == "OnFailure"
            pod = replica["template"]["spec"]
            (c,) = pod["containers"]
            assert c["command"][:5] == ["torchrun", "-m", "semisup", "stage", "train"]
            assert c["envFrom"] == [{"secretRef": {"name": "semisup-minio"}}]
            mounts = {m["mountPath"] for m in c["volumeMounts"]}
            assert {"/dev/shm", "/etc/semisup"} <= mounts
            assert ("nvidia.com/gpu" in c["resources"]["limits"]) == gpu
            assert bool(pod.get("tolerations")) == gpu
        # pods still running when the job ends are deleted; the job goes after a day
        assert spec["runPolicy"]["cleanPodPolicy"] == "Running"
        assert spec["runPolicy"]["ttlSecondsAfterFinished"] == 86400
    elastic = {j["metadata"]["name"]: j["spec"].get("elasticPolicy")
               for j in of(build(kustomize, overlay), "PyTorchJob")}
    assert (elastic["student-pretrain"] is not None) == gpu


def test_launcher_role_is_least_privilege(kustomize):
    (role,) = of(build(kustomize, "dev"), "Role")
    for rule in role["rules"]:
        assert "*" not in rule["verbs"] and "*" not in rule["resources"]
        assert not {"update", "patch", "escalate", "bind", "impersonate"} & set(rule["verbs"])
    granted = {(g, r) for rule in role["rules"] for g in rule["apiGroups"] for r in rule["resources"]}
    assert ("kubeflow.org", "pytorchjobs") in granted and ("", "secrets") not in granted


def test_only_platform_pods_reach_minio(kustomize):
    docs = build(kustomize, "dev")
    (policy,) = of(docs, "NetworkPolicy")
    assert policy["spec"]["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "minio"}
    allowed = [p["podSelector"]["matchLabels"] for p in policy["spec"]["ingress"][0]["from"]]
    pods = [r["template"]["metadata"]["labels"] for j in of(docs, "PyTorchJob")
            for r in j["spec"]["pytorchReplicaSpecs"].values()]
    pods.append(of(docs, "Job")[0]["spec"]["template"]["metadata"]["labels"])
    for labels in pods:
        assert any(sel.items() <= labels.items() for sel in allowed), labels
    assert not any(sel.items() <= {"app": "other"}.items() for sel in allowed)


def _brace_range(text: str) -> int:
    """How many hosts MinIO's ``{a...b}`` expands to in a server argument."""
    import re
    (a, b), = re.findall(r"\{(\d+)\.\.\.(\d+)\}", text)
    return int(b) - int(a) + 1


def test_prod_minio_is_distributed_and_survives_a_node(kustomize):
    docs = build(kustomize, "prod")
    (sts,) = of(docs, "StatefulSet")
    spec, pod = sts["spec"], sts["spec"]["template"]["spec"]
    labels = spec["template"]["metadata"]["labels"]
    replicas = spec["replicas"]
    assert replicas >= 4  # MinIO's erasure coding wants 4 or more drives
    (c,) = pod["containers"]
    hosts = [a for a in c["args"] if a.startswith("http://")]
    assert len(hosts) == 1 and _brace_range(hosts[0]) == replicas  # every pod lists all pods
    assert f".{spec['serviceName']}.$(SEMISUP_NAMESPACE).svc" in hosts[0]
    assert {"name": "SEMISUP_NAMESPACE",
            "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}} in c["env"]
    (headless,) = [s for s in of(docs, "Service") if s["metadata"]["name"] == spec["serviceName"]]
    assert headless["spec"]["clusterIP"] == "None" and headless["spec"]["publishNotReadyAddresses"]
    assert headless["spec"]["selector"].items() <= labels.items()
    assert spec["podManagementPolicy"] == "Parallel"  # peers must start together
    (term,) = pod["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert term["topologyKey"] == "kubernetes.io/hostname"
    assert term["labelSelector"]["matchLabels"].items() <= labels.items()
    (pdb,) = of(docs, "PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    # EC:2 over 4 drives: writes need 3, so a drain may take one pod at a time
    assert pdb["spec"]["maxUnavailable"] == replicas - (replicas // 2 + 1)
    (pc,) = of(docs, "PriorityClass")
    assert pod["priorityClassName"] == pc["metadata"]["name"] and pc["value"] > 0
    assert not pc.get("globalDefault")
    (policy,) = of(docs, "NetworkPolicy")  # peers reach each other on 9000
    assert any(r["from"] == [{"podSelector": {"matchLabels": labels}}]
               and r["ports"] == [{"port": 9000, "protocol": "TCP"}]
               for r in policy["spec"]["ingress"])


def test_dev_minio_stays_single_node(kustomize):
    docs = build(kustomize, "dev")
    (sts,) = of(docs, "StatefulSet")
    assert sts["spec"]["replicas"] == 1 and "affinity" not in sts["spec"]["template"]["spec"]
    assert not of(docs, "PodDisruptionBudget") and not of(docs, "PriorityClass")
