"""Run under ``torchrun --nproc_per_node=W``: every rank computes the contrastive loss of its
slice of one fixed global batch (negatives gathered across ranks with their gradients), as the
training loop does; writes the rank's loss and the gradient its views received to
``<out>/rank-<r>.pt``. tests/simclr/test_ntxent.py holds them against the brute force."""

import sys

import torch
import torch.distributed as dist

from semisup_core.train.objectives import ContrastiveConfig, contrastive_loss


def main(out: str, n: int, d: int, temperature: float) -> None:
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    g = torch.Generator().manual_seed(0)
    z1 = torch.randn(n, d, generator=g, dtype=torch.float64)  # raw head outputs (test_ntxent._views)
    z2 = torch.randn(n, d, generator=g, dtype=torch.float64)
    local = n // world
    mine = slice(rank * local, (rank + 1) * local)
    z = torch.cat([z1[mine], z2[mine]]).clone().requires_grad_(True)  # views 1 then views 2
    cfg = ContrastiveConfig(temperature=temperature, koleo_weight=0.0)
    loss, _ = contrastive_loss(torch.nn.functional.normalize(z, dim=1), cfg, rank)
    loss.backward()
    torch.save({"loss": loss.detach(), "grad": z.grad}, f"{out}/rank-{rank}.pt")
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]))
