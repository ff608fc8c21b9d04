"""Issue 16, the per-image bar: a learned pair verifier over the copy descriptor's candidates.

The descriptor (``benchmarks/copydet_probe.py``) retrieves the source of 99.2-100% of every
edit, but distinct look-alike garments are as similar to each other (0.92-0.95) as half the
geometric copies are to their sources, so no threshold on its cosine gives both >= 95% recall
and 0.1% false flags per image. Copy-detection systems then verify the top candidates pair by
pair. Here the verifier is a small CNN that sees both images stacked as two channels and says
"copy" or "not": trained on the descriptor's 50k training images only, positives an image and
one of its edits (the calibration's six transforms), negatives an image and an edit of one of
its 10 nearest *other* training images by the descriptor (the look-alikes the cosine confuses;
edited too, so that an edit's traces do not give the answer).

Decision per gallery image, as the dedup stage would take it: its k nearest gallery images by
the descriptor are the candidates, each pair scored by the verifier (both orders averaged),
the image's score is the best candidate's. Protocol as copydet_probe.py: the threshold frozen
on the 10k held-out pool images (0.1% of them flagged by their nearest *other* held-out
image), recall on copies of 1,000 of them, then the test set at that frozen threshold and at
the threshold chosen on the test set itself.

    .venv/bin/python benchmarks/copydet_verify.py --run runs/copydet/run-seed2 --seed 2 \\
        --out runs/copydet/verify-seed2
Prints the table; writes report.json and the verifier's weights under --out.
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
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.copydet_probe import FPR, copies, embed_model, threshold_at  # noqa: E402
from benchmarks.dedup_probes import idx  # noqa: E402
from semisup_core import checkpoint  # noqa: E402
from semisup_core.dedup.calibration import TRANSFORMS, transform  # noqa: E402


def rescale(b: torch.Tensor, scale: float) -> torch.Tensor:
    """``b`` (N x H x W) magnified by ``scale`` about its centre (bilinear; black outside)."""
    if scale == 1.0:
        return b.float()
    n, h, w = b.shape
    theta = torch.tensor([[1 / scale, 0, 0], [0, 1 / scale, 0]]).expand(n, 2, 3)
    grid = F.affine_grid(theta, (n, 1, h, w), align_corners=False)
    return F.grid_sample(b.float().unsqueeze(1), grid, align_corners=False).squeeze(1)


def align(a: torch.Tensor, b: torch.Tensor, radius: int,
          scales: tuple[float, ...] = (1.0,)) -> torch.Tensor:
    """``b`` rescaled by one of ``scales`` and shifted by the integer (dy, dx), |dy|, |dx| <=
    radius, that best matches ``a`` (largest <a, moved b> / |moved b|), the border black."""
    n, h, w = a.shape
    af = a.float()
    best = torch.full((n,), -1.0)
    out = torch.empty(n, h, w)
    for scale in scales:
        bp = F.pad(rescale(b, scale), (radius,) * 4)
        for dy in range(2 * radius + 1):
            for dx in range(2 * radius + 1):
                s = bp[:, dy:dy + h, dx:dx + w]
                score = (af * s).sum((1, 2)) / s.pow(2).sum((1, 2)).sqrt().clamp_min(1e-6)
                better = score > best
                best = torch.where(better, score, best)
                out[better] = s[better]
    return out.round().clamp(0, 255).to(b.dtype)


class Verifier(nn.Module):
    """Two images stacked as channels -> the logit of "one is a copy of the other"; with
    ``radius`` the second is first shifted onto the first (``align``)."""

    def __init__(self, width: int = 32, radius: int = 0, scales: tuple[float, ...] = (1.0,)):
        super().__init__()
        w, self.radius, self.scales = width, radius, tuple(scales)

        def block(i, o, s):
            return nn.Sequential(nn.Conv2d(i, o, 3, s, 1, bias=False), nn.BatchNorm2d(o), nn.ReLU())
        self.body = nn.Sequential(block(2, w, 1), block(w, w, 1), block(w, 2 * w, 2),
                                  block(2 * w, 2 * w, 1), block(2 * w, 4 * w, 2),
                                  block(4 * w, 4 * w, 1))
        self.head = nn.Linear(4 * w, 1)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        if self.radius:
            b = align(a, b, self.radius, self.scales)
        x = torch.stack([a, b], 1).float() / 127.5 - 1
        return self.head(self.body(x).mean((2, 3))).squeeze(1)


def edit(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return transform(img, TRANSFORMS[int(rng.integers(len(TRANSFORMS)))], rng)


def neighbours(e: np.ndarray, k: int, exclude_self: bool = True) -> np.ndarray:
    """Each row's k nearest rows of ``e`` (cosine), itself excluded."""
    out = np.empty((len(e), k), np.int64)
    t = torch.from_numpy(e)
    for i in range(0, len(e), 2000):
        s = t[i:i + 2000] @ t.T
        if exclude_self:
            s[torch.arange(len(s)), torch.arange(i, i + len(s))] = -2
        out[i:i + 2000] = s.topk(k, dim=1).indices.numpy()
    return out


def pairs(images: np.ndarray, near: np.ndarray, rng: np.random.Generator):
    """One epoch: per image one positive (it, an edit of it) and one negative (it, an edit of
    one of its nearest others), each pair's sides in random order."""
    n = len(images)
    a = np.empty((2 * n, 28, 28), np.uint8)
    b = np.empty_like(a)
    for i in range(n):
        a[2 * i], b[2 * i] = images[i], edit(images[i], rng)
        j = near[i, rng.integers(near.shape[1])]
        a[2 * i + 1], b[2 * i + 1] = images[i], edit(images[j], rng)
    y = np.tile([1.0, 0.0], n).astype(np.float32)
    swap = rng.random(2 * n) < 0.5
    a[swap], b[swap] = b[swap].copy(), a[swap].copy()
    return torch.from_numpy(a), torch.from_numpy(b), torch.from_numpy(y)


