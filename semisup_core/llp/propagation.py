"""Local Label Propagation's mathematics (Zhuang et al. 2019, ``../shared/papers/003_*``, §3):
the local density of the labelled points, the density-weighted kNN vote, and the aggregation
loss. Pure functions of tensors, so that the tests hold each one against the formula written
out element by element; ``objective.py`` keeps the state (memory bank, labels, confidences).

Notation (§3): ``v`` an image's current embedding, ``v̄_i`` memory-bank entry ``i`` (both
L2-normalised, 128-d), ``τ`` the temperature (0.07), ``N`` all images, ``X_L`` the labelled ones.

Non-parametric softmax (Eq. 1):   P(i|v) = exp(v̄_iᵀ v / τ) / Σ_{j=1..N} exp(v̄_jᵀ v / τ)

Local density of labelled point i (Eq. 7), over its T nearest neighbours among *all* N entries
(the point itself included, as in the reference code):
                                  ρ(v̄_i) = Σ_{j ∈ N_T(v̄_i)} P(j | v̄_i)
``density="paper"`` normalises P over all N as Eq. 1 writes it (ρ is a share of softmax mass);
``density="kernel"`` drops the partition, as the released code does (ρ = Σ_{top-T} exp(v̄_jᵀv̄_i/τ));
``density="off"`` is the plain weighted kNN of Eq. 5 (ρ = 1).

Label propagation (Eq. 8, with the printed typo's inner index renamed: P(j'|v̄_i), as in Eq. 7):
    N^L_K(v) = the K labelled points with the largest P^L(i|v) = P(i|v) / ρ(v̄_i)
    w_j(v)   = Σ_{i ∈ N^L_K(v), y_i = j} P(i|v) / ρ(v̄_i)
    p_j      = w_j / Σ_k w_k,   pseudo-label ŷ = argmax_j p_j,   confidence c = p_ŷ  (Eq. 6)
Z(v) is common to every i, so it cancels in p_j: the scores below are exp(v̄_iᵀv/τ)/ρ_i, and
the K best are the K largest of ``v̄_iᵀ v − τ log ρ_i``: one inner product between [v, 1] and
[v̄_i, −τ log ρ_i], which is how the kNN core (FAISS) finds them.

Aggregation loss (Eq. 2-3): L_A(v) = −log Σ_{i ∈ A} P(i|v), A = {i : y_i = y} the entries whose
stored label equals this image's; an image without a label yet has A = {itself} (instance
recognition, the warm start). The image's own entry is in A and in the partition.
"""

from __future__ import annotations

import math

import torch

from semisup_core import knn


# the partition of Eq. 7 is computed for this many (query, entry) similarities at a time
# (float64: 256 MiB), so that its memory does not grow with N (4,096 queries at once against
# 1.28M entries would be 42 GB)
PARTITION_ELEMS = 1 << 25


def log_density(bank: torch.Tensor, rows: torch.Tensor, temperature: float, t: int,
                mode: str = "paper", block: int = PARTITION_ELEMS) -> torch.Tensor:
    """``log ρ`` of the bank entries ``rows`` (M,), their T nearest among all N entries
    found by the kNN core (exact up to ``knn.EXACT_MAX`` entries, IVF above)."""
    if mode == "off" or len(rows) == 0:
        return torch.zeros(len(rows), dtype=torch.float64)
    return density_of(bank.float().cpu()[rows.cpu()], bank, temperature, t, mode, block)


