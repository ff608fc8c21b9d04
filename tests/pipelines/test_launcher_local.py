"""The PyTorchJob launcher component under kfp.local (its local torchrun backend): the same
component a cluster runs, on tiny data; the trained model comes back as a KFP Model."""

import os

import pytest

from semisup_core import storage
from tests.train.conftest import write_blocks_dataset

pytestmark = pytest.mark.slow


def test_launcher_component_trains_with_torchrun_and_publishes_the_model(tmp_path):
    from kfp import local

    from components.pytorchjob.component import pytorchjob

    data = write_blocks_dataset(str(tmp_path / "blocks"), 96)
    train = {"out": str(tmp_path / "run"), "data": {"train": data}, "model": "small_resnet8",
             "model_kwargs": {"width": 4, "norm": "group"}, "epochs": 1, "batch_size": 16,
             "threads": 1}
    local.init(runner=local.SubprocessRunner(use_venv=False),
               pipeline_root=str(tmp_path / "kfp"), enable_caching=False)
    task = pytorchjob(name="tiny", train=train, backend="local", workers=0,
                      nproc_per_node=2)
    assert task.outputs["Output"] == "Succeeded"
    model = task.outputs["model"]
    assert model.metadata["world"] == 2 and model.metadata["backend"] == "local"
    assert os.path.exists(os.path.join(model.path, "model.safetensors"))
    metrics = storage.read_json(str(tmp_path / "run" / "metrics.json"))
    assert metrics["world_size"] == 2


def test_launcher_component_fails_the_step_on_a_bad_spec(tmp_path, capfd):
    from kfp import local

    from components.pytorchjob.component import pytorchjob

    local.init(runner=local.SubprocessRunner(use_venv=False),
               pipeline_root=str(tmp_path / "kfp"), enable_caching=False)
    with pytest.raises(RuntimeError, match="FAILURE"):
        pytorchjob(name="Bad_Name", train={"out": str(tmp_path / "run"),
                                           "data": {"train": str(tmp_path)}}, backend="local")
    log = capfd.readouterr()
    log = log.out + log.err
    assert "Bad_Name" in log and "NameError" not in log
    assert not os.path.exists(tmp_path / "run" / "model.safetensors")


def _artifact(path):
    import types
    return types.SimpleNamespace(path=str(path), uri=str(path), metadata={})


def test_a_pipeline_train_task_trains_through_the_launcher(tmp_path):
    """launcher.backend=torchrun (what kfp.local runs for launcher.backend=pytorchjob on a
    cluster): the train component's runner hands the TrainConfig to the PyTorchJob launcher,
    which runs the training entrypoint under torchrun with 2 processes; the model comes back
    as the task's Model, the checkpoints stay in the workdir."""
    from components.train.runner import run

    data = _artifact(write_blocks_dataset(str(tmp_path / "blocks"), 96))
    model = _artifact(tmp_path / "model")
    recipe = {"model": "small_resnet8", "model_kwargs": {"width": 4, "norm": "group"},
              "epochs": 1, "batch_size": 16, "threads": 1}
    summary = run(data, recipe, model, seed=0, checkpoints=str(tmp_path / "work"),
                  launcher={"backend": "torchrun", "nproc_per_node": 2})
    assert summary["world_size"] == 2 and summary["job"].startswith("train-")
    assert model.metadata["backend"] == "torchrun" and model.metadata["job"] == summary["job"]
    assert os.path.exists(os.path.join(model.path, "model.safetensors"))
    (run_dir,) = os.listdir(tmp_path / "work")
    assert storage.read_json(str(tmp_path / "work" / run_dir / "metrics.json"))["world_size"] == 2


@pytest.mark.parametrize("launcher, message", [
    ({"backend": "pytorchjob"}, "launcher.backend=pytorchjob needs checkpoints on s3:// or minio://"),
    ({"backend": "slurm"}, "backend"),
    ({"backend": "torchrun", "workers": -1}, "workers")])
def test_a_bad_launcher_is_one_line_before_anything_runs(tmp_path, launcher, message):
    from components.train.runner import run
    from semisup_core.errors import ConfigError

    data = _artifact(write_blocks_dataset(str(tmp_path / "blocks"), 32))
    recipe = {"model": "small_resnet8", "model_kwargs": {"width": 4}, "epochs": 1,
              "batch_size": 16}
    with pytest.raises(ConfigError, match=message) as e:
        run(data, recipe, _artifact(tmp_path / "model"), checkpoints=str(tmp_path / "work"),
            launcher=launcher)
    assert "\n" not in str(e.value)
    assert not os.path.exists(tmp_path / "work")  # nothing trained, nothing written
