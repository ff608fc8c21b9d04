"""Committed pipeline YAML is current; every parameter a person can set is described."""

import importlib
import inspect
import json
import os
import re

import pytest
import yaml

import components
from pipelines import PIPELINES, compile_pipeline, yaml_path
from semisup_core.errors import ConfigError
from semisup_core.teacher_student.demo import DemoConfig
from semisup_core.train.config import LauncherSpec

COMPONENT_MODULES = ["data", "train", "evaluate", "score", "select", "report", "workers",
                     "pytorchjob", "reference", "synsets", "weak_train", "wsl_report"]


def _components():
    for name in COMPONENT_MODULES:
        mod = importlib.import_module(f"components.{name}.component")
        for obj in vars(mod).values():
            if hasattr(obj, "component_spec") and obj.python_func.__module__ == mod.__name__:
                yield obj


@pytest.mark.parametrize("name", sorted(PIPELINES))
def test_compiled_yaml_is_current(name, tmp_path):
    """Recompile and diff (kubeflow/pipelines' compilation test): a pipeline changed without
    recompiling fails here. Fix: .venv/bin/semisup pipelines compile"""
    mod = importlib.import_module(f"pipelines.{name}")
    fresh = compile_pipeline(getattr(mod, PIPELINES[name]), str(tmp_path / f"{name}.yaml"))
    committed = yaml_path(mod.__file__)
    assert os.path.exists(committed), (
        f"{committed} missing: run .venv/bin/semisup pipelines compile")
    assert open(fresh).read() == open(committed).read(), (
        f"{committed} is stale: run .venv/bin/semisup pipelines compile")


@pytest.mark.parametrize("name", sorted(PIPELINES))
def test_every_pipeline_parameter_is_described(name):
    spec = next(yaml.safe_load_all(open(yaml_path(
        importlib.import_module(f"pipelines.{name}").__file__))))
    params = spec["root"]["inputDefinitions"]["parameters"]
    assert params
    missing = [p for p, d in params.items() if not d.get("description")]
    assert not missing, f"{name}: parameters without a description: {missing}"


def test_every_component_input_is_described():
    seen = 0
    for comp in _components():
        spec = comp.component_spec
        assert spec.description, f"{spec.name} has no docstring"
        doc = inspect.getdoc(comp.python_func)
        for arg in spec.inputs or {}:
            assert f"{arg}:" in doc, f"{spec.name}: input {arg} not described under Args"
        for out in spec.outputs or {}:
            assert f"{out}:" in doc or out == "Output", f"{spec.name}: output {out} not described"
        assert spec.implementation.container.image.startswith(components.IMAGE_REPO)
        seen += 1
    assert seen >= 8


def test_components_never_install_packages_at_run_time():
    """No pip install in the command: images carry kfp and semisup (no download at run time)."""
    for comp in _components():
        command = " ".join(comp.component_spec.implementation.container.command)
        assert "pip install" not in command, comp.component_spec.name


def test_demo_config_maps_onto_every_pipeline_parameter():
    """`semisup run teacher_student --config` fills every parameter from the validated config,
    and the pipeline's defaults are the config's defaults (one definition of the arguments),
    but for the launcher: the pipeline's default is the stage config's (LauncherSpec: train in
    the task's pod), the demo's trains through the launcher's local torchrun backend."""
    from pipelines import teacher_student as ts
    spec = next(yaml.safe_load_all(open(yaml_path(ts.__file__))))["root"]["inputDefinitions"]["parameters"]
    args = ts.arguments(DemoConfig(), "/abs/out")
    assert set(args) == set(spec)
    path_like = {"data_root", "workdir", "fashion_mnist", "mnist"}
    for name, value in args.items():
        if name not in path_like | {"launcher"}:
            assert spec[name]["defaultValue"] == value, name
    stage_default = LauncherSpec().model_dump(mode="json")
    assert LauncherSpec(**spec["launcher"]["defaultValue"]) == LauncherSpec(**stage_default)
    assert stage_default["backend"] == "pod"
    assert args["launcher"] == {**stage_default, "backend": "torchrun"}


