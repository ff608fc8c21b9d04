"""Run a script on several ranks (``torchrun --standalone``), for tests of cross-rank
mathematics: each rank writes its results under a directory the test reads back."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_ranks(script: str, nproc: int, *args: str, timeout: float = 240) -> str:
    """``script`` (a path under the repository) on ``nproc`` ranks, one thread each; asserts
    it succeeded, returns its stderr. A hang kills torchrun and its workers (own session)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           f"--nproc_per_node={nproc}", os.path.join(REPO, script), *args]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=REPO)
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        _, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        _, err = proc.communicate()
    assert proc.returncode == 0, err[-3000:]
    return err
