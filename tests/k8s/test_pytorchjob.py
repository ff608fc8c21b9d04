"""The PyTorchJobs the launcher builds, validated against the training operator's own CRD
schema; the kubernetes backend's create/wait/fail logic; the local torchrun path end to end."""

import copy
import os
import types

import jsonschema
import pytest

from semisup.pytorchjob import JobFailed, JobSpec, build_job, launch, run_local, to_manifest
from semisup_core import storage
from tests.train.conftest import write_blocks_dataset

TRAIN = {"out": "s3://semisup/runs/teacher", "data": {"train": "s3://semisup/data/labelled"},
         "model": "small_resnet8", "epochs": 2, "batch_size": 16}

SPECS = {
    "dev-cpu": dict(workers=1, nproc_per_node=2, cpu="2", memory="4Gi"),
    "prod-gpu": dict(workers=3, nproc_per_node=8, gpus_per_node=8, cpu="32", memory="200Gi",
                     shm_size="32Gi"),
    "elastic": dict(workers=2, nproc_per_node=4, gpus_per_node=4, elastic_min=2, elastic_max=4),
    "single": dict(workers=0),
}


def _manifest(**kw) -> dict:
    return to_manifest(build_job(JobSpec(name="teacher", train=TRAIN, **kw)))


@pytest.mark.parametrize("kind", sorted(SPECS))
def test_jobs_validate_against_the_pytorchjob_crd(kind, pytorchjob_schema):
    job = _manifest(**SPECS[kind])
    validator = jsonschema.validators.validator_for(pytorchjob_schema)(pytorchjob_schema)
    errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(job)]
    assert errors == [], errors
    replicas = job["spec"]["pytorchReplicaSpecs"]  # the schema saw a real job, not an empty one
    assert job["kind"] == "PyTorchJob" and replicas["Master"]["replicas"] == 1
    assert replicas.get("Worker", {}).get("replicas", 0) == SPECS[kind]["workers"]


@pytest.mark.parametrize("breakage", ["backoff_type", "replicas_type", "unknown_field",
                                      "elastic_type"])
def test_a_broken_field_fails_the_crd_schema(breakage, pytorchjob_schema):
    job = _manifest(**SPECS["elastic"])
    bad = copy.deepcopy(job)
    master = bad["spec"]["pytorchReplicaSpecs"]["Master"]
    if breakage == "backoff_type":
        bad["spec"]["runPolicy"]["backoffLimit"] = "three"
    elif breakage == "replicas_type":
        master["replicas"] = "one"
    elif breakage == "unknown_field":
        master["restartPolcy"] = "OnFailure"
    else:
        bad["spec"]["elasticPolicy"]["maxReplicas"] = "four"
    jsonschema.validate(job, pytorchjob_schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, pytorchjob_schema)


