"""Mean and spread over seeds of a method's comparison table (any method's report).

Run the demo for several seeds, then aggregate:
    for s in 0 1 2; do .venv/bin/semisup demo --set out=runs/demo --set seed=$s; done
    .venv/bin/python benchmarks/demo_seeds.py runs/demo > benchmarks/results/demo_seeds.md
    for s in 0 1 2; do .venv/bin/semisup stage llp-run -c configs/llp_demo.yaml --set seed=$s; done
    .venv/bin/python benchmarks/demo_seeds.py runs/llp > benchmarks/results/llp_seeds.md
    for s in 0 1 2; do .venv/bin/semisup stage simclr-run -c configs/simclr_demo.yaml --set seed=$s; done
    .venv/bin/python benchmarks/demo_seeds.py runs/simclr > benchmarks/results/simclr_seeds.md
    for s in 0 1 2; do .venv/bin/semisup stage wsl-run -c configs/wsl_demo.yaml --set seed=$s; done
    .venv/bin/python benchmarks/demo_seeds.py runs/wsl \
        --versus "semi-weak teacher/student=teacher/student (supervised teacher)" \
        > benchmarks/results/wsl_seeds.md
``--versus "A=B"`` also prints row A minus row B, paired by seed (repeatable).
"""

from __future__ import annotations

import glob
import json
import os
import platform

import numpy as np


def main(root: str, versus: list[tuple[str, str]] = ()) -> None:
    runs = sorted(glob.glob(os.path.join(root, "seed-*", "report", "metrics.json")))
    if not runs:
        raise SystemExit(f"no seed-*/report/metrics.json under {root}")
    table: dict[str, dict] = {}
    for path in runs:
        doc = json.load(open(path))
        for row in doc.get("rows") or doc["entries"]:
            entry = table.setdefault(row["model"], {"arch": row["arch"], "top1": [], "sp": [], "ds": [],
                                                    "ind": [], "cov": []})
            entry["top1"].append(100 * row["top1"])
            sel = row.get("selection") or {}
            if sel.get("precision") is not None:
                entry["sp"].append(100 * sel["precision"])
                entry["ds"].append(100 * sel["distractor_share"])
            if sel.get("in_distribution_accuracy") is not None:  # LLP's pseudo-labels
                entry["ind"].append(100 * sel["in_distribution_accuracy"])
                entry["cov"].append(100 * sel["coverage"])
    seeds = [p.split(os.sep)[-3] for p in runs]
    print(f"Seeds: {', '.join(seeds)}. Machine: {platform.machine()}, {os.cpu_count()} cores, "
          f"{platform.system()} {platform.release()}.\n")
    print("| model | arch | top-1 mean ± std | per seed | selection / pseudo-label precision | distractors |")
    print("|---|---|---:|---|---:|---:|")
    fmt = lambda v: f"{np.mean(v):.2f} ± {np.std(v, ddof=1) if len(v) > 1 else 0:.2f}" if v else ""
    for name, e in table.items():
        per = ", ".join(f"{v:.2f}" for v in e["top1"])
        print(f"| {name} | {e['arch']} | {fmt(e['top1'])} | {per} | {fmt(e['sp'])} | {fmt(e['ds'])} |")
    base = table.get("supervised baseline", {}).get("top1")
    for name, e in table.items():
        if e["ind"]:
            print(f"\n{name}: pseudo-labels cover {fmt(e['cov'])}% of the pool; on its in-distribution "
                  f"(Fashion-MNIST) images they are right {fmt(e['ind'])}%")
    for name in [n for n in table if n != "supervised baseline"]:
        if base and name in table and len(table[name]["top1"]) == len(base):
            d = np.array(table[name]["top1"]) - np.array(base)
            print(f"\n{name} minus baseline, paired by seed: {d.mean():+.2f} ± {d.std(ddof=1) if len(d) > 1 else 0:.2f}"
                  f" points; baseline seed std {np.std(base, ddof=1) if len(base) > 1 else 0:.2f}")
    for a, b in versus:
        if a in table and b in table and len(table[a]["top1"]) == len(table[b]["top1"]):
            d = np.array(table[a]["top1"]) - np.array(table[b]["top1"])
            sd = np.std(table[b]["top1"], ddof=1) if len(d) > 1 else 0
            print(f"\n{a} minus {b}, paired by seed: {d.mean():+.2f} ± "
                  f"{d.std(ddof=1) if len(d) > 1 else 0:.2f} points; {b} seed std {sd:.2f}")


if __name__ == "__main__":
    import argparse
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("root", nargs="?", default="runs/demo")
    ap.add_argument("--versus", action="append", default=[], metavar="A=B",
                    help="also print row A minus row B, paired by seed")
    args = ap.parse_args()
    bad = [v for v in args.versus if "=" not in v]
    if bad:
        ap.error(f"--versus {bad[0]!r}: expected 'row A=row B'")
    main(args.root, [tuple(v.split("=", 1)) for v in args.versus])
