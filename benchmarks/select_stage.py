"""The select stage end to end on the score stage's own files, against what a user would
otherwise write (issue 21).

    .venv/bin/pip install -r benchmarks/requirements.txt    # duckdb, polars (benchmarks only)
    .venv/bin/python benchmarks/select_stage.py > benchmarks/results/select_stage.md
    .venv/bin/python benchmarks/select_stage.py --images 1e6 --shards 100 --k 1600   # quick

1. Synthetic score output in the score stage's own layout, written by its own code
   (``score_shard``, ``write_partial``): N images x P classes over S shards (image ids
   dense, keys ``i<id>``), W score workers with their done markers, configs and partial
   top-K tables; teacher-like scores (``selection.blocks``: P distinct classes per image,
   softmax-like descending scores). Kept under ``--dir`` and reused by later runs.
2. ``semisup stage select`` (the code the KFP component runs) for every strategy, each in a
   fresh process: wall and CPU seconds, peak RSS, score rows read per second. ``balanced``
   runs twice: as the stage runs by default (the score workers' partial tables) and from the
   shard tables alone (partials hidden), which is what the baselines read.
3. Baselines for ``balanced`` on the same shard tables, each in a fresh process with all the
   cores, writing the same manifest columns (class_id, rank, score, shard, key, id): pandas
   on pyarrow (``read_table`` -> ``sort_values`` -> ``groupby().cumcount()``), DuckDB
   (``row_number() over (partition by class_id order by score desc, id)``), polars
   (``group_by().agg(top_k_by)``). Each result is checked against the stage's manifest
   (the same (class, rank, id) rows). A process over ``--rss-limit-gb`` is stopped and
   reported as such.
4. ``--profile``: each strategy's select under cProfile in this process (the functions
   with the most own time), showing where the time goes (no per-row Python).

Every measurement starts with the score files in the page cache (read just before it) and
with the ``--pause`` process groups stopped (SIGSTOP/SIGCONT around each run: on a shared
machine, say a training job, whose stall watchdog allows 300 s). Peak memory is reported above the same process's RSS after imports (the select stage:
``semisup stage select`` on a 1-shard score output), beside the issue's bound: 2 x C*K
manifest entries (bytes of one manifest row in Arrow, measured) plus one shard's table.
"""

from __future__ import annotations

import argparse
import cProfile
import glob
import io
import json
import os
import platform
import pstats
import shutil
import signal
import subprocess
import sys
import threading
import time

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
from selection import blocks  # noqa: E402

SEMISUP = os.path.join(os.path.dirname(sys.executable), "semisup")
STRATEGIES = ("balanced", "unbalanced", "random", "threshold")