def test_job_shape():
    job = _manifest(**SPECS["prod-gpu"])
    specs = job["spec"]["pytorchReplicaSpecs"]
    assert job["kind"] == "PyTorchJob" and job["apiVersion"] == "kubeflow.org/v1"
    assert specs["Master"]["replicas"] == 1 and specs["Worker"]["replicas"] == 3
    assert job["spec"]["nprocPerNode"] == "8"
    for role in ("Master", "Worker"):
        assert specs[role]["restartPolicy"] == "OnFailure"
        pod = specs[role]["template"]["spec"]
        c = pod["containers"][0]
        assert c["name"] == "pytorch"
        assert c["command"] == ["torchrun", "-m", "semisup", "stage", "train", "--config",
                                "s3://semisup/runs/teacher/pytorchjob-config.yaml"]
        assert c["resources"]["limits"]["nvidia.com/gpu"] == "8"
        assert c["envFrom"][0]["secretRef"]["name"] == "semisup-minio"
        assert {"name": "dshm", "mountPath": "/dev/shm"} in c["volumeMounts"]
        assert pod["volumes"][0]["emptyDir"] == {"medium": "Memory", "sizeLimit": "32Gi"}
        assert pod["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists",
                                       "effect": "NoSchedule"}]
    cpu = _manifest(**SPECS["dev-cpu"])["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]
    assert "tolerations" not in cpu and "nvidia.com/gpu" not in cpu["containers"][0]["resources"]["limits"]
    assert "Worker" not in _manifest(**SPECS["single"])["spec"]["pytorchReplicaSpecs"]
    assert _manifest(**SPECS["elastic"])["spec"]["elasticPolicy"] == {
        "minReplicas": 2, "maxReplicas": 4, "maxRestarts": 3, "rdzvBackend": "c10d"}


@pytest.mark.parametrize("bad, message", [
    (dict(train=dict(TRAIN, epochz=3)), "epochz"),
    (dict(name="Teacher_Job"), "name"),
    (dict(elastic_min=2), "elastic_min and elastic_max go together"),
    (dict(workers=5, elastic_min=1, elastic_max=4), "outside elastic"),
])
def test_bad_specs_fail_before_anything_is_created(bad, message):
    fields = dict(dict(name="teacher", train=TRAIN), **bad)
    with pytest.raises(Exception, match=message):
        build_job(JobSpec(**fields))


class _Client:
    """The TrainingClient calls launch makes, answering with a scripted status sequence (the
    real operator is exercised by tests/cluster)."""

    def __init__(self, states, reason=None):
        self.states, self.reason, self.created = list(states), reason, []

    def create_job(self, job, namespace):
        self.created.append((job, namespace))

    def get_job(self, name, namespace, job_kind):
        state = self.states.pop(0) if len(self.states) > 1 else self.states[0]
        conds = [types.SimpleNamespace(type="Created", status="True", reason="Created",
                                       message="created")]
        if state != "Created":  # the operator keeps earlier conditions, the newest last
            conds.append(types.SimpleNamespace(type=state, status="True",
                                               reason=self.reason or state, message="pod exited 1"))
        return types.SimpleNamespace(status=types.SimpleNamespace(conditions=conds))


def test_launch_creates_waits_and_succeeds(tmp_path):
    spec = JobSpec(name="teacher", train=dict(TRAIN, out=str(tmp_path / "run")),
                   poll_seconds=0.001)
    client = _Client(["Created", "Running", "Running", "Succeeded"])
    assert launch(spec, client=client)["state"] == "Succeeded"
    job, ns = client.created[0]
    assert ns == "semisup" and job.metadata.name == "teacher"
    assert storage.exists(str(tmp_path / "run" / "pytorchjob-config.yaml"))  # what pods read


def test_launch_fails_the_step_with_the_jobs_reason(tmp_path):
    spec = JobSpec(name="teacher", train=dict(TRAIN, out=str(tmp_path / "run")),
                   poll_seconds=0.001)
    client = _Client(["Created", "Running", "Failed"], reason="BackoffLimitExceeded")
    with pytest.raises(JobFailed, match="BackoffLimitExceeded: pod exited 1"):
        launch(spec, client=client)


@pytest.mark.slow
def test_local_backend_runs_the_same_entrypoint_with_two_processes(tmp_path):
    data = write_blocks_dataset(str(tmp_path / "blocks"), 128)
    train = {"out": str(tmp_path / "run"), "data": {"train": data}, "model": "small_resnet8",
             "model_kwargs": {"width": 4, "norm": "group"}, "epochs": 2, "batch_size": 16,
             "threads": 1}
    res = run_local(JobSpec(name="local", train=train, workers=0, nproc_per_node=2))
    assert res["state"] == "Succeeded"
    metrics = storage.read_json(str(tmp_path / "run" / "metrics.json"))
    assert metrics["world_size"] == 2 and os.path.exists(tmp_path / "run" / "model.safetensors")


def test_configmap_jobs_are_for_kubectl_not_the_launcher(tmp_path):
    """k8s/ jobs read their config from a ConfigMap; the launcher refuses them before creating
    anything (it would write the config where no pod reads it)."""
    spec = JobSpec(name="teacher", train=dict(TRAIN, out=str(tmp_path / "run")),
                   config_map="teacher-config", suspend=True)
    pod = to_manifest(build_job(spec))["spec"]["pytorchReplicaSpecs"]["Master"]["template"]
    assert pod["spec"]["containers"][0]["command"][-1] == "/etc/semisup/pytorchjob-config.yaml"
    client = _Client(["Succeeded"])
    with pytest.raises(Exception, match="ConfigMap teacher-config"):
        launch(spec, client=client)
    assert client.created == [] and not os.path.exists(tmp_path / "run")


def test_an_llp_job_runs_the_llp_stage_in_its_image():
    """objective llp: the pods run `semisup stage llp` in images/llp (faiss for its kNN core);
    contrastive and distill their stages in their images, weak `semisup stage weak-train` in
    images/weak-train; supervised the train stage in images/train; an explicit image wins."""
    def container(train, **kw):
        job = to_manifest(build_job(JobSpec(name="j", train=train, workers=0, **kw)))
        return job["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0]
    llp = container(dict(TRAIN, objective="llp"))
    assert llp["image"].startswith("ghcr.io/semisup/semisup-llp:")
    assert llp["command"][:5] == ["torchrun", "-m", "semisup", "stage", "llp"]
    sup = container(TRAIN)
    assert sup["image"].startswith("ghcr.io/semisup/semisup-train:") and sup["command"][4] == "train"
    con = container(dict(TRAIN, objective="contrastive"))
    assert con["image"].startswith("ghcr.io/semisup/semisup-contrastive:")
    assert con["command"][4] == "contrastive"
    dis = container(dict(TRAIN, objective="distill", distill={"teacher": "s3://b/teacher"}))
    assert dis["image"].startswith("ghcr.io/semisup/semisup-distill:") and dis["command"][4] == "distill"
    weak = container(dict(TRAIN, objective="weak"))
    assert weak["image"].startswith("ghcr.io/semisup/semisup-weak-train:")
    assert weak["command"][4] == "weak-train"
    assert container(TRAIN, image="registry.local/x:1")["image"] == "registry.local/x:1"
