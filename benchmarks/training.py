"""Training images/s on the CPU: 1 process vs 2 DDP processes (torchrun, gloo), demo models.

    .venv/bin/python benchmarks/training.py > benchmarks/results/training.md   # ~8 min here

The demo's models on Fashion-MNIST train (needs `make demo` once): the student
(small_resnet8 width 4, global batch 128) and the teacher (small_resnet14 width 16, global
batch 64), a fixed number of steps, one thread per process. images/s = steps x global batch /
the training loop's own seconds (from metrics.json; start-up excluded). Median of --repeat.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile

import numpy as np
import yaml

BIN = os.path.dirname(sys.executable)


def images_per_second(procs: int, stage: str, cfg: dict, batch: int, tmp: str) -> float:
    """Run ``semisup stage <stage>`` on ``cfg`` (a TrainConfig without ``out``) in ``procs``
    processes (torchrun when > 1), one thread each; images/s from its metrics.json."""
    out = tempfile.mkdtemp(dir=tmp)
    path = os.path.join(out, "bench.yaml")
    with open(path, "w") as f:
        yaml.safe_dump(dict(cfg, out=out, batch_size=batch, threads=1), f)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = ([os.path.join(BIN, "torchrun"), "--standalone", f"--nproc_per_node={procs}", "-m", "semisup"]
           if procs > 1 else [os.path.join(BIN, "semisup")]) + ["stage", stage, "-c", path]
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    with open(os.path.join(out, "metrics.json")) as f:
        m = json.load(f)
    return m["steps"] * batch / m["seconds"]


def run(procs: int, model: str, width: int, batch: int, images: int, data: str, tmp: str) -> float:
    cfg = {"data": {"train": data, "num_workers": 1}, "model": model,
           "model_kwargs": {"width": width}, "epochs": images / 60000, "optim": {"lr": 0.4},
           "checkpoint": {"every_steps": 10**6}}
    return images_per_second(procs, "train", cfg, batch, tmp)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="runs/demo/data/fmnist-train")
    ap.add_argument("--images", type=int, default=25600)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="semisup-train-bench-")
    print(f"# Training benchmark\n\nMachine: {platform.machine()}, {os.cpu_count()} cores, "
          f"{platform.system()} {platform.release()}. Command: `python benchmarks/training.py "
          f"--images {args.images} --repeat {args.repeat}`; {args.images:,} images per run, "
          f"median of {args.repeat}, one thread per process.\n")
    print("| model | global batch | 1 process (img/s) | 2 DDP processes (img/s) | speed-up |")
    print("|---|---:|---:|---:|---:|")
    for model, width, batch in (("small_resnet8", 4, 128), ("small_resnet14", 16, 64)):
        one, two = ([run(p, model, width, batch, args.images, args.data, tmp) for _ in range(args.repeat)]
                    for p in (1, 2))
        a, b = float(np.median(one)), float(np.median(two))
        print(f"| {model} width {width} | {batch} | {a:.0f} | {b:.0f} | {b / a:.2f} |", flush=True)


if __name__ == "__main__":
    main()
