"""Reproduce the paper's findings at small scale (issue 3, item 5): one config, three seeds.

    .venv/bin/python benchmarks/reproduce.py prepare --config configs/repro/paper_findings.yaml --seed 0
    .venv/bin/python benchmarks/reproduce.py run --config ... --worker 0 --workers 2
    .venv/bin/python benchmarks/reproduce.py report --config ... > benchmarks/results/paper_findings.md

``prepare`` (once per seed) imports and splits the demo data, trains the supervised baseline
and the teacher, and scores the pool twice: with the teacher, and with the baseline (the
self-training teacher: same architecture and recipe as the student). ``run`` then takes the
(seed, variant) pairs ``worker::workers`` and, for each, selects from those scores, pre-trains
a student on the selection and fine-tunes it on the labels; every pair writes
``OUT/seed-S/results/VARIANT.json`` and is skipped when that file exists, so workers can be
killed and restarted. ``report`` prints mean ± std over seeds per variant and the paired
differences the findings rest on. The run script with timings: ``benchmarks/reproduce.sh``.

Pre-training processes a fixed number of images (``pretrain_samples``) whatever the size of
the selection, as the paper fixes the number of pre-training iterations when it varies K.
"""

from __future__ import annotations

import argparse
import glob
import json
import logging
import os
import platform
import sys
import time
from typing import Literal

import numpy as np
from pydantic import Field

from semisup_core import config, storage
from semisup_core.analysis import selection_analysis
from semisup_core.config import StageConfig
from semisup_core.data.demo_data import prepare_data
from semisup_core.teacher_student.demo import DemoConfig
from semisup_core.teacher_student.score import ScoreConfig, score
from semisup_core.teacher_student.select import SelectConfig, read_manifest, select
from semisup_core.teacher_student.run import Runner, TeacherStudentConfig
from semisup_core.train.config import FinetuneSpec
from semisup_core.train.config import TrainRecipe


class Variant(StageConfig):
    """One student: how its training set is selected, and from which teacher's scores."""

    finding: str = Field(description="which finding (a)-(f) it belongs to")
    teacher: Literal["teacher", "baseline"] = Field("teacher", description="baseline = self-training")
    strategy: Literal["balanced", "unbalanced", "random", "threshold"] = "balanced"
    k: int = Field(2000, ge=1)
    top_p: int = Field(1, ge=1)
    k_law: Literal["frequency", "zipf"] = "frequency"
    pool_fraction: float = Field(1.0, gt=0, le=1)


class ReproConfig(StageConfig):
    out: str = Field(description="where every seed's models, scores and results go")
    data: str = Field("runs/demo", description="the demo's out: its imported data is reused")
    labels_per_class: int = Field(50, ge=1)
    seeds: list[int] = Field(min_length=1)
    baseline: TrainRecipe
    teacher: TrainRecipe
    student: TrainRecipe
    finetune: FinetuneSpec
    pretrain_samples: int = Field(ge=1, description="images processed in pre-training, any K")
    score_top_p: int = Field(ge=1, description="classes kept per image when scoring (max P used)")
    score_k: int = Field(ge=1, description="per-worker partial top-K when scoring (max K used)")
    variants: dict[str, Variant] = Field(min_length=1)


def _runner(cfg: ReproConfig, seed: int) -> tuple[Runner, dict]:
    data = prepare_data(DemoConfig(out=cfg.data, labels_per_class=cfg.labels_per_class, seed=seed))
    ts = TeacherStudentConfig(out=storage.join(cfg.out, f"seed-{seed}"), seed=seed, **data)
    return Runner(ts), data


def prepare(cfg: ReproConfig, seed: int) -> None:
    r, data = _runner(cfg, seed)
    for name, recipe in (("baseline", cfg.baseline), ("teacher", cfg.teacher)):
        model = r.train_eval(name, recipe, data["labelled"])
        out = storage.join(r.cfg.out, f"scores-{name}")
        score(ScoreConfig(model=model, pool=data["pool"], out=out,
                          top_p=cfg.score_top_p, partial_k=cfg.score_k))
    storage.write_json(storage.join(r.cfg.out, "prepared.json"), {"models": r.results["models"]})


