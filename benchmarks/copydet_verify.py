"""Issue 16, the per-image bar: dedup's copy verifier measured under the descriptor's protocol.

The descriptor (``benchmarks/copydet_probe.py``) retrieves the source of 99.2-100% of every
edit, but distinct look-alike garments are as similar to each other (0.92-0.95) as half the
geometric copies are to their sources, so no threshold on its cosine gives both >= 95% recall
and 0.1% false flags per image. dedup's verifier (``semisup_core/dedup/verifier.py``: pairs from
``semisup stage verify-pairs``, a ``pair_verifier`` trained by ``semisup stage train``) judges
the few nearest candidates pair by pair; this script measures a trained one.

Decision per gallery image, as the dedup stage takes it: its k nearest gallery images by the
descriptor are the candidates, each pair scored by the verifier (both orders averaged), the
image's score is the best candidate's. Protocol as copydet_probe.py: the threshold frozen on
the 10k held-out pool images (0.1% of them flagged by their best verified *other* held-out
image), recall on copies of 1,000 of them, then the test set at that frozen threshold and at
the threshold chosen on the test set itself. The verifier must have been trained on the
descriptor's 50k training images only (``configs/copy_verifier.yaml``).

    .venv/bin/python benchmarks/copydet_verify.py --run runs/copydet/run-seed2 \\
        --verifier runs/copy-verifier/model --seed 2 --out runs/copy-verifier/report-seed2.json
Prints the table; writes the report JSON. (Up to commit 3bfab40 this script trained its own
verifier with a loop of its own; verify-seed2.json and verify-align-seed2.json came from it.)
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.copydet_probe import FPR, copies, embed_model, threshold_at  # noqa: E402
from benchmarks.dedup_probes import idx  # noqa: E402
from semisup_core import checkpoint  # noqa: E402
from semisup_core.dedup.calibration import TRANSFORMS  # noqa: E402
from semisup_core.dedup.verifier import PairScorer, pair_neighbours  # noqa: E402


def evaluate(scorer: PairScorer, E, gallery: np.ndarray, k: int, seed: int, n_copies: int,
             thresholds: dict[str, float | None]) -> dict:
    """The protocol on one gallery, its pairs verified once, read at each of ``thresholds``
    (name -> a frozen threshold, or None: chosen here at 0.1% of the gallery flagged)."""
    g = E(gallery)
    near = pair_neighbours(g, k)
    s = scorer(np.repeat(gallery, k, 0), gallery[near.reshape(-1)]).reshape(-1, k)
    other = s.max(1)  # each image's best verified look-alike: its false-flag statistic
    pick, edited = copies(gallery, n_copies, seed)
    gt = torch.from_numpy(g)
    found, best = {}, {}
    for t, imgs in edited.items():
        cand = (torch.from_numpy(E(imgs)) @ gt.T).topk(k, dim=1).indices.numpy()
        v = scorer(np.repeat(imgs, k, 0), gallery[cand.reshape(-1)]).reshape(-1, k)
        found[t] = cand[np.arange(len(cand)), v.argmax(1)] == pick
        best[t] = v.max(1)
    out = {}
    for name, thr in thresholds.items():
        chosen = threshold_at(other, FPR) if thr is None else thr
        out[name] = {"threshold": float(chosen),
                     "false_flag_rate": float(np.mean(other >= chosen)),
                     "recall": {t: float(np.mean(found[t] & (best[t] >= chosen))) for t in found},
                     "top1_is_source": {t: float(np.mean(found[t])) for t in found}}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--summarize", nargs="+", type=Path, help="report JSON files: print the "
                    "mean ± std table over them and exit")
    ap.add_argument("--run", type=Path, help="a copydet_probe descriptor run dir")
    ap.add_argument("--verifier", help="a trained pair_verifier's model dir")
    ap.add_argument("--out", type=Path, help="the report JSON to write")
    ap.add_argument("--seed", type=int, default=0, help="the copy draw's seed")
    ap.add_argument("--k", type=int, default=5, help="candidates verified per image")
    ap.add_argument("--copies", type=int, default=1000)
    args = ap.parse_args()
    if args.summarize:
        print(summary([json.loads(p.read_text()) for p in args.summarize]))
        return
    if not (args.run and args.verifier and args.out):
        ap.error("--run, --verifier and --out are required")
    t0 = time.time()
    train_all, test = idx("train-images-idx3-ubyte.gz"), idx("t10k-images-idx3-ubyte.gz")
    perm = np.random.default_rng(0).permutation(len(train_all))  # copydet_probe's split
    held = train_all[np.sort(perm[50000:])]
    model, state = checkpoint.load_model(str(args.run))
    model = model.to(memory_format=torch.contiguous_format).eval()

    def E(x):
        return embed_model(model, state, x)

    scorer = PairScorer(args.verifier)
    vstate = checkpoint.load_model(args.verifier)[1]
    held_res = evaluate(scorer, E, held, args.k, args.seed, args.copies, {"held_out": None})
    test_res = evaluate(scorer, E, test, args.k, args.seed, args.copies,
                        {"test_frozen": held_res["held_out"]["threshold"], "test_stage": None})
    report = {"machine": f"{platform.machine()}, {torch.get_num_threads()} threads",
              "args": {k: str(v) for k, v in vars(args).items()},
              "verifier": {"config": vstate["config"], "model": vstate["model"],
                           "history": vstate.get("history", [])[-1:]},
              **held_res, **test_res}
    report["seconds"] = time.time() - t0
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1))
    print(markdown(report))


ROWS = {"held_out": "held-out pool, threshold chosen there",
        "test_frozen": "test set, the held-out threshold (frozen)",
        "test_stage": "test set, threshold chosen on all its images"}


def markdown(report: dict) -> str:
    lines = [f"Machine: {report['machine']}; measured in {report['seconds'] / 60:.1f} min; "
             f"args {report['args']}.", "",
             "| where | threshold (logit) | false flags | " + " | ".join(TRANSFORMS) + " |",
             "|---|---:|---:|" + "---:|" * len(TRANSFORMS)]
    for where, name in ROWS.items():
        r = report[where]
        cells = [f"{r['recall'][t]:.3f} ({r['top1_is_source'][t]:.2f})" for t in TRANSFORMS]
        lines.append(f"| {name} | {r['threshold']:.3f} | {100 * r['false_flag_rate']:.2f}% | "
                     + " | ".join(cells) + " |")
    lines += ["", "Each cell: recall at the threshold (in brackets: the share whose best verified "
              "candidate is the source, whatever the score)."]
    return "\n".join(lines)


def summary(reports: list[dict]) -> str:
    """Mean ± std over seeds (sample std) of each row: threshold, false flags, recall."""
    seeds = [r["args"]["seed"] for r in reports]

    def ms(values, pct=False, digits=3):
        v = np.array(values) * (100 if pct else 1)
        sd = v.std(ddof=1) if len(v) > 1 else 0.0
        return f"{v.mean():.{digits}f} ± {sd:.{digits}f}"
    lines = [f"Seeds {seeds} (descriptor, verifier and copy draw), mean ± std:", "",
             "| where | threshold (logit) | false flags | " + " | ".join(TRANSFORMS) + " |",
             "|---|---:|---:|" + "---:|" * len(TRANSFORMS)]
    for where, name in ROWS.items():
        rs = [r[where] for r in reports]
        lines.append(f"| {name} | {ms([x['threshold'] for x in rs], digits=2)} | "
                     f"{ms([x['false_flag_rate'] for x in rs], pct=True, digits=2)}% | " +
                     " | ".join(ms([x["recall"][t] for x in rs]) for t in TRANSFORMS) + " |")
    worst = {t: min(r["held_out"]["recall"][t] for r in reports) for t in TRANSFORMS}
    lines += ["", "Worst seed, held-out pool: " + ", ".join(f"{t} {v:.3f}" for t, v in worst.items())]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
