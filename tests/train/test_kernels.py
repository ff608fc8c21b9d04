"""The CPU kernels training runs on compute the right gradients, on any x86 ISA a user may have.

oneDNN picks its kernels by the CPU (AVX2 on AMD EPYC, AVX-512 or AMX on recent Xeons), so a
green run on one machine says nothing about another. ``ONEDNN_MAX_CPU_ISA`` (documented by
oneDNN) makes this machine take the kernels of an older ISA. Each case runs in its own
process, since a broken kernel may abort (double free), segfault or spin forever: all three,
and a wrong gradient, fail the test. With the layout training used before (channels-last on
CPU) the AVX2 cases fail here: double free on 1 thread, a hang or a relative error ~0.9 in
the shortcut convolution's gradient on 2 (uxlfoundation/oneDNN#6035).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest
import torch

from semisup_core.errors import SemisupError
from semisup_core.models import create_model
from semisup_core.train import kernels
from semisup_core.watchdog import EXIT_STALLED, Watchdog

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# every ISA level that changes oneDNN's convolution kernels on x86-64, newest first; a level
# above what the CPU has is clamped by oneDNN to what it has
ISAS = ["DEFAULT", "AVX512_CORE_AMX", "AVX512_CORE", "AVX2", "SSE41"]

# the training stage itself, a few steps of the demo's models at the widths it trains (student
# and baseline 4, tests 8, teacher 16) in the demo's batch sizes, with the gradient check on:
# a wrong gradient exits 2 with KernelError, a broken kernel aborts, segfaults or hangs
_TRAIN = r"""
import sys, torch
from semisup_core import config
from semisup_core.train import TrainConfig, train
data, out, threads = sys.argv[1], sys.argv[2], int(sys.argv[3])
for name, width, batch in (("small_resnet8", 4, 64), ("small_resnet8", 8, 32), ("small_resnet14", 16, 64)):
    train(config.build(TrainConfig, {
        "out": f"{out}/{name}-{width}", "data": {"train": data, "num_workers": 0},
        "model": name, "model_kwargs": {"width": width}, "batch_size": batch, "epochs": 0.75,
        "threads": threads, "checkpoint": {"every_steps": 1000}}))
print("ok")
"""


def _run(code: str, env: dict, args: list[str], timeout: float = 120) -> tuple[int | None, str, str]:
    """(exit status or None on a hang, stdout, stderr) of ``python -c code`` in its own session."""
    proc = subprocess.Popen([sys.executable, "-c", code, *args], cwd=REPO, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
        return proc.returncode, out, err
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        return None, out, err


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("isa", ISAS)
def test_training_runs_with_exact_gradients_on_every_isa(isa, threads, blocks_dataset, tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "ONEDNN_MAX_CPU_ISA"}
    if isa != "DEFAULT":
        env["ONEDNN_MAX_CPU_ISA"] = isa
    env.update(OMP_NUM_THREADS=str(threads), PYTHONPATH=REPO)
    rc, out, err = _run(_TRAIN, env, [blocks_dataset, str(tmp_path), str(threads)])
    assert rc is not None, f"hung (killed after 120 s) with ONEDNN_MAX_CPU_ISA={isa}: {err[-2000:]}"
    assert rc == 0 and out.strip() == "ok", f"exit {rc} with ONEDNN_MAX_CPU_ISA={isa}: {err[-2000:]}"


def test_a_grey_scale_batch_gets_the_strides_of_its_layout():
    """C == 1: the crop's permute leaves channels-last strides on a tensor that is also
    'contiguous'; to_layout gives it NCHW strides, or the convolutions run channels-last."""
    from semisup_core.train import augment
    x = torch.rand(4, 28, 28, 1).permute(0, 3, 1, 2)
    assert x.is_contiguous() and x.stride() == (784, 1, 28, 1)
    y = augment.to_layout(x, torch.contiguous_format)
    assert y.stride() == (784, 784, 28, 1) and torch.equal(x, y)
    z = augment.to_layout(torch.rand(4, 3, 5, 5), torch.channels_last)
    assert z.stride() == (75, 1, 15, 3)
    same = torch.rand(2, 3, 4, 4)
    assert augment.to_layout(same, torch.contiguous_format) is same


def test_memory_format_policy():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert kernels.memory_format("auto", cpu) == torch.contiguous_format
    assert kernels.memory_format("auto", cuda) == torch.channels_last
    assert kernels.memory_format("channels_last", cpu) == torch.channels_last
    assert kernels.memory_format("contiguous", cuda) == torch.contiguous_format


class _WrongGrad(torch.autograd.Function):
    """Identity forward, 1.5x backward: what a broken kernel does to a gradient."""

    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, g):
        return 1.5 * g


class _BrokenConv(torch.nn.Conv2d):
    def forward(self, x):
        return _WrongGrad.apply(super().forward(x)) if x.dtype == torch.float32 else super().forward(x)


def test_gradient_check_names_the_wrong_tensor_and_leaves_the_model_alone():
    torch.manual_seed(0)
    model = create_model("small_resnet8", 4, 1, width=4)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x, y = torch.randn(8, 1, 28, 28), torch.randint(0, 4, (8,))
    kernels.check_gradients(model, x, y)  # correct kernels: passes
    broken = model.stages[1][0].shortcut[0]
    broken.__class__ = _BrokenConv  # the shortcut convolution's input gradient now 1.5x off
    with pytest.raises(kernels.KernelError) as err:
        kernels.check_gradients(model, x, y)
    msg = str(err.value)
    assert "\n" not in msg and "wrong gradients" in msg and "memory_format=contiguous" in msg
    assert isinstance(err.value, SemisupError)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())


def test_gradient_errors_cover_every_parameter():
    torch.manual_seed(1)
    model = create_model("small_resnet8", 3, 1, width=4)
    errs = kernels.gradient_errors(model, torch.randn(4, 1, 28, 28), torch.randint(0, 3, (4,)))
    assert set(errs) == {n for n, _ in model.named_parameters()}
    assert max(errs.values()) < 1e-4


_STALL = r"""
import sys, time
from semisup_core.watchdog import Watchdog
with Watchdog("train", float(sys.argv[1]), "raise stall_timeout_s") as w:
    w.beat("step 3 of 10")
    time.sleep(60)   # a kernel that never returns