def run_variant(cfg: ReproConfig, seed: int, name: str) -> dict:
    v = cfg.variants[name]
    r, data = _runner(cfg, seed)
    done = storage.join(r.cfg.out, "results", f"{name}.json")
    if storage.exists(done):
        return storage.read_json(done)
    if not storage.exists(storage.join(r.cfg.out, "prepared.json")):
        raise SystemExit(f"seed {seed} is not prepared: run `reproduce.py prepare --seed {seed}` first")
    t0 = time.time()
    sel = storage.join(r.cfg.out, "select", name)
    scores = storage.join(r.cfg.out, f"scores-{v.teacher}")
    summary = select(SelectConfig(scores=scores, out=sel, strategy=v.strategy,
                                  k=v.k, k_law=v.k_law, top_p=v.top_p, pool_fraction=v.pool_fraction,
                                  seed=seed, pool=data["pool"]))
    manifest = read_manifest(storage.join(sel, "manifest.parquet"))
    analysis = selection_analysis(manifest, data["oracle"])
    epochs = cfg.pretrain_samples / max(1, summary["selected"])
    pre = r.train_eval(f"{name}-pretrain", cfg.student.model_copy(update={"epochs": epochs}),
                       storage.join(sel, "selected"))
    ft = cfg.finetune.model_copy(update={"model": cfg.student.model,
                                         "model_kwargs": cfg.student.model_kwargs})
    r.train_eval(name, ft, data["labelled"], init_from=pre)
    m = r.results["models"]
    result = {"variant": name, "seed": seed, **v.model_dump(), "selected": summary["selected"],
              "pretrain_epochs": epochs, "pretrained_top1": m[f"{name}-pretrain"]["top1"],
              "top1": m[name]["top1"], "precision": analysis["precision"],
              "distractor_share": analysis["distractor_share"], "seconds": time.time() - t0}
    storage.write_json(done, result)
    return result


def _stats(values: list[float]) -> str:
    v = 100 * np.asarray(values)
    return f"{v.mean():.2f} ± {v.std(ddof=1) if len(v) > 1 else 0:.2f}"


def report(cfg: ReproConfig) -> None:
    rows: dict[str, dict[int, dict]] = {}
    for path in glob.glob(os.path.join(cfg.out, "seed-*", "results", "*.json")):
        res = json.load(open(path))
        if res["seed"] in cfg.seeds and res["variant"] in cfg.variants:
            rows.setdefault(res["variant"], {})[res["seed"]] = res
    base: dict[int, float] = {}
    teach: dict[int, float] = {}
    for s in cfg.seeds:
        p = os.path.join(cfg.out, f"seed-{s}", "prepared.json")
        if os.path.exists(p):
            models = json.load(open(p))["models"]
            base[s], teach[s] = models["baseline"]["top1"], models["teacher"]["top1"]
    print(f"Machine: {platform.machine()}, {os.cpu_count()} cores, {platform.system()} "
          f"{platform.release()}; seeds {cfg.seeds}; {cfg.labels_per_class} labels per class.\n")
    print(f"| model | top-1 mean ± std | per seed |\n|---|---:|---|")
    for name, d in (("supervised baseline", base), ("teacher", teach)):
        print(f"| {name} | {_stats(list(d.values()))} | "
              + ", ".join(f"{100 * d[s]:.2f}" for s in sorted(d)) + " |")
    print("\n| finding | variant | strategy | K | P | pool | pre-trained only | fine-tuned | "
          "fine-tuned − baseline (paired) | selection precision | distractors | seeds |")
    print("|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, v in cfg.variants.items():
        got = rows.get(name, {})
        if not got:
            print(f"| {v.finding} | {name} | not run |")
            continue
        res = [got[s] for s in sorted(got)]
        diff = [x["top1"] - base[x["seed"]] for x in res if x["seed"] in base]
        strategy = v.strategy + (f" ({v.k_law})" if v.strategy == "unbalanced" else "")
        strategy += ", self-training" if v.teacher == "baseline" else ""
        print(f"| {v.finding} | {name} | {strategy} | {v.k} | {v.top_p} | {v.pool_fraction:g} | "
              f"{_stats([x['pretrained_top1'] for x in res])} | {_stats([x['top1'] for x in res])} | "
              f"{_stats(diff) if diff else ''} | {_stats([x['precision'] for x in res])} | "
              f"{_stats([x['distractor_share'] for x in res])} | {len(res)} |")


def main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("command", choices=["prepare", "run", "report"])
    ap.add_argument("--config", required=True)
    ap.add_argument("--seed", type=int, action="append", help="prepare: seeds (default: all)")
    ap.add_argument("--worker", type=int, default=0)
    ap.add_argument("--workers", type=int, default=1)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    cfg = config.load(ReproConfig, args.config)
    if args.command == "prepare":
        for s in args.seed or cfg.seeds:
            prepare(cfg, s)
    elif args.command == "run":
        tasks = [(s, n) for s in cfg.seeds for n in cfg.variants]
        for s, n in tasks[args.worker::args.workers]:
            res = run_variant(cfg, s, n)
            print(json.dumps({k: res[k] for k in ("seed", "variant", "top1", "pretrained_top1",
                                                  "precision", "seconds")}), flush=True)
    else:
        report(cfg)


if __name__ == "__main__":
    main(sys.argv[1:])
