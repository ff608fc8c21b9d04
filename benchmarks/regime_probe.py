"""Regime probes: train / score+select / student steps in one process, for choosing the demo's
regime (results: benchmarks/results/regime_probes.md, which lists every command run).

    .venv/bin/python benchmarks/regime_probe.py OUT LABELS_PER_CLASS SEED STEP [STEP ...]

Each STEP is a JSON object: {"op": "train", "name": N, "r": RECIPE} trains and evaluates a
model on the labelled set; {"op": "score", "teacher": N, "round": R, "sel": {"top_p", "k"}}
scores the pool with model N and selects into OUT/round-R; {"op": "student", "name": N,
"round": R, "r": RECIPE, "ft": {"epochs", "lr"}} pre-trains on OUT/round-R/selected and
fine-tunes on the labels. RECIPE: {"model", "width", "epochs", "bs", "lr"} (lr per 256).
Data: the demo's import and split (runs/demo3/data, imported once). One thread per process.
"""

from __future__ import annotations

import json
import logging
import sys

from semisup_core import storage
from semisup_core.data.demo_data import prepare_data
from semisup_core.teacher_student.demo import DemoConfig
from semisup_core.teacher_student.run import Runner, SelectionSpec, TeacherStudentConfig
from semisup_core.train.config import TrainRecipe


def recipe(model: str, width: int, epochs: float, bs: int, lr: float, **optim) -> TrainRecipe:
    return TrainRecipe(model=model, model_kwargs={"width": width}, epochs=epochs, batch_size=bs,
                       optim={"lr": lr, **optim}, threads=1)


def step(out: str, seed: int, data: dict, spec: dict) -> dict:
    """Run one probe step; returns every model's top-1 so far."""
    sel = SelectionSpec(**spec.get("sel", {"top_p": 1, "k": 4000}))
    r = Runner(TeacherStudentConfig(out=out, seed=seed, selection=sel, **data))
    if spec["op"] == "train":
        r.train_eval(spec["name"], recipe(**spec["r"]), data["labelled"])
    elif spec["op"] == "score":
        r.score_select(storage.join(out, "models", spec["teacher"]), spec["round"])
    elif spec["op"] == "student":
        selected = storage.join(out, f"round-{spec['round']}", "selected")
        pre = r.train_eval(spec["name"] + "-pre", recipe(**spec["r"]), selected)
        ft = spec["ft"]
        rec = recipe(spec["r"]["model"], spec["r"]["width"], ft["epochs"], 64, ft["lr"],
                     warmup_epochs=0)
        r.train_eval(spec["name"], rec, data["labelled"], init_from=pre)
    return {k: v["top1"] for k, v in r.results["models"].items()}


def main(argv: list[str]) -> None:
    logging.basicConfig(level=logging.WARNING)
    out, lpc, seed = argv[0], int(argv[1]), int(argv[2])
    data = prepare_data(DemoConfig(out="runs/demo3", labels_per_class=lpc, seed=seed))
    for raw in argv[3:]:
        print(raw, json.dumps(step(out, seed, data, json.loads(raw))), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
