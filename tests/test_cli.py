"""The ``semisup`` command: help text, and one-line errors with exit status 2."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from semisup.cli import main

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(args, capsys) -> tuple[int, str]:
    code = main(args)
    return code, capsys.readouterr().err


def _assert_one_line(err: str, fragment: str) -> None:
    lines = [line for line in err.splitlines() if line.startswith("semisup: error:")]
    assert len(lines) == 1 and fragment in lines[0], err
    assert "Traceback" not in err


def test_help_documents_every_field():
    out = subprocess.run([sys.executable, "-m", "semisup", "stage", "train", "--help"], cwd=REPO,
                         capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=REPO)).stdout
    assert "optim.lr" in out and "per 256 images" in out and "checkpoint.every_steps" in out


def test_unknown_config_key(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("out: /tmp/x\ndata: {train: /tmp/d}\nepohcs: 3\n")
    code, err = _run(["stage", "train", "-c", str(cfg)], capsys)
    assert code == 2
    _assert_one_line(err, "epohcs: unknown key")


def test_missing_config_file(tmp_path, capsys):
    code, err = _run(["stage", "train", "-c", str(tmp_path / "nope.yaml")], capsys)
    assert code == 2
    _assert_one_line(err, "no such file")


def test_missing_dataset(tmp_path, capsys):
    code, err = _run(["stage", "train", "--set", f"out={tmp_path}/o",
                      "--set", f"data.train={tmp_path}/no-such-dataset"], capsys)
    assert code == 2
    _assert_one_line(err, "is not a dataset")


def test_missing_raw_data(tmp_path, capsys):
    code, err = _run(["data", "import", "--set", "source=fashion-mnist",
                      "--set", f"src={tmp_path}/nothing", "--set", f"out={tmp_path}/o"], capsys)
    assert code == 2
    _assert_one_line(err, str(tmp_path / "nothing"))


@pytest.mark.parametrize("group", ["data", "stage"])
def test_data_stages_under_data_and_stage(group, tmp_path, capsys):
    """`stage import` (the data image's entrypoint) is `data import`: same handler and config."""
    code, err = _run([group, "import", "--set", "source=fashion-mnist",
                      "--set", f"src={tmp_path}/nothing", "--set", f"out={tmp_path}/o"], capsys)
    assert code == 2
    _assert_one_line(err, str(tmp_path / "nothing"))


def test_parser_imports_no_stage_module():
    """Building the CLI imports no stage (and so no torch): the CPU images run it."""
    code = ("import sys; from semisup.cli import build_parser; build_parser(); "
            "print(sorted(m for m in sys.modules if m.startswith(('torch', 'semisup_core.'))))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                         env=dict(os.environ, PYTHONPATH=REPO)).stdout
    assert "torch" not in out and "semisup_core.train" not in out, out


def test_s3_bucket_that_does_not_exist(s3_env, tmp_path, capsys):
    code, err = _run(["stage", "train", "--set", f"out={tmp_path}/o",
                      "--set", "data.train=s3://no-such-bucket-semisup/ds"], capsys)
    assert code == 2
    _assert_one_line(err, "bucket 'no-such-bucket-semisup' does not exist")


def test_s3_wrong_credentials(s3_env, tmp_path, capsys, monkeypatch):
    from semisup_core import storage

    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong-secret-key")
    storage.reset_backends()
    code, err = _run(["stage", "evaluate", "--set", f"model={s3_env}/m",
                      "--set", f"data={s3_env}/d", "--set", f"out={tmp_path}/o"], capsys)
    assert code == 2
    _assert_one_line(err, "access denied")


def test_s3_missing_credentials(tmp_path, capsys, monkeypatch):
    from semisup_core import storage

    for var in ("S3_ENDPOINT", "MINIO_ENDPOINT", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
                "MINIO_ACCESS_KEY", "MINIO_SECRET_KEY", "MINIO_ROOT_USER", "MINIO_ROOT_PASSWORD"):
        monkeypatch.delenv(var, raising=False)
    storage.reset_backends()
    code, err = _run(["stage", "train", "--set", f"out={tmp_path}/o",
                      "--set", "data.train=s3://bucket/ds"], capsys)
    assert code == 2
    _assert_one_line(err, "S3_ENDPOINT")
    storage.reset_backends()


def test_models_lists_the_registry(capsys):
    assert main(["models"]) == 0
    assert "small_resnet8" in capsys.readouterr().out


@pytest.mark.parametrize("argv", [["stage"], ["stage", "nope"]])
def test_usage_errors_exit_2(argv):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2


def test_a_config_of_another_stage_is_named(capsys):
    """Issue 22: a config from another stage (or a file of sections without --section) is one
    line that says so, exit 2."""
    cfg = os.path.join(os.path.dirname(os.path.dirname(__file__)), "configs", "fmnist_supervised.yaml")
    assert main(["stage", "score", "-c", cfg]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.endswith(
        "(the file holds sections evaluate, train: pass --section NAME)")
    assert main(["stage", "score", "-c", cfg, "--section", "train"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.endswith(
        "(it is a config of `semisup stage train`, not of `score`)")
