"""`semisup run split` under kfp.local: the split in hash order as parallel map and reduce
tasks (a ParallelFor each, a fan-in between) writes what one process writes, and a method's
split step with split_order hash reuses it."""

import glob
import json
import os

import pytest
import yaml

from semisup.cli import main

pytestmark = pytest.mark.slow


def _tree(root: str) -> dict[str, bytes]:
    """The split's files (not its config: it records how many workers wrote it)."""
    out = {}
    for d, _, names in os.walk(root):
        for n in names:
            rel = os.path.relpath(os.path.join(d, n), root)
            if n != "split-config.yaml":
                out[rel] = open(os.path.join(d, n), "rb").read().replace(root.encode(), b"<out>")
    return out


def test_the_split_pipeline_writes_the_one_process_split(tmp_path, tiny_raw, capsys,
                                                         monkeypatch):
    cfg = tmp_path / "split.yaml"
    cfg.write_text(yaml.safe_dump(dict(out=str(tmp_path / "kfp"), labels_per_class=10,
                                       num_workers=3, spill_mb=0.01, **tiny_raw)))
    assert main(["run", "split", "--config", str(cfg)]) == 0
    assert "Split in hash order by 3 map and 3 reduce tasks" in capsys.readouterr().out
    data = tmp_path / "kfp" / "data"
    split = data / "split-n10-s0-hash"
    # every map and reduce task did its share (none found the split done before it)
    done = sorted(json.load(open(f))["parameterValues"]["Output"] for f in glob.glob(
        str(tmp_path / "kfp" / "kfp" / "*" / "for-loop-*" / "split-phase-*" / "executor_output.json")))
    assert done == [f"{p} {w}" for p in ("map", "reduce") for w in range(3)], done
    # the same split by one process, from the pipeline's own imports
    assert main(["data", "split", "--set", f"dataset={data / 'fmnist-train'}", "--set",
                 f"out={tmp_path / 'one'}", "--set", "labels_per_class=10", "--set",
                 f"distractors=[{data / 'mnist-train'}]", "--set", "order=hash"]) == 0
    got, want = _tree(str(split)), _tree(str(tmp_path / "one"))
    assert got == want and "unlabelled/dataset.json" in got and not any("_work" in k for k in got)
    # a method's split step (hash order, one task) finds it and reuses it
    from components.data import runner
    monkeypatch.setattr(runner, "run_split", lambda cfg: pytest.fail("split again"))

    class Artifact:
        def __init__(self, path):
            self.path, self.uri, self.metadata = str(path), str(path), {}
    train, digits = Artifact(tmp_path / "t"), Artifact(tmp_path / "d")
    runner.write_ref(train, str(data / "fmnist-train"))
    runner.write_ref(digits, str(data / "mnist-train"))
    outs = [Artifact(tmp_path / n) for n in ("l", "p", "o")]
    labelled, pool, _ = runner.split_data(train, str(data), 10, 0, digits, *outs, order="hash")
    assert labelled == str(split / "labelled") and pool == str(split / "unlabelled")


def test_the_in_process_runners_split_in_hash_order_when_asked(tmp_path, tiny_raw):
    from semisup_core.data.dataset import read_meta
    from semisup_core.data.demo_data import DemoData, prepare_data
    uris = {o: prepare_data(DemoData(out=str(tmp_path / o), labels_per_class=10, split_order=o,
                                     **tiny_raw)) for o in ("permutation", "hash")}
    assert uris["hash"]["pool"].endswith("split-n10-s0-hash/unlabelled")
    assert uris["permutation"]["pool"].endswith("split-n10-s0/unlabelled")
    split = read_meta(os.path.join(os.path.dirname(uris["hash"]["pool"]), "unlabelled"))
    same = read_meta(uris["permutation"]["pool"])
    assert split.num_samples == same.num_samples  # the same pool, in another order
    assert json.load(open(os.path.join(os.path.dirname(uris["hash"]["pool"]), "split.json")))[
        "order"] == "hash"
