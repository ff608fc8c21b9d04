"""submit / sync at the kfp.Client boundary (no KFP API server can run here), and the
Kubernetes-native Pipeline/PipelineVersion manifests under k8s/pipelines/."""

import types

import pytest
import yaml

from pipelines import PIPELINES
from semisup.kfp_remote import (content_hash, k8s_manifest_path, submit, sync,
                                write_k8s_manifest)
from semisup_core.errors import ConfigError


class FakeKfp:
    """Records the kfp.Client calls semisup makes; holds pipelines and versions in memory."""

    def __init__(self, versions: dict[str, list[str]] | None = None):
        self.pipelines = {name: f"id-{name}" for name in (versions or {})}
        self.versions = {f"id-{n}": list(v) for n, v in (versions or {}).items()}
        self.calls = []

    def get_pipeline_id(self, name):
        return self.pipelines.get(name)

    def upload_pipeline(self, path, pipeline_name, description):
        self.calls.append(("upload_pipeline", pipeline_name))
        self.pipelines[pipeline_name] = f"id-{pipeline_name}"
        self.versions[f"id-{pipeline_name}"] = [pipeline_name]
        return types.SimpleNamespace(pipeline_id=f"id-{pipeline_name}")

    def list_pipeline_versions(self, pipeline_id, page_token, page_size):
        names = self.versions[pipeline_id]
        start = int(page_token or 0)
        nxt = start + 1 if start + 1 < len(names) else None  # one per page: paging is exercised
        return types.SimpleNamespace(
            pipeline_versions=[types.SimpleNamespace(display_name=names[start])] if names else [],
            next_page_token=str(nxt) if nxt else "")

    def upload_pipeline_version(self, path, pipeline_version_name, pipeline_id, description):
        self.calls.append(("upload_pipeline_version", pipeline_version_name))
        self.versions[pipeline_id].append(pipeline_version_name)

    def create_run_from_pipeline_package(self, path, arguments, run_name, experiment_name):
        self.calls.append(("run", path, arguments, run_name, experiment_name))
        return types.SimpleNamespace(run_id="run-1")


def test_sync_uploads_once_then_only_on_change():
    kfp = FakeKfp()
    assert sync(kfp, commit="abc1234") == {n: "created" for n in PIPELINES}
    digest = content_hash("pipelines/teacher_student.yaml")
    assert ("upload_pipeline_version", f"teacher-student-{digest}-abc1234") in kfp.calls
    kfp.calls.clear()
    assert sync(kfp, commit="def5678") == {n: "unchanged" for n in PIPELINES}
    assert kfp.calls == []  # same content at a later commit: nothing uploaded


def test_sync_adds_a_version_when_the_content_changed():
    kfp = FakeKfp({"teacher-student": ["teacher-student", "teacher-student-0000000000-abc1234",
                                       "teacher-student-1111111111-abc1235"]})
    assert sync(kfp, ["teacher_student"], commit="fff0000") == {"teacher_student": "new version"}
    assert kfp.calls[-1][0] == "upload_pipeline_version"


def test_submit_sends_the_validated_config_as_arguments():
    kfp = FakeKfp()
    run = submit(kfp, "teacher_student", "configs/demo.yaml",
                 ["out=minio://semisup/runs/demo", "fashion_mnist=minio://semisup/raw/fmnist",
                  "selection.k=3000"], experiment="exp")
    _, path, args, run_name, experiment = kfp.calls[0]
    assert run == "run-1" and path.endswith("teacher_student.yaml") and experiment == "exp"
    assert args["k"] == 3000 and args["data_root"] == "minio://semisup/runs/demo/data"
    assert args["fashion_mnist"] == "minio://semisup/raw/fmnist" and run_name == "teacher-student-seed0"


def test_submit_refuses_local_paths_and_bad_configs():
    with pytest.raises(ConfigError, match="local path"):
        submit(FakeKfp(), "teacher_student", "configs/demo.yaml", [])
    with pytest.raises(ConfigError, match="selection.kk"):
        submit(FakeKfp(), "teacher_student", None, ["out=s3://b/x", "selection.kk=3"])
    with pytest.raises(ConfigError, match="unknown pipeline"):
        submit(FakeKfp(), "nope", None, [])


@pytest.mark.parametrize("name", sorted(PIPELINES))
def test_k8s_pipeline_manifests_are_current(name, tmp_path):
    """k8s/pipelines/<name>.yaml (for Argo CD / Flux) matches a fresh compile.
    Fix: .venv/bin/semisup pipelines compile"""
    fresh = write_k8s_manifest(name, str(tmp_path / f"{name}.yaml"))
    assert open(fresh).read() == open(k8s_manifest_path(name)).read(), (
        f"{k8s_manifest_path(name)} is stale: run .venv/bin/semisup pipelines compile")
    docs = list(yaml.safe_load_all(open(fresh)))
    assert [d["kind"] for d in docs] == ["Pipeline", "PipelineVersion"]
    digest = content_hash(f"pipelines/{name}.yaml")
    assert docs[1]["metadata"]["name"].endswith(digest)
    assert docs[1]["spec"]["pipelineName"] == docs[0]["metadata"]["name"]


def test_submit_with_the_gpu_profile_requests_gpus_on_the_gpu_nodes():
    kfp = FakeKfp()
    submit(kfp, "teacher_student", "configs/demo.yaml", ["out=minio://semisup/runs/demo",
           "fashion_mnist=minio://semisup/raw/fmnist"], profile="gpu")
    args = kfp.calls[0][2]
    assert args["train_gpus"] == args["infer_gpus"] == 1 and args["accelerator"] == "nvidia.com/gpu"
    assert args["gpu_tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists",
                                        "effect": "NoSchedule"}]
    with pytest.raises(ConfigError, match="profile: 'tpu' is not one of cpu, gpu"):
        submit(FakeKfp(), "teacher_student", None, ["out=s3://b/x"], profile="tpu")