def test_wsl_config_maps_onto_every_pipeline_parameter():
    """`semisup run wsl --config` fills every parameter of the wsl pipeline, whose defaults are
    the WSL stage config's (WSLRunConfig: recipes, simulated tags, synsets, selection)."""
    from pipelines import wsl
    from semisup_core.wsl.run import WSLRunConfig
    spec, _ = _ir("wsl")
    spec = spec["root"]["inputDefinitions"]["parameters"]
    cfg = WSLRunConfig()
    args = wsl.arguments(cfg, "/abs/out")
    assert set(args) == set(spec)
    for name, value in args.items():
        if name not in {"data_root", "workdir", "fashion_mnist", "mnist"}:
            assert spec[name]["defaultValue"] == value, name
    assert args["pretrain"]["objective"] == "weak" and args["semi_weak"] is True
    assert args["tag_noise_rate"] == cfg.tags.noise_rate
    assert args["synsets"]["target_synsets"] and not {"data", "out", "seed"} & set(args["synsets"])
    small = wsl.arguments(WSLRunConfig(semi_weak=False, tags={"noise_rate": 0.1},
                                       synsets={"vocabulary": "target", "draws": 2}), "/abs/out")
    assert small["semi_weak"] is False and small["tag_noise_rate"] == 0.1
    assert small["synsets"]["vocabulary"] == "target" and small["synsets"]["draws"] == 2
    with pytest.raises(ConfigError, match="external .* runs in one process only"):
        wsl.arguments(WSLRunConfig(external="runs/openclipart/data28"), "/abs/out")


def test_semi_weak_parameters_of_teacher_student():
    """The semi-weak variant's parameters: off by default (a teacher from scratch, no tag
    restriction); each reaches its task through a reference component ('' = none)."""
    from pipelines import teacher_student as ts
    spec, _ = _ir("teacher_student")
    params = spec["root"]["inputDefinitions"]["parameters"]
    assert params["teacher_init"]["defaultValue"] == ""
    assert params["restrict"]["defaultValue"] == "none"
    assert params["candidates"]["defaultValue"] == ""
    args = ts.arguments(DemoConfig(selection={"restrict": "tags", "candidates": "/c.parquet",
                                              "top_p": 10}), "/abs/out")
    assert args["restrict"] == "tags" and args["candidates"] == "/c.parquet"
    root = spec["root"]["dag"]["tasks"]
    refs = {t["inputs"]["parameters"]["uri"]["componentInputParameter"]: name
            for name, t in root.items()
            if re.fullmatch(r"comp-reference(-\d+)?", t["componentRef"]["name"])}
    assert set(refs) == {"teacher_init", "candidates"}
    teacher = next(t for t in root.values() if t["taskInfo"]["name"] == "train teacher")
    assert teacher["inputs"]["artifacts"]["init_from"]["taskOutputArtifact"]["producerTask"] == \
        refs["teacher_init"]
    selects = [t for _, t, comp in _tasks(spec) if re.fullmatch(r"comp-select(-\d+)?", comp)]
    assert len(selects) >= 3
    for task in selects:
        restrict = task["inputs"]["parameters"]["restrict"]["componentInputParameter"]
        assert restrict.endswith("restrict")
        assert "candidates" in task["inputs"]["artifacts"]


def test_the_wsl_pipeline_steps():
    """data -> dedup -> synsets (simulated tags) -> baseline, weak-train -> fine-tune ->
    evaluate -> the four teacher/student variants (the tag-restricted ones on the semi-weak
    teacher's scores, with the synsets' candidates) -> report; each branch has its report."""
    spec, _ = _ir("wsl")
    tasks = {t["taskInfo"]["name"]: (t, comp) for _, t, comp in _tasks(spec)}
    syn, _ = tasks["synsets (SIMULATED tags)"]
    assert syn["inputs"]["parameters"]["simulate_tags"]["runtimeValue"]["constant"] is True
    pre, comp = tasks["weak pre-train"]
    assert comp == "comp-weak-train"
    assert pre["inputs"]["artifacts"]["data"]["taskOutputArtifact"] == {
        "outputArtifactKey": "train", "producerTask": "synsets"}
    ft, _ = tasks["fine-tune"]
    init = ft["inputs"]["artifacts"]["init_from"]["taskOutputArtifact"]
    assert init["producerTask"] == "weak-train"
    scores = sorted(n for n in tasks if n.endswith(": score"))
    assert scores == ["plain: score", "semi-weak: score"]  # one scoring per teacher
    sel = {n.removesuffix(": select"): t for n, (t, _) in tasks.items() if n.endswith(": select")}
    assert set(sel) == {"plain", "semi-weak", "semi-weak, tags", "semi-weak, balanced-with-tags"}
    for name in ("semi-weak, tags", "semi-weak, balanced-with-tags"):
        assert sel[name]["inputs"]["parameters"]["restrict"]["runtimeValue"]["constant"] == "tags"
        assert "reuse" in sel[name]["inputs"]["artifacts"]
        assert "candidates" in sel[name]["inputs"]["artifacts"]
    assert sel["semi-weak, balanced-with-tags"]["inputs"]["parameters"]["strategy"][
        "runtimeValue"]["constant"] == "random"
    assert "candidates" not in sel["plain"]["inputs"]["artifacts"]
    reports = [t for _, t, comp in _tasks(spec) if comp.startswith("comp-wsl-report")]
    assert len(reports) == 2
    assert {len(r["inputs"]["artifacts"]) for r in reports} == {7, 11}


