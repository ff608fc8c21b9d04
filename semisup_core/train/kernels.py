"""Which memory layout training runs in, and a check that the CPU's kernels get gradients right.

Why contiguous (NCHW) on CPU: oneDNN's 1x1 convolution backward-weights kernel with a
channels-last (nhwc) source, stride > 1 and fewer input channels than its register block
(8 on AVX2) writes past its "reduce to unit stride" workspace. With torch 2.15.0 (oneDNN
v3.13.3) on an AVX2 CPU (every AMD EPYC/Ryzen, Intel without AVX-512, or any CPU under
``ONEDNN_MAX_CPU_ISA=AVX2``) the shortcut convolution of ``small_resnet8`` width 4
(4 -> 8 channels, stride 2) then ends with "double free or corruption" or a segfault on one
thread, and on two threads spins forever or returns wrong weight gradients. Upstream:
https://github.com/uxlfoundation/oneDNN/issues/6035 (open; no torch wheel has a fix). The
nchw source takes oneDNN's blocked path (``nChw8c``, ``jit_1x1:avx2``), which is correct on
every ISA tested here (tests/train/test_kernels.py). Measured through the training stage on
the demo's recipes (benchmarks/results/soak.md): NCHW runs at 0.97x and 1.01x of
channels-last for the width-4 models and 0.93x for the width-16 teacher on an AVX-512 Xeon.
Channels-last stays on CUDA, where it is what tensor cores want.

Why a gradient check: a kernel bug that returns wrong numbers does not crash, it trains a
worse model. Before the first step on CPU, :func:`check_gradients` compares the gradients of
a copy of the model, in the layout training uses, against the same model in float64 (which
oneDNN does not implement, so ATen's reference kernels compute it).
"""

from __future__ import annotations

import copy
from typing import Literal

import torch
import torch.nn.functional as F

from semisup_core.errors import SemisupError

MemoryFormat = Literal["auto", "channels_last", "contiguous"]


class KernelError(SemisupError):
    """The CPU's kernels computed wrong gradients for this model."""


def memory_format(setting: MemoryFormat, device: torch.device) -> torch.memory_format:
    """``auto``: channels-last on CUDA, contiguous (NCHW) on CPU (see the module docstring)."""
    if setting == "auto":
        return torch.channels_last if device.type == "cuda" else torch.contiguous_format
    return torch.channels_last if setting == "channels_last" else torch.contiguous_format


def _grads(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
    model.train()
    for m in model.modules():  # dropout off: the masks of two dtypes would differ
        if isinstance(m, torch.nn.Dropout):
            m.eval()
    model.zero_grad(set_to_none=True)
    F.cross_entropy(model(x), y).backward()
    return {n: p.grad.detach().double() for n, p in model.named_parameters() if p.grad is not None}


def gradient_errors(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    """Relative max-error of every parameter's gradient: ``x`` as given (its dtype and
    strides: what training feeds) against the same images in float64 NCHW.

    ``model`` (in the layout training put it in) is not changed: both passes run on copies;
    ``y`` are class ids.
    """
    fast = copy.deepcopy(model).float()  # keeps the layout training gave the weights
    ref = copy.deepcopy(model).double().to(memory_format=torch.contiguous_format)
    got = _grads(fast, x, y)
    want = _grads(ref, x.double().contiguous(), y)
    return {n: ((got[n] - g).abs().max() / g.abs().max().clamp_min(1e-12)).item()
            for n, g in want.items()}


def check_gradients(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor,
                    tol: float = 1e-3) -> None:
    """Raise :class:`KernelError` (one line) if any gradient is off by more than ``tol``."""
    errors = gradient_errors(model, x, y)
    bad = {n: e for n, e in errors.items() if not e <= tol}  # NaN counts as bad
    if bad:
        name, err = max(bad.items(), key=lambda kv: kv[1] if kv[1] == kv[1] else float("inf"))
        raise KernelError(
            f"this CPU's kernels compute wrong gradients for this model ({len(bad)} of "
            f"{len(errors)} tensors, worst {name}: relative error {err:.2g}); set "
            "memory_format=contiguous, or have oneDNN take other kernels with "
            "ONEDNN_MAX_CPU_ISA=AVX2 (README \"CPU kernels\")")
