"""Run under ``torchrun --nproc_per_node=W``: each rank holds its block of one fixed memory
bank (rows ``[r N/W, (r+1) N/W)``, as ``LLPState`` with ``bank: sharded``) and computes, as the
training loop does, L_A of its slice of one fixed global batch (every rank's queries gathered
with their gradients, the blocks' partial sums all-reduced) and ``log ρ`` of the labelled
entries (each block searched, the T best merged). Writes the rank's losses, the gradient its
queries received and the densities to ``<out>/rank-<r>.pt``; tests/llp/test_sharded_bank.py
holds them against the whole bank in one process."""

import sys

import torch
import torch.distributed as dist
import torch.nn.functional as F

from semisup_core.llp.objective import _gather, _max, _sum_with_grad
from semisup_core.llp.propagation import aggregation_loss, density_of
from semisup_core.train.distributed import all_gather_with_grad


def problem(n: int = 97, b: int = 12, d: int = 8, classes: int = 5):
    """The fixed bank, its stored labels, the global batch's queries, labels and own rows, the
    sampled support (no row of the last third: a block without support) and the labelled rows."""
    g = torch.Generator().manual_seed(0)
    bank = F.normalize(torch.randn(n, d, generator=g, dtype=torch.float64), dim=1)
    bank_labels = torch.randint(-1, classes, (n,), generator=g)
    v = F.normalize(torch.randn(b, d, generator=g, dtype=torch.float64), dim=1)
    own = torch.randperm(n, generator=g)[:b]
    labels = bank_labels[own]
    support = torch.randperm(2 * n // 3, generator=g)[:40].sort().values
    labelled = torch.randperm(n, generator=g)[:20].sort().values
    return bank, bank_labels, v, own, labels, support, labelled


def main(out: str) -> None:
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    bank, bank_labels, v, own, labels, support, labelled = problem()
    n, b = len(bank), len(v)
    lo, hi = rank * n // world, (rank + 1) * n // world
    local = b // world
    mine = slice(rank * local, (rank + 1) * local)
    result = {}
    for name, sup in (("full", None), ("support", support)):
        q = v[mine].clone().requires_grad_(True)
        loss = aggregation_loss(all_gather_with_grad(q), bank[lo:hi], bank_labels, _gather(labels[mine]),
                                _gather(own[mine]), 0.07, sup, lo, _sum_with_grad, _max)[mine]
        loss.sum().backward()
        result[name] = (loss.detach(), q.grad)
    for mode in ("paper", "kernel"):
        result[mode] = density_of(bank[labelled].float(), bank[lo:hi].float(), 0.07, 25, mode,
                                  gather=lambda x: _gather(x, 1))
    torch.save(result, f"{out}/rank-{rank}.pt")
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