def test_synsets_component_defaults_are_the_stage_configs():
    import inspect

    from components.synsets.component import synsets
    from semisup_core.wsl.simulate import SimulatedTags
    params = inspect.signature(synsets.python_func).parameters
    tags = SimulatedTags()
    for name in ("noise_rate", "confusion_share", "own_weight"):
        assert params[name].default == getattr(tags, name), name


def test_arguments_follow_the_config():
    from pipelines import teacher_student as ts
    cfg = DemoConfig(distractors=False, labels_per_class=7, selection={"k": 9, "workers": 3},
                     self_training=False, rounds=2, k_sweep=[3, 4])
    args = ts.arguments(cfg, "/abs/out")
    assert args["mnist"] == "" and args["labels_per_class"] == 7 and args["k"] == 9
    assert args["score_workers"] == 3 and args["self_training"] is False and args["rounds"] == 2
    assert args["k_sweep"] == [3, 4] and args["data_root"] == "/abs/out/data"


@pytest.mark.parametrize("name", sorted(PIPELINES))
def test_every_task_gets_the_storage_secret_and_the_minio_label(name):
    """On a cluster every task streams shards from the platform MinIO: it needs the Secret as
    env and the label k8s/base's NetworkPolicy admits."""
    docs = list(yaml.safe_load_all(open(yaml_path(
        importlib.import_module(f"pipelines.{name}").__file__))))
    executors = docs[0]["deploymentSpec"]["executors"]
    platform = docs[1]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    assert set(platform) == set(executors)
    for settings in platform.values():
        assert settings["podMetadata"]["labels"] == {"semisup.io/minio-client": "true"}
        (secret,) = settings["secretAsEnv"]
        assert secret["secretName"] == "semisup-minio"
        assert {e["envVar"] for e in secret["keyToEnv"]} >= {"S3_ENDPOINT"}


def test_embed_and_dedup_component_defaults_are_the_stage_configs():
    """The components' defaults are the stage configs' (one definition), checked field by field."""
    import inspect

    from components.dedup.component import dedup
    from components.embed.component import embed
    from semisup_core.dedup.stage import DedupConfig
    from semisup_core.embed import EmbedConfig

    def defaults(comp):
        fn = comp.python_func
        return {k: p.default for k, p in inspect.signature(fn).parameters.items()
                if p.default is not inspect.Parameter.empty}

    e = EmbedConfig(dataset="-", out="-")
    for k, v in defaults(embed).items():
        if k not in ("worker", "num_workers", "enabled"):
            assert getattr(e, k) == v, k
    d = DedupConfig(pool="-", eval_sets=["-"], out="-")
    for k, v in defaults(dedup).items():
        if k not in ("enabled", "nprobe", "verifier_model"):
            assert getattr(d, k) == (v or None if k == "verifier" else v), k  # "" is KFP's None


def _ir(name: str):
    spec, platform = yaml.safe_load_all(open(yaml_path(
        importlib.import_module(f"pipelines.{name}").__file__)))
    return spec, platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]


def _tasks(spec: dict, with_parent: bool = False):
    """Every task of the IR, nested DAGs included: (task name, task, its component name[, the
    DAG component it is in])."""
    for comp in [spec["root"]] + [c for c in spec["components"].values() if "dag" in c]:
        for tname, task in comp["dag"]["tasks"].items():
            yield (tname, task, task["componentRef"]["name"]) + ((comp,) if with_parent else ())


@pytest.mark.parametrize("name", sorted(PIPELINES))
def test_every_parameter_a_task_names_reaches_its_dag(name):
    """A task inside a ParallelFor or an If may only name parameters its sub-DAG receives
    (kfp.local and the KFP backend fail the run otherwise); resources included."""
    spec, _ = _ir(name)
    executors = spec["deploymentSpec"]["executors"]
    for tname, task, comp, parent in _tasks(spec, with_parent=True):
        component = spec["components"][comp]
        if "executorLabel" not in component:
            continue
        text = json.dumps(executors[component["executorLabel"]]["container"].get("resources", {}))
        named = set(re.findall(r"pipelinechannel--[\w-]+", text))
        named |= {p for p in task["inputs"].get("parameters", {}) if p.startswith("pipelinechannel--")}
        given = set(parent.get("inputDefinitions", {}).get("parameters", {}))
        if parent is spec["root"]:
            given = {f"pipelinechannel--{p}" for p in given}
        missing = {n for n in named if n not in given and "-Output" not in n
                   and not any(n.startswith(f"pipelinechannel--{t}-") for t in parent["dag"]["tasks"])}
        assert not missing, (tname, sorted(missing))


