"""Issue 22: a `.cls` outside the dataset's classes is one line and exit 2 in training (the
decoded-once cache and the DataLoader-worker paths) and in evaluation."""

import numpy as np
import pytest

from semisup import cli
from semisup_core.data.dataset import make_meta, write_meta
from semisup_core.data.decode import encode_png
from semisup_core.data.shards import ShardWriter


@pytest.fixture(scope="module")
def bad_labels(tmp_path_factory):
    """40 images of 3 classes; sample k017's .cls says 5."""
    uri = str(tmp_path_factory.mktemp("badcls") / "ds")
    with ShardWriter(uri, 16) as w:
        for i in range(40):
            w.write(f"k{i:03d}", encode_png(np.full((28, 28, 1), i, np.uint8)), "png",
                    5 if i == 17 else i % 3)
    write_meta(uri, make_meta(uri, "bad", ["a", "b", "c"], w.shards, {0: 14, 1: 13, 2: 13},
                              source="test", channels=1, hw=(28, 28)))
    return uri


def _error(argv, capsys) -> tuple[int, str]:
    code = cli.main(argv)
    errors = ["semisup: error:" + ln.split("semisup: error:", 1)[1]  # after tqdm's bar, if any
              for ln in capsys.readouterr().err.replace("\r", "\n").splitlines()
              if "semisup: error:" in ln]
    assert len(errors) <= 1
    return code, errors[0] if errors else ""


@pytest.mark.parametrize("cache_mb", [256, 0])  # decoded once in memory / a DataLoader worker
def test_out_of_range_class_in_training(bad_labels, tmp_path, capsys, cache_mb):
    code, err = _error(["stage", "train", "--set", f"out={tmp_path / 'm'}", "--set",
                        f"data.train={bad_labels}", "--set", "model=small_resnet8", "--set",
                        "epochs=1", "--set", "batch_size=8", "--set", f"data.cache_mb={cache_mb}",
                        "--set", "data.num_workers=1", "--set", "threads=1"], capsys)
    assert code == 2
    assert err == ("semisup: error: sample 'k017' has class 5, outside the dataset's 3 "
                        "classes (dataset.json)")


def test_out_of_range_class_in_evaluation(bad_labels, tmp_path, capsys):
    from tests.data.conftest import make_dataset
    good = str(tmp_path / "good")
    make_dataset(good, 24, ["a", "b", "c"], prefix="g", hw=(28, 28))
    assert cli.main(["stage", "train", "--set", f"out={tmp_path / 'm'}", "--set",
                     f"data.train={good}", "--set", "model=small_resnet8", "--set", "epochs=1",
                     "--set", "batch_size=8", "--set", "threads=1"]) == 0
    capsys.readouterr()
    code, err = _error(["stage", "evaluate", "--set", f"model={tmp_path / 'm'}", "--set",
                        f"data={bad_labels}", "--set", f"out={tmp_path / 'e'}"], capsys)
    assert code == 2 and "sample 'k017' has class 5, outside the dataset's 3 classes" in err
    assert not (tmp_path / "e" / "metrics.json").exists()
