"""Linear evaluation of a representation (SimCLR's protocol, scaled down): the frozen model's
``forward_features`` of the labelled images train a multinomial logistic regression, whose
top-1 on the test set measures the representation. Run on every pre-training snapshot
(``snapshot_every_epochs``), it gives the linear-probe accuracy per pre-training epoch.

A SimCLRv2 snapshot's ``forward_features`` are the encoder's pooled features *through the
projection head's hidden layers* (``model_kwargs.head_mlp``, what fine-tuning from the head
starts from), not the encoder's own output h that SimCLR's linear evaluation reads.

The regression is full-batch L-BFGS on standardised features with an L2 penalty (a few
hundred labelled images: exact and seconds long), deterministic given the features.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn

from semisup_core import checkpoint, storage
from semisup_core.data.dataset import read_meta, shard_uris
from semisup_core.evaluate import predict


class _Features(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.forward_features(x)


def features(model, state: dict, data: str) -> tuple[np.ndarray, np.ndarray]:
    """The pooled features (N x d; ``forward_features``: with head layers, after them) and
    labels of every image of ``data``, from a model ``checkpoint.load_model`` gave."""
    meta = read_meta(data)
    feats, labels, _ = predict(_Features(model), shard_uris(data, meta), state["mean"],
                               state["std"], state["model"]["in_chans"], desc="features")
    return feats, labels


def fit_logistic(x: np.ndarray, y: np.ndarray, num_classes: int, l2: float = 1e-3,
                 iters: int = 200) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Weights, bias and the standardisation (mean, std) of an L2-regularised softmax
    regression fitted by L-BFGS (float64)."""
    xt = torch.from_numpy(x).double()
    mu, sd = xt.mean(0), xt.std(0).clamp_min(1e-6)
    xt = (xt - mu) / sd
    yt = torch.from_numpy(y).long()
    w = torch.zeros(xt.shape[1], num_classes, dtype=torch.float64, requires_grad=True)
    b = torch.zeros(num_classes, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=iters, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = nn.functional.cross_entropy(xt @ w + b, yt) + l2 * (w ** 2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return w.detach(), b.detach(), mu, sd


def linear_probe(model_dir: str, labelled: str, test: str, l2: float = 1e-3) -> float:
    """Top-1 on ``test`` of a linear classifier on ``model_dir``'s frozen features, fitted on
    ``labelled``."""
    model, state = checkpoint.load_model(model_dir)  # once for both sets
    xtr, ytr = features(model, state, labelled)
    xte, yte = features(model, state, test)
    w, b, mu, sd = fit_logistic(xtr, ytr, len(read_meta(labelled).classes), l2)
    pred = (((torch.from_numpy(xte).double() - mu) / sd) @ w + b).argmax(1).numpy()
    return float((pred == yte).mean())


def probe_snapshots(run_dir: str, labelled: str, test: str, l2: float = 1e-3) -> list[dict]:
    """The linear probe of every ``snapshots/epoch-NNN`` of a training run, by epoch."""
    rows = []
    for uri in sorted(storage.list_uris(storage.join(run_dir, "snapshots"))):
        if not uri.endswith("/state.json"):
            continue
        snap = uri[:-len("/state.json")]
        name = snap.rsplit("/", 1)[-1]
        if name.startswith("epoch-"):
            rows.append({"epoch": int(name[6:]),
                         "linear_probe_top1": linear_probe(snap, labelled, test, l2)})
    return rows