print("not reached")
"""


def test_watchdog_ends_a_stalled_process_with_one_line():
    rc, out, err = _run(_STALL, dict(os.environ, PYTHONPATH=REPO), ["1.0"], timeout=30)
    assert rc == EXIT_STALLED and "not reached" not in out
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("train: stalled: no progress for ") and "at step 3 of 10" in lines[0]
    path = lines[0].split("stacks of every thread in ")[1].split(")")[0]
    stacks = open(path).read()
    os.unlink(path)
    assert "no progress for" in stacks and "<module>" in stacks  # the stuck thread's stack


_BEATING = r"""
import time
from semisup_core.watchdog import Watchdog
with Watchdog("train", 0.5) as w:
    for i in range(10):      # 1 s in all, a beat every 0.1 s
        time.sleep(0.1)
        w.beat(f"step {i}")
with Watchdog("train", 0):   # off
    time.sleep(0.7)
print("done")
"""


def test_watchdog_stays_quiet_while_beats_come():
    rc, out, err = _run(_BEATING, dict(os.environ, PYTHONPATH=REPO), [], timeout=30)
    assert rc == 0 and out.strip() == "done" and "stalled" not in err, err


_STALLED_TRAIN = r"""
import sys, time
from semisup_core.train import loop
step = loop.Trainer._train_step
def stuck(self, *args):
    if self.step == 2:
        time.sleep(120)   # as a deadlocked oneDNN kernel would
    return step(self, *args)
loop.Trainer._train_step = stuck
from semisup.cli import main
sys.exit(main(["stage", "train", "--set", f"out={sys.argv[2]}", "--set", f"data.train={sys.argv[1]}",
               "--set", "model_kwargs.width=4", "--set", "batch_size=32", "--set", "epochs=1",
               "--set", "threads=1", "--set", "data.num_workers=0", "--set", "stall_timeout_s=3",
               "--set", "checkpoint.every_steps=1"]))
"""


def test_a_stalled_training_step_ends_the_stage_with_one_line(blocks_dataset, tmp_path):
    rc, out, err = _run(_STALLED_TRAIN, dict(os.environ, PYTHONPATH=REPO),
                        [blocks_dataset, str(tmp_path / "run")], timeout=90)
    assert rc == EXIT_STALLED, err[-2000:]
    last = err.strip().splitlines()[-1]
    assert last.startswith("train: stalled: no progress for ") and "at step 3 of 8" in last, err
    assert "raise stall_timeout_s" in last
    # what was written stays: the checkpoints of steps 1 and 2, and a rerun resumes from them
    from semisup_core import checkpoint
    assert checkpoint.latest(str(tmp_path / "run"))[0] == 2