@pytest.mark.parametrize("name", sorted(PIPELINES))
def test_every_task_requests_what_its_kind_needs(name):
    """Read from the compiled IR: CPU/memory requests = limits, GPUs, node selector,
    tolerations and /dev/shm per task kind, all bound to the run's resource parameters."""
    from pipelines import resources
    spec, platform = _ir(name)
    params = spec["root"]["inputDefinitions"]["parameters"]
    kinds_seen = set()
    for tname, task, comp in _tasks(spec):
        component = spec["components"][comp]
        if "executorLabel" not in component:
            continue  # a sub-DAG (ParallelFor, If)
        stage = re.sub(r"-\d+$", "", comp.removeprefix("comp-"))  # comp-train-3 -> train
        kind = resources.KINDS.get(stage, "light")
        kinds_seen.add(kind)
        execu = component["executorLabel"]
        res = spec["deploymentSpec"]["executors"][execu]["container"]["resources"]

        def bound(value, param):
            assert param in params, (name, param)
            return value == "{{$.inputs.parameters['pipelinechannel--%s']}}" % param
        assert bound(res["resourceCpuRequest"], f"{kind}_cpu"), tname
        assert bound(res["resourceCpuLimit"], f"{kind}_cpu"), tname
        assert bound(res["resourceMemoryRequest"], f"{kind}_memory"), tname
        assert bound(res["resourceMemoryLimit"], f"{kind}_memory"), tname
        k8s = platform[execu]
        if kind == "light":
            assert "accelerator" not in res, tname
            assert "nodeSelector" not in k8s and "tolerations" not in k8s, tname
        else:
            assert bound(res["accelerator"]["resourceCount"], f"{kind}_gpus"), tname
            assert bound(res["accelerator"]["resourceType"], "accelerator"), tname
            selector = k8s["nodeSelector"]["nodeSelectorJson"]["componentInputParameter"]
            assert selector.endswith("gpu_node_selector"), tname
            assert [t["tolerationJson"]["componentInputParameter"].rsplit("-", 1)[-1]
                    for t in k8s["tolerations"]] == ["gpu_tolerations"]
        shm = [m for m in k8s.get("emptyDirMounts", []) if m["mountPath"] == "/dev/shm"]
        assert bool(shm) == (kind == "train"), tname
        assert all(m["medium"] == "Memory" for m in shm)
        cached = task["cachingOptions"].get("enableCache", False)
        assert cached == (stage not in resources.NOT_CACHED), tname
    want = {"dedup": {"infer", "light"}, "split": {"light"}}.get(name, {"train", "infer", "light"})
    assert kinds_seen == want


@pytest.mark.parametrize("name", sorted(PIPELINES))
@pytest.mark.parametrize("profile", ["cpu", "gpu"])
def test_a_profile_sets_every_resource_parameter(name, profile):
    from pipelines import resources
    spec, _ = _ir(name)
    params = spec["root"]["inputDefinitions"]["parameters"]
    mod = importlib.import_module(f"pipelines.{name}")
    args = mod.arguments(mod.CONFIG(), "/abs/out", profile=profile)
    mine = {k: v for k, v in args.items() if k in resources.DEFAULT.parameters()}
    assert set(mine) == {k for k in params if k in resources.DEFAULT.parameters()}
    p = resources.PROFILES[profile]
    if name == "split":  # light tasks only: no accelerator parameters
        assert mine == {"light_cpu": p.light.cpu, "light_memory": p.light.memory}
        return
    if "train_gpus" in mine:
        assert mine["train_gpus"] == p.train.gpus
    assert mine["infer_gpus"] == p.infer.gpus and mine["light_cpu"] == p.light.cpu
    assert mine["gpu_tolerations"] == p.gpu_tolerations
    if profile == "gpu":
        assert mine["infer_gpus"] >= 1 and mine["gpu_tolerations"][0]["key"] == "nvidia.com/gpu"
        assert mine["gpu_node_selector"]
    else:
        assert mine["infer_gpus"] == 0
        assert not mine["gpu_tolerations"] and not mine["gpu_node_selector"]


def test_every_training_task_takes_the_launcher_parameter():
    """One switch for all of them: launcher.backend=pytorchjob makes every training step a
    PyTorchJob (components/train/runner.py hands it to semisup.pytorchjob)."""
    from semisup_core.train.config import LauncherSpec
    spec, _ = _ir("teacher_student")
    params = spec["root"]["inputDefinitions"]["parameters"]
    assert params["launcher"]["defaultValue"] == LauncherSpec().model_dump(mode="json")
    trains = [(t, task) for t, task, comp in _tasks(spec) if re.fullmatch(r"comp-train(-\d+)?", comp)]
    assert len(trains) >= 6  # baseline, teacher, and pre-train + fine-tune per student
    for tname, task in trains:
        bound = task["inputs"]["parameters"]["launcher"]["componentInputParameter"]
        assert bound in ("launcher", "pipelinechannel--launcher"), tname
