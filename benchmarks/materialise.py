"""Memory of the manifest materialisation and of the split against the pool's size (issue 21).

    .venv/bin/python benchmarks/materialise.py > benchmarks/results/materialise.md   # ~10 min here

For each pool size N (default 2e5 and 1e6 images: 28x28 grey PNGs, one encoded image
repeated, 4,096 per shard, so that writing the pool costs little), in fresh processes:

1. ``manifest_dataset`` of a manifest of a fixed M rows (default 20,000: K*C of the demo's
   10 classes x 2,000) drawn at random over the whole pool (so every shard holds some):
   wall time and peak RSS;
2. ``split_labelled`` of the same images as a labelled dataset (10 classes, 10 labels per
   class): wall time and peak RSS;
3. the same split in hash order (``split_hashed``, data/split_hash.py) with ``spill_mb`` 64,
   in one process (``phase: all``) and as 2 parallel workers (choose, then 2 map processes at
   once, 2 reduce processes at once, then finish: what a KFP ParallelFor runs): wall time of
   the whole and the largest peak RSS of any of its processes.

The bar (issue 21): memory that does not grow with N. Peak RSS is the process's VmHWM.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np


def png() -> bytes:
    from PIL import Image
    buf = io.BytesIO()
    Image.fromarray(np.arange(784, dtype=np.uint8).reshape(28, 28)).save(buf, format="PNG")
    return buf.getvalue()


def make_pool(root: str, n: int, labelled: bool) -> str:
    from semisup_core.data.dataset import make_meta, write_meta
    from semisup_core.data.shards import ShardWriter
    if os.path.exists(os.path.join(root, "dataset.json")):
        return root
    data = png()
    with ShardWriter(root, 4096) as w:
        for i in range(n):
            w.write(f"img-{i:09d}", data, "png", i % 10 if labelled else None, {})
    write_meta(root, make_meta(root, os.path.basename(root), [f"c{i}" for i in range(10)],
                               w.shards, w.class_counts if labelled else None, source="generated",
                               channels=1, hw=(28, 28)))
    return root


SPILL_MB = 64


def child(mode: str, pool: str, out: str, rows: int) -> None:
    import pyarrow as pa
    t0 = time.perf_counter()
    if mode.startswith("hash:"):  # hash:<phase>:<worker>:<workers>
        from semisup_core.data.split_hash import split_hashed
        _, phase, worker, workers = mode.split(":")
        split_hashed(pool, out, 10, 0, phase=phase, worker=int(worker), num_workers=int(workers),
                     spill_mb=SPILL_MB)
    elif mode == "manifest":
        from semisup_core.data.dataset import read_meta
        from semisup_core.data.manifest import manifest_dataset
        meta = read_meta(pool)
        rng = np.random.default_rng(0)
        ids = np.sort(rng.choice(meta.num_samples, rows, replace=False))
        manifest = pa.table({"class_id": pa.array(ids % 10, pa.int32()),
                             "key": [f"img-{i:09d}" for i in ids],
                             "shard": [f"shard-{i // 4096:06d}" for i in ids]})
        manifest_dataset(manifest, pool, out)
    else:
        from semisup_core.data.split import split_labelled
        split_labelled(pool, out, 10, 0)
    with open("/proc/self/status") as f:  # this interpreter's own peak (not ru_maxrss, which
        hwm = next(int(ln.split()[1]) for ln in f if ln.startswith("VmHWM:"))  # fork carries)
    print(json.dumps({"seconds": time.perf_counter() - t0, "peak_mb": hwm / 1024}))


def _children(modes: list[str], pool: str, out: str, rows: int) -> list[dict]:
    """Run one child process per mode, all at once; their results."""
    procs = [subprocess.Popen([sys.executable, __file__, "--child", m, pool, out, str(rows)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for m in modes]
    results = []
    for m, p in zip(modes, procs):
        stdout, stderr = p.communicate()
        if p.returncode:
            raise SystemExit(f"{m} failed:\n{stderr[-2000:]}")
        results.append(json.loads(stdout.strip().splitlines()[-1]))
    return results


def measure(mode: str, pool: str, out: str, rows: int) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    if mode.startswith("hash-workers:"):  # the phases as separate tasks, map and reduce parallel
        w = int(mode.split(":")[1])
        peaks = _children(["hash:choose:0:1"], pool, out, rows)
        peaks += _children([f"hash:map:{i}:{w}" for i in range(w)], pool, out, rows)
        peaks += _children([f"hash:reduce:{i}:{w}" for i in range(w)], pool, out, rows)
        peaks += _children([f"hash:finish:0:{w}"], pool, out, rows)
        res = {"seconds": time.perf_counter() - t0, "peak_mb": max(p["peak_mb"] for p in peaks)}
    else:
        res = _children([mode], pool, out, rows)[0]
    shutil.rmtree(out, ignore_errors=True)
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="200000,1000000")
    ap.add_argument("--rows", type=int, default=20000)
    ap.add_argument("--modes", default="manifest,split,hash:all:0:1,hash-workers:2",
                    help="comma-separated: manifest, split, hash:all:0:1, hash-workers:W")
    ap.add_argument("--dir", default=os.path.join(tempfile.gettempdir(), "semisup-materialise"))
    ap.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args.child[0], args.child[1], args.child[2], int(args.child[3]))
    print("# Materialisation and split memory against the pool's size\n")
    print(f"Machine: {platform.machine()}, {os.cpu_count()} cores, {platform.system()} "
          f"{platform.release()}; {time.strftime('%Y-%m-%d %H:%M', time.gmtime())} UTC. Command: "
          f"`python benchmarks/materialise.py {' '.join(sys.argv[1:])}`. Manifest: {args.rows:,} "
          "rows at random over the pool.\n")
    modes = {"manifest": "manifest materialisation", "split": "split, permutation order",
             "hash:all:0:1": "split, hash order, 1 process",
             "hash-workers:2": "split, hash order, 2 workers"}
    chosen = args.modes.split(",")
    print("| pool images | " + " | ".join(f"{modes[m]}: s | peak RSS (MiB)" for m in chosen) + " |")
    print("|---:|" + "---:|---:|" * len(chosen))
    for n in (int(float(x)) for x in args.sizes.split(",")):
        pool = make_pool(os.path.join(args.dir, f"pool-{n}"), n, labelled=True)
        cells = []
        for m in chosen:
            r = measure(m, pool, os.path.join(args.dir, "out"), args.rows)
            cells.append(f"{r['seconds']:.1f} | {r['peak_mb']:,.0f}")
        print(f"| {n:,} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
