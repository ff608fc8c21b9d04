"""How much of "LLP, fine-tuned on the labels" is the fine-tuning alone (issue 18).

    .venv/bin/python benchmarks/llp_finetune_control.py runs/llp-l10 [runs/llp ...]

For every seed of an LLP run directory (``semisup stage llp-run``'s out), the supervised baseline
is fine-tuned with the very recipe LLP's network was fine-tuned with (the run's
``llp-config.yaml``: ``finetune``, same seed, same labels, same number of steps) into
``seed-N/models/baseline-finetuned`` and evaluated on the test set. That control is what the
fine-tuning's extra epochs on the labels give without LLP; LLP fine-tuned minus the control is
what LLP's training on the pool adds. Prints one Markdown table per run directory, paired by seed.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from semisup_core import config, storage  # noqa: E402
from semisup_core.llp.run import LLPRunConfig  # noqa: E402
from semisup_core.steps import evaluate_once, train_once  # noqa: E402

ROWS = ["supervised baseline", "baseline, fine-tuned again (control)", "LLP",
        "LLP, fine-tuned on the labels"]


def seed_rows(run: str) -> dict[str, float]:
    cfg = config.build(LLPRunConfig, _config(run))
    data = os.path.join(cfg.out, "data", f"split-n{cfg.labels_per_class}-s{cfg.seed}")
    ft = cfg.finetune.recipe().model_copy(update={"model": cfg.baseline.model,
                                                  "model_kwargs": cfg.baseline.model_kwargs})
    control = train_once(ft, [os.path.join(data, "labelled")],
                         os.path.join(run, "models", "baseline-finetuned"), cfg.seed,
                         init_from=os.path.join(run, "models", "baseline"))
    test = os.path.join(cfg.out, "data", "fmnist-test")
    top1 = {ROWS[1]: evaluate_once(control, test, os.path.join(run, "eval", "baseline-finetuned"),
                                   ROWS[1])["top1"]}
    for e in storage.read_json(os.path.join(run, "report", "metrics.json"))["entries"]:
        top1[e["model"]] = e["top1"]
    return top1


def _config(run: str) -> dict:
    import yaml
    with open(os.path.join(run, "llp-config.yaml")) as f:
        return yaml.safe_load(f)


def fmt(values: list[float], sign: str = "") -> str:
    pts = [100 * v for v in values]
    mean = f"{statistics.mean(pts):{sign}.2f}"
    return f"{mean} ± {statistics.stdev(pts):.2f}" if len(pts) > 1 else mean


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("runs", nargs="+", help="LLP run directories (each with seed-N/)")
    args = ap.parse_args()
    os.chdir(REPO)
    for root in args.runs:
        seeds = sorted(d for d in os.listdir(root) if d.startswith("seed-")
                       and os.path.exists(os.path.join(root, d, "report", "metrics.json")))
        per = {s: seed_rows(os.path.join(root, s)) for s in seeds}
        print(f"## `{root}` ({', '.join(seeds)})\n")
        print("| model | top-1 mean ± std | per seed | minus baseline (paired) | minus control (paired) |")
        print("|---|---:|---|---:|---:|")
        for row in ROWS:
            if not all(row in per[s] for s in seeds):
                continue
            vals = [per[s][row] for s in seeds]
            base = [v - per[s][ROWS[0]] for s, v in zip(seeds, vals)]
            ctrl = [v - per[s][ROWS[1]] for s, v in zip(seeds, vals)]
            print(f"| {row} | {fmt(vals)} | {', '.join(f'{100 * v:.2f}' for v in vals)} | "
                  f"{'' if row == ROWS[0] else fmt(base, '+')} | "
                  f"{'' if row in ROWS[:2] else fmt(ctrl, '+')} |")
        print()


if __name__ == "__main__":
    main()
