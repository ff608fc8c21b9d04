"""Memory of the manifest materialisation and of the split against the pool's size (issue 21).

    .venv/bin/python benchmarks/materialise.py > benchmarks/results/materialise.md   # ~10 min here

For each pool size N (default 2e5 and 1e6 images: 28x28 grey PNGs, one encoded image
repeated, 4,096 per shard, so that writing the pool costs little), in fresh processes:

1. ``manifest_dataset`` of a manifest of a fixed M rows (default 20,000: K*C of the demo's
   10 classes x 2,000) drawn at random over the whole pool (so every shard holds some):
   wall time and peak RSS;
2. ``split_labelled`` of the same images as a labelled dataset (10 classes, 10 labels per
   class): wall time and peak RSS.

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


def child(mode: str, pool: str, out: str, rows: int) -> None:
    import pyarrow as pa
    t0 = time.perf_counter()
    if mode == "manifest":
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


def measure(mode: str, pool: str, out: str, rows: int) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    res = subprocess.run([sys.executable, __file__, "--child", mode, pool, out, str(rows)],
                         capture_output=True, text=True)
    if res.returncode:
        raise SystemExit(f"{mode} failed:\n{res.stderr[-2000:]}")
    shutil.rmtree(out, ignore_errors=True)
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="200000,1000000")
    ap.add_argument("--rows", type=int, default=20000)
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
    print("| pool images | manifest materialisation: s | peak RSS (MiB) | split: s | peak RSS (MiB) |")
    print("|---:|---:|---:|---:|---:|")
    for n in (int(float(x)) for x in args.sizes.split(",")):
        pool = make_pool(os.path.join(args.dir, f"pool-{n}"), n, labelled=True)
        m = measure("manifest", pool, os.path.join(args.dir, "out"), args.rows)
        s = measure("split", pool, os.path.join(args.dir, "out"), args.rows)
        print(f"| {n:,} | {m['seconds']:.1f} | {m['peak_mb']:,.0f} | {s['seconds']:.1f} | "
              f"{s['peak_mb']:,.0f} |", flush=True)


if __name__ == "__main__":
    main()
