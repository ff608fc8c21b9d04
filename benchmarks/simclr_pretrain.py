"""SimCLR pre-training images/s on the CPU: 1 process vs 2 DDP processes (torchrun, gloo).

    .venv/bin/python benchmarks/simclr_pretrain.py > benchmarks/results/simclr_pretrain.md

The demo's pre-training recipe (configs/simclr_demo.yaml: small_resnet8 width 16, SimCLR views,
3-layer projection head, NT-Xent with the negatives gathered across ranks, LARS) on the
Fashion-MNIST training set (needs one demo or simclr run first, for the imported shards), a
fixed number of images, one thread per process. images/s = steps x global batch / the
training loop's own seconds (metrics.json; start-up excluded); each image is two views.
Median of --repeat. On a GPU the same recipe at ResNet-50 / 224 px with AMP is
benchmarks/gpu.sh's (not run: no GPU was lent).
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile

import numpy as np
import yaml

from training import images_per_second  # benchmarks/training.py (this script's folder)


def recipe() -> dict:
    with open("configs/simclr_demo.yaml") as f:
        return yaml.safe_load(f)["pretrain"]


def run(procs: int, batch: int, images: int, data: str, tmp: str) -> float:
    cfg = dict(recipe(), data={"train": data, "num_workers": 1, "split": "samples"},
               epochs=images / 60000, snapshot_every_epochs=0, checkpoint={"every_steps": 10**6})
    return images_per_second(procs, "contrastive", cfg, batch, tmp)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="runs/simclr/data/fmnist-train")
    ap.add_argument("--images", type=int, default=10240)
    ap.add_argument("--batch", type=int, default=512)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="semisup-simclr-bench-")
    print(f"# SimCLR pre-training benchmark\n\nMachine: {platform.machine()}, {os.cpu_count()} "
          f"cores, {platform.system()} {platform.release()}. Command: `python "
          f"benchmarks/simclr_pretrain.py --images {args.images} --batch {args.batch} --repeat "
          f"{args.repeat}`; the demo's pre-training recipe, {args.images:,} images per run, "
          f"median of {args.repeat}, one thread per process.\n")
    print("| model | global batch | 1 process (img/s) | 2 DDP processes (img/s) | speed-up |")
    print("|---|---:|---:|---:|---:|")
    one, two = ([run(p, args.batch, args.images, args.data, tmp) for _ in range(args.repeat)]
                for p in (1, 2))
    a, b = float(np.median(one)), float(np.median(two))
    r = recipe()
    arch = r["model"] + "".join(f" {k}={v}" for k, v in sorted(r["model_kwargs"].items()))
    print(f"| {arch} | {args.batch} | {a:.0f} | {b:.0f} | {b / a:.2f}x |")


if __name__ == "__main__":
    main()
