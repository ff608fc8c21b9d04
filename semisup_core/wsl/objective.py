"""``objective: weak`` (Mahajan et al. 2018): every image's k weak labels (its tags' synsets)
as a soft target of 1/k each, softmax cross-entropy against it:

    loss_i = - sum_t y_it log softmax(z_i)_t = logsumexp(z_i) - (1/k_i) sum_{t in T_i} z_it

computed from the label lists (no B x V target tensor: the vocabulary can be 17k synsets).
The labels come from the synsets stage's ``targets.parquet`` (image key -> label indices); a
resampled training sample ``<key>-r<j>`` reads its image's row.
"""

from __future__ import annotations

import numpy as np
import torch
from pydantic import Field

from semisup_core.config import StageConfig
from semisup_core.errors import ConfigError, DataError


class WeakConfig(StageConfig):
    targets: str | None = Field(
        None, description="targets.parquet of the synsets stage (image key -> label indices); "
                          "null: the one beside the first data.train dataset")


def soft_target_loss(logits: torch.Tensor, labels: torch.Tensor, offsets: torch.Tensor
                     ) -> torch.Tensor:
    """Mean over the batch of the 1/k soft-target cross-entropy (formula above).

    Args:
        logits: [B, V].
        labels: the batch's label indices, concatenated (CSR values).
        offsets: [B + 1], image b's labels are ``labels[offsets[b]:offsets[b + 1]]`` (k >= 1).
    """
    z = logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits
    k = (offsets[1:] - offsets[:-1])
    row = torch.repeat_interleave(torch.arange(len(k), device=z.device), k)
    picked = z[row, labels].div(k[row].to(z.dtype))
    mean_z = torch.zeros(len(k), dtype=z.dtype, device=z.device).index_add_(0, row, picked)
    return (torch.logsumexp(z, dim=1) - mean_z).mean()


class WeakTargets:
    """Image key -> its label indices, as CSR arrays."""

    def __init__(self, uri: str, vocab: int):
        from semisup_core.tables import read_table
        try:
            table = read_table(uri, ["key", "labels"])
        except Exception as err:  # noqa: BLE001 -- one line naming the table
            raise ConfigError(f"weak.targets {uri}: {err}") from None
        lists = table["labels"].to_pylist()
        k = np.array([len(x or ()) for x in lists])
        if (k == 0).any():
            raise DataError(f"weak.targets {uri}: {int((k == 0).sum())} images have no label")
        self.values = torch.tensor([t for x in lists for t in x], dtype=torch.long)
        if len(self.values) and (self.values.min() < 0 or self.values.max() >= vocab):
            raise DataError(f"weak.targets {uri}: label indices outside the {vocab}-label "
                            "vocabulary of data.train")
        self.offsets = torch.from_numpy(np.concatenate([[0], np.cumsum(k)])).long()
        self.row = {key: i for i, key in enumerate(table["key"].to_pylist())}
        self.uri = uri

    def batch(self, keys: list[str], device) -> tuple[torch.Tensor, torch.Tensor]:
        """(labels, offsets) of ``keys``' images, for ``soft_target_loss``."""
        from semisup_core.wsl.resample import source_key
        rows = [self.row.get(source_key(k), -1) for k in keys]
        if -1 in rows:
            raise DataError(f"weak.targets {self.uri}: no labels for sample "
                            f"{keys[rows.index(-1)]!r}")
        starts, ends = self.offsets[rows], self.offsets[[r + 1 for r in rows]]
        k = ends - starts
        labels = torch.cat([self.values[s:e] for s, e in zip(starts.tolist(), ends.tolist())])
        return labels.to(device), torch.cat([torch.zeros(1, dtype=torch.long),
                                             torch.cumsum(k, 0)]).to(device)
