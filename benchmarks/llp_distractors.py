"""Why LLP falls short on the demo's pool: can anything tell the distractors apart (issue 18)?

    .venv/bin/python benchmarks/llp_distractors.py runs/llp [--out benchmarks/results/llp_distractors.md]

For every seed of an LLP run directory (``semisup stage llp-run``'s out), over its deduplicated
pool (half of it MNIST digits, the oracle's true_class -1):
- LLP's own view, from the last round's pseudo-labels (``models/llp/pseudo_labels.parquet``):
  the mean confidence c on in-distribution images and on distractors;
- how well three scores of the starting network (the supervised baseline, LLP's warm start) rank
  in-distribution images above distractors, as AUROC (0.5: chance; below 0.5: the distractors
  score higher): the classifier's max softmax, and the cosine similarity of the pooled features
  to the nearest labelled image and to the mean of the 10 nearest (the kNN that LLP's
  propagation votes with, before LLP moves the embedding).
A confidence that could down-weight the distractors would need one of these well above 0.5.
The oracle is read for this analysis only; nothing here trains.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys

import numpy as np
import torch
import torch.nn.functional as F

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from semisup_core import config, storage  # noqa: E402
from semisup_core.analysis import _truth, as_manifest, read_table  # noqa: E402
from semisup_core.checkpoint import load_model  # noqa: E402
from semisup_core.data.dataset import read_meta  # noqa: E402
from semisup_core.inference import decode_shard  # noqa: E402
from semisup_core.llp.run import LLPRunConfig  # noqa: E402

COLUMNS = ["mean c, in-distribution", "mean c, distractors", "AUROC max softmax",
           "AUROC nearest labelled", "AUROC mean of 10 nearest labelled"]


def auroc(positive: np.ndarray, score: np.ndarray) -> float:
    """P(score of a positive > score of a negative), ties counted half (Mann-Whitney U)."""
    order = np.argsort(score, kind="stable")
    ranks = np.empty(len(score))
    s = score[order]
    # average ranks over ties
    starts = np.r_[0, np.flatnonzero(np.diff(s)) + 1]
    ends = np.r_[starts[1:], len(s)]
    for lo, hi in zip(starts, ends):
        ranks[order[lo:hi]] = (lo + hi + 1) / 2
    n1 = int(positive.sum())
    n0 = len(score) - n1
    return float((ranks[positive].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def _outputs(model, dataset: str, mean: float, std: float, batch: int = 2048
             ) -> tuple[list[str], torch.Tensor, torch.Tensor]:
    """Keys, max softmax and L2-normalised pooled features of every image of ``dataset``."""
    meta = read_meta(dataset)
    keys, top, feats = [], [], []
    with torch.no_grad():
        for shard in meta.shards:
            k, images, _, _ = decode_shard(storage.join(dataset, shard["uri"]), meta.channels,
                                           shard["count"])
            for i in range(0, len(k), batch):
                x = (images[i:i + batch].float() / 255 - mean) / std
                f = model.forward_features(x.contiguous(memory_format=torch.channels_last))
                top.append(model.fc(f).softmax(1).max(1).values)
                feats.append(F.normalize(f.float(), dim=1))
            keys += k
    return keys, torch.cat(top), torch.cat(feats)


def seed_row(run: str) -> list[float]:
    cfg = config.build(LLPRunConfig, config.read_yaml(os.path.join(run, "llp-config.yaml")))
    data = os.path.join(cfg.out, "data", f"split-n{cfg.labels_per_class}-s{cfg.seed}")
    oracle = os.path.join(data, "oracle.parquet")
    manifest = as_manifest(read_table(os.path.join(run, "models", "llp", "pseudo_labels.parquet")))
    real = _truth(manifest, oracle) >= 0
    conf = manifest["confidence"].to_numpy()
    model, state = load_model(os.path.join(run, "models", "baseline"))
    mean, std = (float(np.mean(state[k])) for k in ("mean", "std"))  # grey: one channel
    pool_keys, top, feats = _outputs(model, os.path.join(run, "dedup", "pool"), mean, std)
    _, _, labelled = _outputs(model, os.path.join(data, "labelled"), mean, std)
    sims = torch.cat([(feats[i:i + 8192] @ labelled.T).topk(10, dim=1).values
                      for i in range(0, len(feats), 8192)])
    where = {k: i for i, k in enumerate(pool_keys)}
    at = np.array([where[k] for k in manifest["key"].to_pylist()])
    return [float(conf[real].mean()), float(conf[~real].mean()),
            auroc(real, top.numpy()[at]), auroc(real, sims[:, 0].numpy()[at]),
            auroc(real, sims.mean(1).numpy()[at])]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("runs", nargs="+", help="LLP run directories (semisup stage llp-run's out)")
    ap.add_argument("--out", help="also write the Markdown here")
    args = ap.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    lines = []
    for run_dir in args.runs:
        seeds = sorted(d for d in os.listdir(run_dir) if d.startswith("seed-")
                       and os.path.exists(os.path.join(run_dir, d, "models", "llp",
                                                       "pseudo_labels.parquet")))
        rows = {s: seed_row(os.path.join(run_dir, s)) for s in seeds}
        lines += [f"## {run_dir} ({', '.join(seeds)})", "",
                  "| " + " | ".join(["seed"] + COLUMNS) + " |",
                  "|---|" + "---:|" * len(COLUMNS)]
        lines += ["| " + " | ".join([s] + [f"{v:.3f}" for v in r]) + " |" for s, r in rows.items()]
        cols = list(zip(*rows.values()))
        lines.append("| mean ± std | " + " | ".join(
            f"{statistics.mean(c):.3f} ± {statistics.stdev(c) if len(c) > 1 else 0:.3f}"
            for c in cols) + " |")
        lines.append("")
    head = ["# Can LLP's confidence, or the starting network, tell the distractors apart? (issue 18)",
            "", f"`.venv/bin/python benchmarks/llp_distractors.py {' '.join(args.runs)}` "
            f"(benchmarks/llp_distractors.py's docstring says what each column is). Machine: "
            f"{platform.machine()}, {os.cpu_count()} cores, {platform.system()} {platform.release()}.",
            ""]
    text = "\n".join(head + lines)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