def generate(root: str, n: int, shards: int, workers: int, classes: int, p: int,
             partial_k: int) -> str:
    """The score stage's output for a synthetic pool (skipped when ``root/DONE`` exists)."""
    from semisup_core import config
    from semisup_core.teacher_student.score import (ScoreConfig, score_shard, worker_partial,
                                                    write_partial)
    scores = os.path.join(root, "scores")
    if os.path.exists(os.path.join(root, "DONE")):
        return scores
    shutil.rmtree(root, ignore_errors=True)
    per = -(-n // shards)
    t0 = time.perf_counter()
    for w in range(workers):
        cfg = ScoreConfig(model="synthetic", pool="synthetic", out=scores, top_p=p,
                          partial_k=partial_k, worker=w, num_workers=workers)
        config.save(cfg, scores, f"config-worker-{w:05d}.yaml")
        tables = []
        for s in range(w, shards, workers):
            first, count = s * per, min(per, n - s * per)
            cls, sc, _ = next(blocks(count, classes, p, seed=s))
            ids = np.arange(first, first + count)
            keys = np.char.mod("i%010d", ids).astype(object)
            _, t = score_shard(f"pool/shard-{s:06d}.tar", list(keys),
                               (sc.reshape(count, p), cls.reshape(count, p)), [], cfg, classes,
                               first, count, np.arange(count))
            tables.append(t.select(["class_id", "score", "id"]))
        write_partial(cfg, w, workers, worker_partial(cfg, tables, classes))
        print(f"<!-- generated worker {w + 1}/{workers}, {time.perf_counter() - t0:.0f} s -->",
              file=sys.stderr, flush=True)
    open(os.path.join(root, "DONE"), "w").write(json.dumps(
        {"images": n, "shards": shards, "workers": workers, "classes": classes, "p": p}))
    return scores


def _status_kb(pid: int, field: str) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            return next(int(ln.split()[1]) for ln in f if ln.startswith(field + ":"))
    except (OSError, StopIteration):
        return 0


PAUSE: list[int] = []  # process groups stopped while a measurement runs (--pause)
WARM: list[str] = []  # files read into the page cache before each measurement


def _warm() -> None:
    for f in WARM:
        if not os.path.exists(f):  # the partials, hidden for a shards-only run
            continue
        with open(f, "rb") as fh:
            while fh.read(1 << 24):
                pass


def run(cmd: list[str], limit_gb: float, env: dict | None = None) -> dict:
    """``measure`` with the --pause process groups stopped (each run is well under the
    training loop's 300 s stall watchdog) and the score files in the page cache."""
    _warm()
    for g in PAUSE:
        os.killpg(g, signal.SIGSTOP)
    try:
        return measure(cmd, limit_gb, env)
    finally:
        for g in PAUSE:
            os.killpg(g, signal.SIGCONT)


def measure(cmd: list[str], limit_gb: float, env: dict | None = None) -> dict:
    """Run ``cmd``; wall and CPU seconds (``wait4``) and peak RSS, stopped when its RSS passes
    ``limit_gb``. The peak is the process's VmHWM sampled every 20 ms until it exits (not
    ``wait4``'s ru_maxrss: Linux carries the parent's peak into a forked child across exec)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env)
    killed, peak = [], [0]

    def watch():
        while True:
            hwm = _status_kb(proc.pid, "VmHWM")
            if not hwm:
                return  # exited (a zombie has no memory lines)
            peak[0] = max(peak[0], hwm)
            if _status_kb(proc.pid, "VmRSS") > limit_gb * 2**20:
                killed.append(True)
                proc.kill()
            time.sleep(0.02)
    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    threading.Thread(target=watch, daemon=True).start()
    out, err = proc.stdout.read(), proc.stderr.read()
    watcher.join()  # the process has exited (its pipes closed): the watcher sees it gone
    _, status, ru = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    res = {"wall": time.perf_counter() - t0, "cpu": ru.ru_utime + ru.ru_stime,
           "peak_mb": peak[0] / 1024, "rc": proc.returncode, "stdout": out,
           "killed": bool(killed)}
    if proc.returncode and not killed:
        res["error"] = (err.strip().splitlines() or ["?"])[-1]
    return res


def select_cmd(scores: str, out: str, strategy: str, k: int, extra: dict) -> list[str]:
    cmd = [SEMISUP, "stage", "select", "--set", f"scores={scores}", "--set", f"out={out}",
           "--set", f"strategy={strategy}", "--set", f"k={k}"]
    for key, v in extra.items():
        cmd += ["--set", f"{key}={v}"]
    return cmd


# -- baselines (each runs in its own process: ``--baseline NAME``) ---------------------------
COLUMNS = ["class_id", "score", "id", "key", "shard"]


def baseline(name: str, scores: str, k: int, out: str) -> None:
    files = sorted(glob.glob(os.path.join(scores, "shards", "*.parquet")))
    threads = os.cpu_count()
    if name == "pandas":
        import pyarrow.parquet as pq
        df = pq.ParquetDataset(files).read(columns=COLUMNS).to_pandas()
        df = df.sort_values(["class_id", "score", "id"], ascending=[True, False, True],
                            kind="stable")
        df["rank"] = df.groupby("class_id").cumcount().astype("int32")
        df = df[df["rank"] < k]
        df[["class_id", "rank", "score", "shard", "key", "id"]].to_parquet(out, index=False)
    elif name == "duckdb":
        import duckdb
        con = duckdb.connect()
        con.execute(f"SET threads = {threads}")
        glob_ = os.path.join(scores, "shards", "*.parquet")
        con.execute(f"""COPY (SELECT class_id, rank, score, shard, key, id FROM (
              SELECT class_id, score, shard, key, id,
                     CAST(row_number() OVER (PARTITION BY class_id ORDER BY score DESC, id)
                          - 1 AS INTEGER) AS rank
              FROM read_parquet('{glob_}')) WHERE rank < {k} ORDER BY class_id, rank)
            TO '{out}' (FORMAT parquet)""")
    elif name == "polars":
        os.environ.setdefault("POLARS_MAX_THREADS", str(threads))
        import polars as pl
        lf = pl.scan_parquet(files).select(COLUMNS)
        top = (lf.group_by("class_id")
                 .agg(pl.col("score", "shard", "key", "id")
                      .top_k_by(["score", "id"], k=k, reverse=[False, True]))
                 .explode(["score", "shard", "key", "id"])
                 .sort(["class_id", "score", "id"], descending=[False, True, False])
                 .with_columns(pl.col("class_id").cum_count().over("class_id")
                               .cast(pl.Int32).alias("rank") - 1)
                 .select(["class_id", "rank", "score", "shard", "key", "id"]))
        top.collect().write_parquet(out)
    else:
        raise SystemExit(f"unknown baseline {name}")


def same_rows(a: str, b: str) -> bool:
    """The two manifests hold the same (class_id, rank, id) rows."""
    import pyarrow.parquet as pq
    ta = pq.read_table(a, columns=["class_id", "rank", "id"]).sort_by([("class_id", "ascending"),
                                                                      ("rank", "ascending")])
    tb = pq.read_table(b, columns=["class_id", "rank", "id"]).sort_by([("class_id", "ascending"),
                                                                      ("rank", "ascending")])
    return all(np.array_equal(ta[c].to_numpy(), tb[c].to_numpy()) for c in ("class_id", "rank", "id"))


def profile(scores: str, out: str, strategy: str, k: int, extra: dict, top: int = 8) -> str:
    from semisup_core.teacher_student.select import SelectConfig, select
    prof = cProfile.Profile()
    prof.enable()
    select(SelectConfig(scores=scores, out=out, strategy=strategy, k=k, **extra))
    prof.disable()
    buf = io.StringIO()
    pstats.Stats(prof, stream=buf).sort_stats("tottime").print_stats(top)
    lines = [ln for ln in buf.getvalue().splitlines() if ln.strip()]
    start = next(i for i, ln in enumerate(lines) if ln.lstrip().startswith("ncalls"))
    total = next(ln for ln in lines if "function calls" in ln).strip()
    return "\n".join([total] + lines[start:start + top + 1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=float, default=1e7)
    ap.add_argument("--shards", type=int, default=1000)
    ap.add_argument("--workers", type=int, default=100, help="score workers (partial tables)")
    ap.add_argument("--classes", type=int, default=1000)
    ap.add_argument("--p", type=int, default=10)
    ap.add_argument("--k", type=int, default=16000)
    ap.add_argument("--dir", default="/tmp/semisup-select-bench")
    ap.add_argument("--baselines", default="pandas,duckdb,polars")
    ap.add_argument("--strategies", default=",".join(STRATEGIES))
    ap.add_argument("--rss-limit-gb", type=float, default=16)
    ap.add_argument("--profile", action="store_true", help="also profile each strategy")
    ap.add_argument("--pause", type=int, action="append", default=[], metavar="PGID",
                    help="stop this process group (e.g. a training run sharing the machine) "
                         "during each measurement, continue it between them")
    ap.add_argument("--baseline", nargs=3, metavar=("NAME", "SCORES", "OUT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.baseline:
        return baseline(args.baseline[0], args.baseline[1], args.k, args.baseline[2])
    n, k, c = int(args.images), args.k, args.classes
    root = os.path.join(args.dir, f"n{n}-s{args.shards}-w{args.workers}-c{c}-p{args.p}")
    t0 = time.perf_counter()
    scores = generate(root, n, args.shards, args.workers, c, args.p, k)
    gen = time.perf_counter() - t0
    shard_files = glob.glob(os.path.join(scores, "shards", "*.parquet"))
    WARM[:] = shard_files + glob.glob(os.path.join(scores, "partials", "*.parquet"))
    PAUSE[:] = args.pause
    data_mb = sum(os.path.getsize(f) for f in shard_files) / 2**20
    rows = n * args.p
    print(f"# The select stage at {n:,} images x {c:,} classes (P={args.p}, K={k:,})\n")
    print(f"Machine: {platform.machine()}, {os.cpu_count()} cores, {platform.system()} "
          f"{platform.release()}; {time.strftime('%Y-%m-%d %H:%M', time.gmtime())} UTC. Command: "
          f"`python benchmarks/select_stage.py {' '.join(sys.argv[1:])}`.\n")
    print(f"Score output: {args.shards:,} shard tables ({data_mb:,.0f} MiB, {rows:,} score rows), "
          f"{args.workers} score workers' partial tables; generated in {gen:.0f} s "
          f"(0 = reused).\n")

    # the import baseline: select on a one-shard output
    tiny = os.path.join(args.dir, "tiny")
    scores_tiny = generate(tiny, 1000, 1, 1, c, args.p, 2)
    base = run(select_cmd(scores_tiny, os.path.join(tiny, "sel"), "balanced", 2, {}), 4)
    base = run(select_cmd(scores_tiny, os.path.join(tiny, "sel"), "balanced", 2, {}), 4)
    print(f"Import baseline (select on a 1,000-image output, numba's cache warm): "
          f"{base['wall']:.1f} s wall, {base['peak_mb']:.0f} MiB peak RSS.\n")

    import pyarrow.parquet as pq
    threshold = float(np.quantile(pq.read_table(sorted(shard_files)[0], columns=["score"])
                                  ["score"].to_numpy(), 1 - min(1.0, c * k / rows)))
    results, manifests = [], {}
    hidden = os.path.join(scores, "partials"), os.path.join(root, "partials-hidden")
    for strategy in args.strategies.split(","):
        modes = ["partials", "shards"] if strategy == "balanced" else ["shards"]
        for mode in modes:
            extra = {"threshold": f"{threshold:.6f}"} if strategy == "threshold" else {}
            if strategy == "random":
                extra["seed"] = 1
            out = os.path.join(root, f"select-{strategy}-{mode}")
            shutil.rmtree(out, ignore_errors=True)
            if mode == "shards" and os.path.exists(hidden[0]):
                os.rename(*hidden)
            try:
                r = run(select_cmd(scores, out, strategy, k, extra), args.rss_limit_gb)
            finally:
                if os.path.exists(hidden[1]):
                    os.rename(hidden[1], hidden[0])
            if r["rc"]:
                raise SystemExit(f"select {strategy} failed: {r.get('error')}")
            manifests[(strategy, mode)] = os.path.join(out, "manifest.parquet")
            summ = json.load(open(os.path.join(out, "summary.json")))
            results.append((f"`semisup stage select` {strategy}" +
                            (" (partials)" if mode == "partials" else ""), r, summ["selected"]))
            print(f"<!-- {strategy} {mode}: {r['wall']:.1f} s -->", file=sys.stderr, flush=True)

    mani = pq.read_table(manifests.get(("balanced", "shards")) or next(iter(manifests.values())))
    entry = mani.nbytes / max(1, mani.num_rows)
    shard_table = pq.read_table(sorted(shard_files)[0]).nbytes
    bound_mb = (2 * c * k * entry + shard_table) / 2**20
    checks = {}
    for name in [b for b in args.baselines.split(",") if b]:
        out = os.path.join(root, f"baseline-{name}.parquet")
        r = run([sys.executable, __file__, "--k", str(k), "--baseline", name, scores, out],
                args.rss_limit_gb)
        if r["rc"] == 0 and ("balanced", "shards") in manifests:
            checks[name] = same_rows(out, manifests[("balanced", "shards")])
        results.append((name, r, None))
        print(f"<!-- {name}: {r['wall']:.1f} s -->", file=sys.stderr, flush=True)

    ref = next((r for label, r, _ in results if label == "`semisup stage select` balanced"), None)
    print("| what | wall (s) | CPU (s) | peak RSS (MiB) | above imports (MiB) | score rows/s "
          "(wall) | selected | balanced wall / this wall | same rows as the stage |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---|")
    for label, r, sel in results:
        if r["rc"]:
            what = "stopped over the RSS limit" if r["killed"] else f"failed: {r.get('error')}"
            print(f"| {label} | {r['wall']:.1f} | {r['cpu']:.1f} | {r['peak_mb']:,.0f} | | | "
                  f"| | {what} |")
            continue
        ratio = f"{ref['wall'] / r['wall']:.3f}" if ref else ""
        same = {True: "yes", False: "NO"}.get(checks.get(label), "")
        print(f"| {label} | {r['wall']:.1f} | {r['cpu']:.1f} | {r['peak_mb']:,.0f} | "
              f"{r['peak_mb'] - base['peak_mb']:,.0f} | {rows / r['wall'] / 1e6:.1f}M | "
              f"{sel if sel is not None else ''} | {ratio} | {same} |")
    print(f"\nMemory bound of the issue: 2 x C*K manifest entries ({entry:.1f} B each in Arrow) + "
          f"one shard's table ({shard_table / 2**20:.1f} MiB) = {bound_mb:,.0f} MiB above the "
          f"imports. Threshold strategy: threshold {threshold:.4f} (about C*K rows kept).")
    if args.profile:
        print("\n## Profiles (cProfile, own time; the compiled loops and pyarrow count as the "
              "Python call that enters them)\n")
        for strategy in args.strategies.split(","):
            extra = {"threshold": threshold} if strategy == "threshold" else {}
            out = os.path.join(root, f"profile-{strategy}")
            shutil.rmtree(out, ignore_errors=True)
            _warm()
            for g in PAUSE:
                os.killpg(g, signal.SIGSTOP)
            try:
                text = profile(scores, out, strategy, k, extra)
            finally:
                for g in PAUSE:
                    os.killpg(g, signal.SIGCONT)
            print(f"### {strategy}\n\n```\n{text}\n```\n", flush=True)


if __name__ == "__main__":
    main()
