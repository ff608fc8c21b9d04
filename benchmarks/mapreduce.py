"""Map/reduce over the pool: 1, 2 and 4 scoring worker processes, then one select.

    .venv/bin/python benchmarks/mapreduce.py > benchmarks/results/mapreduce.md   # ~6 min here

Each worker is its own process (`semisup stage score --set worker=i --set num_workers=N`,
one thread each, started together as a ParallelFor or a PyTorchJob would start them) over
the demo pool (30 shards, 119.5k images; needs `make demo` once), with the demo teacher's
architecture (small_resnet14 width 16, random weights); then `semisup stage select`
(balanced, K=2000, P=2) over their outputs. Reported: wall-clock of the map (all workers),
images/s, the speed-up over one worker, and whether every manifest is byte-identical to
the one-worker manifest.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import platform
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(__file__))
from scoring import model_dir  # noqa: E402

from semisup_core.data.dataset import read_meta  # noqa: E402

SEMISUP = os.path.join(os.path.dirname(sys.executable), "semisup")


def run_map(model: str, pool: str, out: str, n: int) -> float:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    t0 = time.perf_counter()
    procs = [subprocess.Popen([SEMISUP, "stage", "score", "--set", f"model={model}", "--set", f"pool={pool}",
                               "--set", f"out={out}", "--set", "top_p=2", "--set", "partial_k=2000",
                               "--set", f"worker={w}", "--set", f"num_workers={n}",
                               "--set", "decoder=dali", "--set", "decode_threads=1"],
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
             for w in range(n)]
    for p in procs:
        _, err = p.communicate()
        if p.returncode:
            raise SystemExit(f"score worker failed:\n{err[-2000:]}")
    return time.perf_counter() - t0


def run_select(scores: str, out: str) -> str:
    subprocess.run([SEMISUP, "stage", "select", "--set", f"scores={scores}", "--set", f"out={out}",
                    "--set", "k=2000", "--set", "strategy=balanced"], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    with open(os.path.join(out, "manifest.parquet"), "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pool", default="runs/demo/data/split-n50-s0/unlabelled")
    ap.add_argument("--workers", default="1,2,4")
    args = ap.parse_args()
    meta = read_meta(args.pool)
    tmp = tempfile.mkdtemp(prefix="semisup-mapreduce-")
    model = model_dir(os.path.join(tmp, "model"), "small_resnet14", 1, meta.classes, width=16)
    print(f"# Map/reduce benchmark\n\nMachine: {platform.machine()}, {os.cpu_count()} cores, "
          f"{platform.system()} {platform.release()}. Command: `python benchmarks/mapreduce.py`. "
          f"Pool: {meta.num_samples:,} images in {len(meta.shards)} shards; one thread per worker.\n")
    print("| workers | map wall-clock (s) | images/s | speed-up | manifest sha256 | identical to 1 worker |")
    print("|---:|---:|---:|---:|---|---|")
    base_t = base_h = None
    for n in (int(x) for x in args.workers.split(",")):
        scores = os.path.join(tmp, f"scores-{n}")
        t = run_map(model, args.pool, scores, n)
        h = run_select(scores, os.path.join(tmp, f"select-{n}"))
        base_t, base_h = base_t or t, base_h or h
        print(f"| {n} | {t:.1f} | {meta.num_samples / t:.0f} | {base_t / t:.2f} | {h[:16]} | "
              f"{h == base_h} |", flush=True)


if __name__ == "__main__":
    main()
