"""kNN core vs raw faiss: build and search at 1e5 and 1e6 vectors, recall@10 against exact.

    .venv/bin/python benchmarks/knn.py > benchmarks/results/knn.md    # ~6 min here

Data: clustered unit vectors (1,000 directions + noise, 128-d), the shape of image
embeddings; 2,000 queries from the same law. For each size the core's ``build``/``search``
(the index ``IndexSpec.for_size`` picks) and the same faiss calls written by hand (what a
user would otherwise write: ``index_factory``, ``train`` on the same sample, ``add``,
``nprobe``, ``search``) run in the same process, alternating, median of --repeat. Recall@10
of the approximate index is measured against exact ``IndexFlatIP`` search.
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import faiss
import numpy as np

from semisup_core import knn

D, CENTRES = 128, 1000


def clustered(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    c = np.random.default_rng(12345).normal(size=(CENTRES, D)).astype(np.float32)
    c /= np.linalg.norm(c, axis=1, keepdims=True)
    x = c[rng.integers(0, CENTRES, n)] + 0.08 * rng.normal(size=(n, D)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def raw_build(x: np.ndarray, spec: knn.IndexSpec, seed: int = 0):
    index = faiss.index_factory(D, spec.factory(), faiss.METRIC_INNER_PRODUCT)
    if spec.kind != "flat":
        rng = np.random.default_rng(seed)
        index.train(x[np.sort(rng.choice(len(x), min(len(x), spec.train_size), replace=False))])
        faiss.extract_index_ivf(index).nprobe = spec.nprobe
    index.add(x)
    return index


def timed(fn, *a):
    t = time.perf_counter()
    out = fn(*a)
    return time.perf_counter() - t, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="100000,1000000")
    ap.add_argument("--queries", type=int, default=2000)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                if line.startswith("model name")), platform.processor())
    print(f"# kNN core vs raw faiss\n\nMachine: {cpu}, {os.cpu_count()} cores; faiss "
          f"{faiss.__version__} (CPU), {faiss.omp_get_max_threads()} OpenMP threads. "
          f"{D}-d clustered unit vectors, {args.queries} queries, k=10, median of {args.repeat}.\n")
    print("| vectors | index | build s (core / raw) | queries/s (core / raw) | core overhead "
          "build, search | recall@10 vs exact | bytes/vector |")
    print("|---:|---|---:|---:|---:|---:|---:|")
    q = clustered(args.queries, 1)
    for n in (int(s) for s in args.sizes.split(",")):
        x = clustered(n, 0)
        for spec in {knn.IndexSpec.for_size(n, D), knn.IndexSpec("flat")}:
            bc, br, sc, sr = [], [], [], []
            for r in range(args.repeat):
                # alternate which goes first: the first build after a free pays the page faults
                for which in ((0, 1) if r % 2 == 0 else (1, 0)):
                    if which == 0:
                        t, core = timed(knn.build, x, spec)
                        bc.append(t)
                    else:
                        t, raw = timed(raw_build, x, spec)
                        br.append(t)
                t, (_, ids) = timed(knn.search, core, q, 10)
                sc.append(t)
                t, _ = timed(raw.search, q, 10)
                sr.append(t)
            exact = faiss.IndexFlatIP(D)
            exact.add(x)
            _, want = exact.search(q, 10)
            recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(ids, want)])
            size = len(faiss.serialize_index(core)) / n
            b1, b2, s1, s2 = (float(np.median(v)) for v in (bc, br, sc, sr))
            print(f"| {n:,} | {spec.factory()} nprobe {spec.nprobe if spec.kind != 'flat' else '-'} | "
                  f"{b1:.2f} / {b2:.2f} | {len(q) / s1:,.0f} / {len(q) / s2:,.0f} | "
                  f"{b1 / b2:.2f}x, {s1 / s2:.2f}x | {recall:.3f} | {size:.0f} |", flush=True)


if __name__ == "__main__":
    main()
