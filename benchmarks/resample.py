"""Memory of the weak training set's copy (``wsl/resample.write_resampled``, issue 20) against
the pool's size: the streamed copy against the in-memory copy it replaced.

    .venv/bin/python benchmarks/resample.py > benchmarks/results/resample.md   # ~6 min here

For each pool size N (default 1e5 and 4e5 images; each "image" 5,000 random bytes, the size of
a small JPEG, 4,096 per shard; one tag per image over 1,000 labels, Zipf-like), 2 draws per
image, in fresh processes: the streamed copy (``spill_mb`` 64) and the in-memory one (every
drawn image's bytes in a dict, then one writer in draw order: the first version, kept in
tests/wsl/test_weak.py as the brute-force twin). Wall time and peak RSS (VmHWM); both
processes import the same modules (the test module pulls in torch), so the base is the same.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

IMAGE_BYTES = 5000


def make_pool(root: str, n: int) -> str:
    from semisup_core.data.dataset import make_meta, write_meta
    from semisup_core.data.shards import ShardWriter
    if os.path.exists(os.path.join(root, "dataset.json")):
        return root
    rng = np.random.default_rng(0)
    blob = rng.bytes(IMAGE_BYTES + 4096)
    with ShardWriter(root, 4096) as w:
        for i in range(n):
            w.write(f"img-{i:08d}", blob[i % 4096:i % 4096 + IMAGE_BYTES], "jpg")
    write_meta(root, make_meta(root, "pool", [], w.shards, None, source="bench", channels=3))
    return root


def child(mode: str, pool: str, out: str) -> None:
    from types import SimpleNamespace

    from semisup_core.data.dataset import read_meta
    from semisup_core.wsl import resample
    from tests.wsl.test_weak import _in_memory_copy  # both modes: the same imports, same base RSS
    meta = read_meta(pool)
    n = meta.num_samples
    keys = [f"img-{i:08d}" for i in range(n)]
    rng = np.random.default_rng(1)
    labels = [[int(t)] for t in np.minimum(rng.zipf(1.3, n) - 1, 999)]
    vocab = [f"t{i}.n.01" for i in range(1000)]
    cfg = SimpleNamespace(data=pool, draws=2.0, power=0.5, seed=0, samples_per_shard=4096)
    t0 = time.time()
    if mode == "streamed":
        resample.write_resampled(cfg, meta, keys, labels, vocab, out, spill_mb=64)
    else:
        _in_memory_copy(cfg, meta, keys, labels, vocab, out)
    rss = next(int(line.split()[1]) for line in open("/proc/self/status")
               if line.startswith("VmHWM"))
    print(json.dumps({"seconds": round(time.time() - t0, 1), "peak_mib": round(rss / 1024)}))


def measure(mode: str, pool: str, out: str) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    proc = subprocess.run([sys.executable, __file__, "--child", mode, pool, out],
                          capture_output=True, text=True, check=True)
    shutil.rmtree(out, ignore_errors=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="100000,400000")
    ap.add_argument("--child", nargs=3)
    args = ap.parse_args()
    if args.child:
        return child(*args.child)
    import torch
    print("# Weak training set copy: memory against the pool's size (issue 20)\n")
    print(f"Driver: `benchmarks/resample.py` (module doc: set-up). Machine: {platform.machine()}, "
          f"{os.cpu_count()} cores, {platform.platform()}; torch {torch.__version__}; "
          f"{time.strftime('%Y-%m-%d')}. 2 draws per image, {IMAGE_BYTES}-byte images.\n")
    print("| pool images | streamed copy: s | peak RSS (MiB) | in-memory copy: s | peak RSS (MiB) |")
    print("|---:|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP")) as tmp:
        for n in (int(float(x)) for x in args.sizes.split(",")):
            pool = make_pool(os.path.join(tmp, f"pool-{n}"), n)
            s = measure("streamed", pool, os.path.join(tmp, "out"))
            m = measure("memory", pool, os.path.join(tmp, "out"))
            print(f"| {n:,} | {s['seconds']} | {s['peak_mib']} | {m['seconds']} | "
                  f"{m['peak_mib']} |", flush=True)
            shutil.rmtree(pool)


if __name__ == "__main__":
    main()