def density_of(queries: torch.Tensor, bank: torch.Tensor, temperature: float, t: int,
               mode: str = "paper", block: int = PARTITION_ELEMS, gather=None) -> torch.Tensor:
    """``log ρ`` (Eq. 7) of the points ``queries`` (M x d, bank entries themselves) against
    ``bank``: the whole bank, or under ``gather`` one rank's block of it. ``gather(x)``
    concatenates every rank's ``x`` (M x k) along dim 1: each rank searches its block for its T
    nearest, the T best of all ranks' are the T nearest of the whole bank; log Z_i is the
    log-sum-exp of the ranks' partial log-sum-exps. ``block``: similarities held at once by the
    partition (queries x entries; at least one query's row)."""
    if mode == "off" or len(queries) == 0:
        return torch.zeros(len(queries), dtype=torch.float64)
    vecs = bank.float().cpu().numpy()
    tl = min(t, len(vecs))
    if tl:
        sims, _ = knn.search(knn.build(vecs), queries.float().cpu().numpy(), tl)
        s = torch.from_numpy(sims).double()
    else:  # an empty block
        s = torch.empty(len(queries), 0, dtype=torch.float64)
    if gather is not None:  # pad to T (-inf adds nothing to a log-sum-exp), the T best of all
        s = torch.cat([s, torch.full((len(s), t - tl), -math.inf, dtype=s.dtype)], 1)
        s = gather(s).topk(t, dim=1).values
    log_rho = torch.logsumexp(s / temperature, dim=1)  # M x T -> M
    if mode == "paper":  # minus log Z_i, the partition over all N entries, in blocks
        b, q = bank.double().cpu(), queries.double().cpu()
        rows = max(1, block // max(1, len(b)))
        log_z = torch.cat([torch.logsumexp(q[i:i + rows] @ b.T / temperature, dim=1)
                           for i in range(0, len(q), rows)])
        if gather is not None:
            log_z = torch.logsumexp(gather(log_z[:, None]), dim=1)
        log_rho = log_rho - log_z
    return log_rho


def propagate(v: torch.Tensor, keys: torch.Tensor, key_labels: torch.Tensor,
              key_log_rho: torch.Tensor, temperature: float, k: int,
              num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Pseudo-labels and confidences (Eq. 8 and 6) of the queries ``v`` (B x d) from the
    labelled bank entries ``keys`` (M x d) with labels ``key_labels`` (< ``num_classes``)
    and ``log ρ``."""
    if len(key_labels) and not 0 <= int(key_labels.min()) <= int(key_labels.max()) < num_classes:
        raise ValueError(f"key labels must be in [0, {num_classes})")
    return propagate_scored(v, score_keys(keys, key_log_rho, temperature), key_labels,
                            temperature, k)


def score_keys(keys: torch.Tensor, key_log_rho: torch.Tensor, temperature: float) -> torch.Tensor:
    """The keys of the density-weighted search: [v̄_i, -τ log ρ_i] (M x (d+1), float32, CPU,
    contiguous), so that [v̄_i, -τ log ρ_i] . [v, 1] = v̄_iᵀv - τ log ρ_i."""
    return torch.cat([keys.float().cpu(), (-temperature * key_log_rho.float().cpu())[:, None]], 1)


def propagate_scored(v: torch.Tensor, scored_keys: torch.Tensor, key_labels: torch.Tensor,
                     temperature: float, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``propagate`` with the keys already in ``score_keys`` form (LLPState keeps them so, and
    moves only the rows a step changes: no M x d copy per step). The search is the kNN core's
    exact inner product on the arrays as they are (``knn.exact_search``)."""
    if len(scored_keys) == 0:
        return (torch.full((len(v),), -1, dtype=torch.long),
                torch.zeros(len(v), dtype=torch.float32))
    k = min(k, len(scored_keys))
    aug_q = torch.cat([v.float().cpu(), torch.ones(len(v), 1)], 1)
    sims, ids = knn.exact_search(scored_keys.numpy(), aug_q.numpy(), k)
    logw = torch.from_numpy(sims).double() / temperature  # log of exp(v̄_iᵀv/τ)/ρ_i
    w = torch.exp(logw - logw[:, :1])  # the best first: Z(v) and the max cancel in p_j
    # w_j over the K neighbours' classes only (not a B x C table: C may be 10^4): each
    # neighbour's class total, the best class (the smallest id among equal totals, as an
    # argmax over classes gives), p = its total over all K weights
    lab = key_labels.cpu()[torch.from_numpy(ids)]  # B x K
    class_w = ((lab[:, :, None] == lab[:, None, :]) * w[:, None, :]).sum(2)  # B x K
    best = class_w.max(1, keepdim=True).values
    tie_break = torch.where(class_w == best, lab, torch.iinfo(lab.dtype).max)
    label = tie_break.min(1).values
    conf = best[:, 0] / w.sum(1)
    return label, conf.float()


def aggregation_loss(v: torch.Tensor, bank: torch.Tensor, bank_labels: torch.Tensor,
                     labels: torch.Tensor, own_rows: torch.Tensor, temperature: float,
                     support: torch.Tensor | None = None, row0: int = 0,
                     reduce_sum=None, reduce_max=None) -> torch.Tensor:
    """L_A per image (B,): ``v`` (B x d, with gradient), the bank and the stored labels of all
    N entries (``bank_labels``, N,; -1 = none), each image's label ``labels`` (B,; -1 = none)
    and its own bank row.

    ``support``: the bank rows the sums run over (default: all N, the paper's and its code's
    full softmax). With a random subset S of m rows, each sum over the other entries is
    estimated as (N-1)/|S \\ {own}| times its sum over S; the image's own entry is always
    counted exactly. L_A is then the log of a ratio of two such estimates (consistent, as the
    IR warm start's 4096 noise samples are); with S = all rows it is Eq. 3 exactly.

    A bank sharded over ranks: ``bank`` is this rank's block, rows ``[row0, row0 + len(bank))``,
    ``v`` every rank's queries; each rank sums over its block (its own entry where the block
    holds it), ``reduce_max`` makes the shift common, ``reduce_sum`` adds the ranks' partial
    sums (with their gradient). One block (the default) is the whole bank.

    The numerator's class sums are one matmul of the exponentials with the labels' one-hot
    (B x N x C), so the cost is the B x N x d similarity, as for the partition alone."""
    n, nloc = len(bank_labels), len(bank)
    dtype = torch.promote_types(v.dtype, torch.float32)  # float32 at least (under autocast too)
    v, b = v.to(dtype), bank.to(dtype)
    cols = torch.arange(row0, row0 + nloc, device=bank.device)
    if support is not None:
        cols = support[(support >= row0) & (support < row0 + nloc)]
    logits = v @ b[cols - row0].T / temperature  # B x m
    here = (own_rows >= row0) & (own_rows < row0 + nloc)  # the block holds the image's entry
    own_logit = (v * b[(own_rows - row0).clamp(0, max(nloc - 1, 0))]).sum(1) / temperature
    own_logit = torch.where(here, own_logit, torch.full_like(own_logit, -math.inf))
    shift = torch.cat([logits, own_logit[:, None]], 1).max(1).values.detach()
    if reduce_max is not None:
        shift = reduce_max(shift)
    not_own = cols[None, :] != own_rows[:, None]  # B x m
    e = torch.exp(logits - shift[:, None]) * not_own
    e_own = torch.exp(own_logit - shift)  # 0 where another block holds it
    classes = int(max(int(bank_labels.max()), int(labels.max()), 0)) + 1
    col_labels = bank_labels[cols]
    onehot = torch.zeros(len(cols), classes + 1, dtype=dtype, device=bank.device)
    onehot[torch.arange(len(cols), device=bank.device), torch.where(col_labels >= 0, col_labels, classes)] = 1
    by_class = e @ onehot[:, :classes]  # B x C: sum of e over the entries of each class
    same = by_class.gather(1, labels.clamp_min(0)[:, None])[:, 0] * (labels >= 0)
    parts = torch.stack([same, e.sum(1), e_own, not_own.sum(1).to(dtype)])
    if reduce_sum is not None:
        parts = reduce_sum(parts)
    same, total, e_own, others = parts
    scale = (n - 1) / others.clamp_min(1)  # 1 when S is every row
    num = scale * same + e_own
    den = scale * total + e_own
    return torch.log(den) - torch.log(num)
