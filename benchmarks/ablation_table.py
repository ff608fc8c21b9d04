"""One row per ablation run directory: a model's test top-1 over the seeds there, the
baseline's, their paired difference, and the linear probe when the run recorded one.

    .venv/bin/python benchmarks/ablation_table.py --model "WSL pre-trained + fine-tuned" \\
        runs/wsl runs/wsl-noise0 runs/wsl-noise60 runs/wsl-top runs/wsl-top-natural

Reads ``<dir>/seed-N/report/metrics.json`` (and ``analysis/probe.json``) of every seed present.
"""

from __future__ import annotations

import argparse
import glob
import json
import os

import numpy as np


def _mean_std(xs: list[float]) -> str:
    if not xs:
        return ""
    sd = float(np.std(xs, ddof=1)) if len(xs) > 1 else 0.0
    return f"{np.mean(xs):.2f} ± {sd:.2f}" if len(xs) > 1 else f"{xs[0]:.2f}"


def row(run: str, model: str, baseline: str) -> str:
    seeds, top, base, probe = [], [], [], []
    for d in sorted(glob.glob(os.path.join(run, "seed-*"))):
        uri = os.path.join(d, "report", "metrics.json")
        if not os.path.exists(uri):
            continue
        got = {e["model"]: 100 * e["top1"] for e in json.load(open(uri))["entries"]}
        if model not in got or baseline not in got:
            continue
        seeds.append(os.path.basename(d)[5:])
        top.append(got[model])
        base.append(got[baseline])
        p = os.path.join(d, "analysis", "probe.json")
        if os.path.exists(p):  # WSL: {"linear_probe_top1"}; SimCLR: per epoch, the last
            got_p = json.load(open(p))
            got_p = got_p.get("probe", got_p) if isinstance(got_p, dict) else got_p
            got_p = got_p[-1] if isinstance(got_p, list) and got_p else got_p
            if isinstance(got_p, dict) and "linear_probe_top1" in got_p:
                probe.append(100 * got_p["linear_probe_top1"])
    diff = [t - b for t, b in zip(top, base)]
    per = ", ".join(f"{t:.2f}" for t in top)
    return (f"| `{run}` | {','.join(seeds)} | {_mean_std(top)} | {per} | {_mean_std(base)} | "
            f"{'+' if diff and np.mean(diff) >= 0 else ''}{_mean_std(diff)} | {_mean_std(probe)} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+")
    ap.add_argument("--model", required=True)
    ap.add_argument("--baseline", default="supervised baseline")
    args = ap.parse_args()
    print(f"| run | seeds | {args.model} top-1 | per seed | {args.baseline} | paired difference "
          "| linear probe |")
    print("|---|---|---:|---|---:|---:|---:|")
    for run in args.runs:
        print(row(run, args.model, args.baseline))


if __name__ == "__main__":
    main()