def train_verifier(images, near, args) -> Verifier:
    torch.manual_seed(args.seed)
    net = Verifier(args.width, args.align, args.scales)
    opt = torch.optim.SGD(net.parameters(), lr=args.lr, momentum=0.9, weight_decay=5e-4,
                          nesterov=True)
    steps = args.epochs * (2 * len(images) // args.batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, args.lr, total_steps=steps, pct_start=0.1)
    rng = np.random.default_rng(args.seed)
    for epoch in range(args.epochs):
        t0 = time.time()
        a, b, y = pairs(images, near, rng)
        perm = torch.randperm(len(y))
        net.train()
        total = 0.0
        for s in range(len(y) // args.batch):
            i = perm[s * args.batch:(s + 1) * args.batch]
            loss = F.binary_cross_entropy_with_logits(net(a[i], b[i]), y[i])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach())
        print(f"epoch {epoch + 1}/{args.epochs}: loss {total / (len(y) // args.batch):.4f} "
              f"({time.time() - t0:.0f} s)", flush=True)
    return net.eval()


@torch.inference_mode()
def score(net, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Verifier logits of the pairs (a[i], b[i]), both orders averaged."""
    out = []
    for i in range(0, len(a), 4096):
        x, y = torch.from_numpy(a[i:i + 4096]), torch.from_numpy(b[i:i + 4096])
        out.append(((net(x, y) + net(y, x)) / 2).numpy())
    return np.concatenate(out)


def evaluate(net, E, gallery: np.ndarray, k: int, seed: int, n_copies: int,
             thr: float | None = None) -> dict:
    g = E(gallery)
    near = neighbours(g, k)
    s = score(net, np.repeat(gallery, k, 0), gallery[near.reshape(-1)]).reshape(-1, k)
    other = s.max(1)  # each image's best verified look-alike: its false-flag statistic
    chosen = threshold_at(other, FPR) if thr is None else thr
    pick, edited = copies(gallery, n_copies, seed)
    gt = torch.from_numpy(g)
    recall, top1 = {}, {}
    for t, imgs in edited.items():
        cand = (torch.from_numpy(E(imgs)) @ gt.T).topk(k, dim=1).indices.numpy()
        v = score(net, np.repeat(imgs, k, 0), gallery[cand.reshape(-1)]).reshape(-1, k)
        best = cand[np.arange(len(cand)), v.argmax(1)]
        recall[t] = float(np.mean((best == pick) & (v.max(1) >= chosen)))
        top1[t] = float(np.mean(best == pick))
    return {"threshold": float(chosen), "false_flag_rate": float(np.mean(other >= chosen)),
            "recall": recall, "top1_is_source": top1}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run", type=Path, required=True, help="a copydet_probe descriptor run dir")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--seed", type=int, default=0, help="the copy draw and the verifier's seed")
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--lr", type=float, default=0.1)
    ap.add_argument("--width", type=int, default=32)
    ap.add_argument("--align", type=int, default=0, help="shift the pair's second image onto "
                    "the first by up to this many pixels before verifying (0: off)")
    ap.add_argument("--scales", type=float, nargs="+", default=[1.0],
                    help="with --align: magnifications of the second image tried too (a crop "
                    "magnifies its content by 1.02-1.25)")
    ap.add_argument("--neg-k", type=int, default=10, help="negatives among the k nearest others")
    ap.add_argument("--k", type=int, default=5, help="candidates verified per image")
    ap.add_argument("--copies", type=int, default=1000)
    args = ap.parse_args()
    t0 = time.time()
    train_all, test = idx("train-images-idx3-ubyte.gz"), idx("t10k-images-idx3-ubyte.gz")
    perm = np.random.default_rng(0).permutation(len(train_all))  # copydet_probe's split
    fit, held = train_all[np.sort(perm[:50000])], train_all[np.sort(perm[50000:])]
    model, state = checkpoint.load_model(str(args.run))
    model = model.to(memory_format=torch.contiguous_format).eval()

    def E(x):
        return embed_model(model, state, x)

    args.out.mkdir(parents=True, exist_ok=True)
    weights = args.out / "verifier.pt"
    if weights.exists():
        net = Verifier(args.width, args.align, args.scales)
        net.load_state_dict(torch.load(weights, weights_only=True))
        net.eval()
    else:
        net = train_verifier(fit, neighbours(E(fit), args.neg_k), args)
        torch.save(net.state_dict(), weights)
    train_s = time.time() - t0
    held_res = evaluate(net, E, held, args.k, args.seed, args.copies)
    report = {"machine": f"{platform.machine()}, {torch.get_num_threads()} threads",
              "args": {k: str(v) for k, v in vars(args).items()}, "train_seconds": train_s,
              "held_out": held_res,
              "test_frozen": evaluate(net, E, test, args.k, args.seed, args.copies,
                                      thr=held_res["threshold"]),
              "test_stage": evaluate(net, E, test, args.k, args.seed, args.copies)}
    report["seconds"] = time.time() - t0
    (args.out / "report.json").write_text(json.dumps(report, indent=1))
    print(markdown(report))


ROWS = {"held_out": "held-out pool, threshold chosen there",
        "test_frozen": "test set, the held-out threshold (frozen)",
        "test_stage": "test set, threshold chosen on all its images"}


def markdown(report: dict) -> str:
    lines = [f"Machine: {report['machine']}; verifier trained in {report['train_seconds'] / 60:.1f}"
             f" min, all {report['seconds'] / 60:.1f} min; args {report['args']}.", "",
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


if __name__ == "__main__":
    main()
