"""Streaming per-class top-K selection at the paper's scale (issue 6).

    .venv/bin/python benchmarks/selection.py                 # the full run (~8 min on 2 cores: the baselines take most)
    .venv/bin/python benchmarks/selection.py --images 1e6 --linear 1e5,3e5,1e6 --repeat 1  # quick

Synthetic teacher output: every image has P distinct classes with softmax-like descending
scores; keys are image ids. One core: the selector's compiled loops and numpy are
single-threaded. Times are the process's CPU seconds (what "per core" means; the wall time,
which a busy machine inflates, is recorded beside them), excluding the generation of the
blocks; the compiled loops are loaded before timing (numba caches them on disk).

1. N images x C classes, P per image, K per class: the streaming ``TopKPerClass`` (blocks of
   100k images, as the select stage reads Parquet row groups) against pandas
   ``groupby().nlargest(K)`` and a numpy full sort (``lexsort`` by class, -score, key) on the
   same candidates, all in memory for the baselines; candidates/s per core, the ratio, and a
   check that the streaming manifest equals the full sort's.
2. Linearity: the streaming path alone for each N of ``--linear`` (time and peak memory), with
   the least-squares R^2 of time against N.

Memory: every measurement runs in a fresh process; peak RSS minus the peak of the same
process generating the same blocks without selecting (so only the selector's memory counts),
compared with C*K entries of 16 bytes (class int32, score float32, key int64).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402

BLOCK = 100_000  # images per block
ENTRY = 16  # bytes of one (class, score, key) candidate


def blocks(n_images: int, num_classes: int, p: int, seed: int = 0):
    """Yield (classes, scores, keys) blocks of synthetic top-P teacher output."""
    rng = np.random.default_rng(seed)
    stride = 7919 if num_classes % 7919 else 7907  # a prime: P distinct classes per image
    offsets = (np.arange(p) * stride) % num_classes
    for first in range(0, n_images, BLOCK):
        n = min(BLOCK, n_images - first)
        c0 = rng.integers(0, num_classes, n)
        classes = ((c0[:, None] + offsets) % num_classes).astype(np.int32).ravel()
        raw = -np.sort(-rng.random((n, p), dtype=np.float32), axis=1)
        scores = (raw / raw.sum(axis=1, keepdims=True)).astype(np.float32).ravel()
        keys = np.repeat(np.arange(first, first + n, dtype=np.int64), p)
        yield classes, scores, keys


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def child(mode: str, n_images: int, num_classes: int, p: int, k: int) -> dict:
    """One measurement in this (fresh) process; prints a JSON line."""
    from semisup_core.teacher_student.topk import TopKPerClass
    warm = TopKPerClass(2, num_classes)  # load the compiled loops before the baseline RSS
    for cls, sc, key in blocks(1000, num_classes, p):
        warm.add(cls, sc, key)
    warm.result()
    rss0 = _rss_mb()
    out = {"mode": mode, "images": n_images, "candidates": n_images * p}
    if mode in ("stream", "generate"):
        top = TopKPerClass(k, num_classes) if mode == "stream" else None
        spent, wall = 0.0, 0.0
        for cls, sc, key in blocks(n_images, num_classes, p):
            t0, w0 = time.process_time(), time.perf_counter()
            if top is not None:
                top.add(cls, sc, key)
            spent, wall = spent + time.process_time() - t0, wall + time.perf_counter() - w0
        t0, w0 = time.process_time(), time.perf_counter()
        res = top.result() if top is not None else None
        out["seconds"] = spent + time.process_time() - t0
        out["wall"] = wall + time.perf_counter() - w0
        if res is not None and os.environ.get("SELECTION_DUMP"):
            np.savez(os.environ["SELECTION_DUMP"], key=res["key"], cls=res["class_id"])
    else:  # the in-memory baselines
        parts = list(blocks(n_images, num_classes, p))
        cls, sc, key = (np.concatenate([b[i] for b in parts]) for i in range(3))
        del parts
        rss0 = _rss_mb()
        t0, w0 = time.process_time(), time.perf_counter()
        if mode == "pandas":
            import pandas as pd
            df = pd.DataFrame({"class_id": cls, "score": sc, "key": key})
            top = df.groupby("class_id")["score"].nlargest(k)
            out["selected"] = int(len(top))
        else:  # numpy full sort
            order = np.lexsort((key, -sc, cls))
            c = cls[order]
            starts = np.searchsorted(c, np.arange(num_classes))
            keep = order[(np.arange(len(order)) - starts[c]) < k]
            out["selected"] = int(len(keep))
            if os.environ.get("SELECTION_DUMP"):
                np.savez(os.environ["SELECTION_DUMP"], key=key[keep], cls=cls[keep])
        out["seconds"] = time.process_time() - t0
        out["wall"] = time.perf_counter() - w0
    out["peak_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - rss0
    print(json.dumps(out), flush=True)
    return out


def measure(mode: str, n_images: int, c: int, p: int, k: int, dump: str | None = None) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    if dump:
        env["SELECTION_DUMP"] = dump
    cmd = [sys.executable, __file__, "--child", mode, str(n_images), str(c), str(p), str(k)]
    res = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if res.returncode:
        raise SystemExit(f"{mode} at {n_images} images failed:\n{res.stderr[-2000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def median_of(mode: str, repeat: int, *args) -> dict:
    runs = [measure(mode, *args) for _ in range(repeat)]
    best = sorted(runs, key=lambda r: r["seconds"])[len(runs) // 2]
    return {**best, "all_seconds": [round(r["seconds"], 2) for r in runs],
            "all_wall": [round(r["wall"], 2) for r in runs]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=float, default=1e7)
    ap.add_argument("--classes", type=int, default=1000)
    ap.add_argument("--p", type=int, default=10)
    ap.add_argument("--k", type=int, default=16000)
    ap.add_argument("--linear", default="1e6,3e6,1e7,3e7,1e8", help="image counts, comma-separated")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--no-baselines", action="store_true")
    ap.add_argument("--child", nargs=5)
    args = ap.parse_args()
    if args.child:
        mode, *nums = args.child
        child(mode, *map(int, nums))
        return
    n, c, p, k = int(args.images), args.classes, args.p, args.k
    print(f"# Selection benchmark\n\nMachine: {platform.machine()}, {os.cpu_count()} cores "
          f"({platform.processor() or 'cpu'}), {platform.system()} {platform.release()}; numpy "
          f"{np.__version__}. Command: `{' '.join(['python', *sys.argv])}`. One core per "
          f"measurement; median of {args.repeat} for the streaming path, one run per baseline.\n")
    ck_mb = c * k * ENTRY / 2**20
    print(f"## {n:,} images x {c:,} classes, P={p}, K={k:,} ({n * p:,} candidates; C*K entries = "
          f"{ck_mb:.0f} MB)\n")
    gen = measure("generate", n, c, p, k)
    stream = median_of("stream", args.repeat, n, c, p, k)
    rows = [("streaming TopKPerClass", stream)]
    if not args.no_baselines:
        rows.append(("numpy full sort (lexsort)", measure("numpy", n, c, p, k, "/tmp/sel_numpy.npz")))
        rows.append(("pandas groupby().nlargest()", measure("pandas", n, c, p, k)))
        measure("stream", n, c, p, k, "/tmp/sel_stream.npz")
        a, b = np.load("/tmp/sel_stream.npz"), np.load("/tmp/sel_numpy.npz")
        same = np.array_equal(a["key"], b["key"]) and np.array_equal(a["cls"], b["cls"])
    print("| method | CPU seconds | wall seconds | candidates/s per core | vs streaming | "
          "peak memory (MB) |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, r in rows:
        mem = r["peak_mb"] - (gen["peak_mb"] if name.startswith("streaming") else 0)
        print(f"| {name} | {r['seconds']:.2f} {r.get('all_seconds', '')} | "
              f"{r['wall']:.2f} {r.get('all_wall', '')} | "
              f"{r['candidates'] / r['seconds'] / 1e6:.1f}M | "
              f"{r['seconds'] / stream['seconds']:.1f}x slower | {mem:.0f} |"
              .replace("1.0x slower", "1"))
    smem = stream["peak_mb"] - gen["peak_mb"]
    print(f"\nStreaming: {stream['candidates'] / stream['seconds'] / 1e6:.1f}M candidates/s per core; "
          f"peak memory {smem:.0f} MB = {smem / ck_mb:.2f} x C*K entries (baseline memory is the "
          f"peak beyond the {n * p * ENTRY / 2**20:.0f} MB of candidates it holds).")
    if not args.no_baselines:
        print(f"Manifest equal to the numpy full sort's (class, key order): **{same}**.")
    points = [int(float(x)) for x in args.linear.split(",") if x]
    if points:
        print(f"\n## Linearity: streaming path alone, C={c:,}, P={p}, K={k:,}\n")
        print("| images | candidates | CPU seconds | wall seconds | candidates/s per core | "
              "peak memory (MB) | x C*K |")
        print("|---:|---:|---:|---:|---:|---:|---:|")
        xs, ys = [], []
        for m in points:
            g = measure("generate", m, c, p, k)
            r = median_of("stream", args.repeat if m <= 3e7 else 1, m, c, p, k)
            mem = r["peak_mb"] - g["peak_mb"]
            xs.append(m)
            ys.append(r["seconds"])
            print(f"| {m:,} | {m * p:,} | {r['seconds']:.2f} | {r['wall']:.2f} | "
                  f"{m * p / r['seconds'] / 1e6:.1f}M | "
                  f"{mem:.0f} | {mem / ck_mb:.2f} |", flush=True)
        if len(xs) > 2:
            fit = np.polyfit(xs, ys, 1)
            pred = np.polyval(fit, xs)
            r2 = 1 - np.sum((np.array(ys) - pred) ** 2) / np.sum((np.array(ys) - np.mean(ys)) ** 2)
            print(f"\nLeast squares: seconds = {fit[0] * 1e6:.3f} per million images + {fit[1]:.2f}; "
                  f"R^2 = {r2:.4f}.")


if __name__ == "__main__":
    main()
