"""Soak: the demo's training steps and the 2-process DDP run, repeated, in both CPU layouts.

    .venv/bin/python benchmarks/soak.py > benchmarks/results/soak.md    # ~15 min here

Needs `make demo` once (Fashion-MNIST train under runs/demo/data). Every run is a real
`semisup stage train` (torchrun for DDP) in its own process group with a time limit, under
``ONEDNN_MAX_CPU_ISA=AVX2``: the kernels of every AMD EPYC and of Intel CPUs without AVX-512,
where oneDNN's channels-last 1x1 backward-weights kernel breaks (uxlfoundation/oneDNN#6035).
Each run ends as one of: ok; crash (a signal: double free, segfault, bus error); hang (no
exit within the limit; the stall watchdog is off here, to see the raw behaviour); wrong
gradient (the stage's float64 gradient check refused, exit 2). `contiguous` is what training
uses on CPU now; `channels_last` is what it used before (`--set memory_format=channels_last`).

Then the cost of the layout on this machine's own kernels (no ISA cap): the demo's three
training recipes, images/s of the training loop (metrics.json), median of --speed-repeat.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time

import numpy as np
import yaml

BIN = os.path.dirname(sys.executable)
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# (label, model, width, global batch, processes, threads per process): the demo's baseline /
# student steps (small_resnet8 width 4, batch 64, 2 threads as `threads: 0` gives on 2 cores),
# on 1 thread, and the DDP test's shape (2 processes x 1 thread, GroupNorm)
SOAK = [("demo baseline steps, 2 threads", "small_resnet8", {"width": 4}, 64, 1, 2),
        ("demo baseline steps, 1 thread", "small_resnet8", {"width": 4}, 64, 1, 1),
        ("DDP 2 processes x 1 thread", "small_resnet8", {"width": 4, "norm": "group"}, 16, 2, 1)]
# (recipe, model, kwargs, batch, data): the demo's baseline and teacher on its 500 labels (an
# epoch is 7 steps, so a fresh data loader every 7 steps, as in the demo), the student's
# pre-training on 60k images
SPEED = [("baseline", "small_resnet8", {"width": 4}, 64, "labelled"),
         ("student pre-training", "small_resnet8", {"width": 4}, 128, "data"),
         ("teacher", "small_resnet14", {"width": 16}, 64, "labelled")]


def run_stage(cfg: dict, procs: int, env: dict, limit: float, tmp: str) -> tuple[str, dict | None]:
    """Run one training; (outcome, metrics.json or None)."""
    out = tempfile.mkdtemp(dir=tmp)
    cfg = dict(cfg, out=out)
    path = os.path.join(out, "soak.yaml")
    with open(path, "w") as f:
        yaml.safe_dump(cfg, f)
    cmd = ([os.path.join(BIN, "torchrun"), "--standalone", f"--nproc_per_node={procs}", "-m", "semisup"]
           if procs > 1 else [os.path.join(BIN, "semisup")]) + ["stage", "train", "-c", path]
    proc = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    try:
        _, err = proc.communicate(timeout=limit)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        return "hang", None
    if proc.returncode == 0:
        with open(os.path.join(out, "metrics.json")) as f:
            return "ok", json.load(f)
    if "wrong gradients" in err:
        return "wrong gradient", None
    return "crash", None


def train_cfg(data: str, model: str, kwargs: dict, batch: int, steps: int, threads: int,
              layout: str) -> dict:
    with open(os.path.join(data, "dataset.json")) as f:
        n = sum(json.load(f)["class_counts"])
    return {"data": {"train": data, "num_workers": 1}, "model": model, "model_kwargs": kwargs,
            "batch_size": batch, "epochs": steps / (n // batch), "threads": threads,
            "memory_format": layout, "stall_timeout_s": 0, "optim": {"lr": 0.4},
            "checkpoint": {"every_steps": 10**6}}


def soak(args, tmp: str) -> None:
    env = dict(os.environ, ONEDNN_MAX_CPU_ISA="AVX2")
    print(f"## Soak: {args.repeat} runs of each now, {args.before_repeat} before, ONEDNN_MAX_CPU_ISA=AVX2, {args.steps} steps a run, "
          f"limit {args.limit:.0f} s a run\n")
    print("| run | layout | ok | crash | hang | wrong gradient | median s (ok runs) |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for label, model, kwargs, batch, procs, threads in SOAK:
        for layout in ("contiguous", "channels_last"):
            counts, secs = collections.Counter(), []
            for _ in range(args.repeat if layout == "contiguous" else args.before_repeat):
                t0 = time.time()
                outcome, _ = run_stage(train_cfg(args.data, model, kwargs, batch, args.steps, threads,
                                                 layout), procs, dict(env, OMP_NUM_THREADS=str(threads)),
                                       args.limit, tmp)
                counts[outcome] += 1
                if outcome == "ok":
                    secs.append(time.time() - t0)
            med = f"{np.median(secs):.1f}" if secs else ""
            print(f"| {label} | {layout} | {counts['ok']} | {counts['crash']} | {counts['hang']} | "
                  f"{counts['wrong gradient']} | {med} |", flush=True)


def speed(args, tmp: str) -> None:
    env = {k: v for k, v in os.environ.items() if k != "ONEDNN_MAX_CPU_ISA"}
    print(f"\n## Layout cost: training images/s on this CPU's own kernels, 1 process x 2 threads, "
          f"{args.speed_steps} steps, median of {args.speed_repeat}\n")
    print("| demo recipe | model | batch | contiguous (now) | channels_last (before) | now / before |")
    print("|---|---|---:|---:|---:|---:|")
    for label, model, kwargs, batch, data in SPEED:
        rates = {}
        for layout in ("contiguous", "channels_last"):
            r = []
            for _ in range(args.speed_repeat):
                outcome, m = run_stage(train_cfg(getattr(args, data), model, kwargs, batch, args.speed_steps, 2,
                                                 layout), 1, env, args.limit * 4, tmp)
                assert outcome == "ok", f"{label} {layout}: {outcome}"
                r.append(m["steps"] * batch / m["seconds"])
            rates[layout] = float(np.median(r))
        a, b = rates["contiguous"], rates["channels_last"]
        width = kwargs["width"]
        print(f"| {label} | {model} width {width} | {batch} | {a:.0f} | {b:.0f} | {a / b:.2f} |", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="runs/demo/data/fmnist-train")
    ap.add_argument("--labelled", default="runs/demo/data/split-n50-s0/labelled",
                    help="the demo's 500 labelled images: what its baseline and teacher train on")
    ap.add_argument("--skip-soak", action="store_true")
    ap.add_argument("--skip-speed", action="store_true")
    ap.add_argument("--repeat", type=int, default=20)
    ap.add_argument("--before-repeat", type=int, default=5, help="runs of the old layout (a hang "
                    "costs --limit seconds)")
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--limit", type=float, default=60.0, help="seconds before a run counts as hung")
    ap.add_argument("--speed-steps", type=int, default=300)
    ap.add_argument("--speed-repeat", type=int, default=3)
    args = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="semisup-soak-")
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                if line.startswith("model name")), platform.processor())
    import torch
    print(f"# Soak and layout benchmark\n\nMachine: {cpu}, {os.cpu_count()} cores, {platform.system()} "
          f"{platform.release()}; torch {torch.__version__}. Command: `python benchmarks/soak.py "
          f"--repeat {args.repeat} --before-repeat {args.before_repeat} --steps {args.steps}`.\n")
    if not args.skip_soak:
        soak(args, tmp)
    if not args.skip_speed:
        speed(args, tmp)


if __name__ == "__main__":
    main()
