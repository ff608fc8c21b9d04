"""``semisup run``: a pipeline of pipelines/ run locally through kfp.local.

The SubprocessRunner runs each component as a Python subprocess in this environment (no
Docker), the same component code as on a cluster. What kfp.local does not do, and why that is
fine here:
  * Kubernetes settings (resources, tolerations, node selectors, Secrets) are ignored: the
    pipelines set none that the computation depends on;
  * the container image is not used (a warning is silenced below): this venv has every
    stage's packages;
  * artifacts live under a local pipeline root instead of MinIO, so runners read local paths
    (components/artifacts.py).
Finished tasks are cached on disk (kfp.local's cache), so rerunning after an interruption
skips them, and training steps resume from their checkpoints under ``<out>/work``.
"""

from __future__ import annotations

import importlib
import re
import logging
import os
import shutil
import time
import warnings

from semisup_core import config as cfglib
from semisup_core import storage
from semisup_core.errors import ConfigError, SemisupError

log = logging.getLogger(__name__)


class PipelineFailed(SemisupError):
    """A task of a local pipeline run failed."""


def pipeline_module(name: str):
    from pipelines import PIPELINES
    if name not in PIPELINES:
        raise ConfigError(f"unknown pipeline {name!r}; known: {', '.join(sorted(PIPELINES))}")
    return importlib.import_module(f"pipelines.{name}")


def _artifacts(run_dir: str) -> list[str]:
    """task/output directories under a finished local run, for the printout."""
    out = []
    for task in sorted(os.listdir(run_dir)):
        tdir = os.path.join(run_dir, task)
        if os.path.isdir(tdir):
            out += [os.path.join(tdir, o) for o in sorted(os.listdir(tdir))]
    return out


def run_local(name: str, config: str | None, overrides: list[str]) -> dict:
    """Validate the config, run the pipeline under kfp.local, print where everything went."""
    mod = pipeline_module(name)
    cfg = cfglib.load(mod.CONFIG, config, overrides)
    if not storage.is_local(cfg.out):
        raise ConfigError(f"out={cfg.out}: local runs keep the KFP pipeline root on local disk; "
                          "use a local path (stage data may still be on s3:// or minio://)")
    out = os.path.abspath(cfg.out)
    args = mod.arguments(cfg, out)
    from kfp import local
    root = os.path.join(out, "kfp")
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=root,
               enable_caching=True, cache_root=os.path.join(out, "kfp-cache"))
    cfglib.save(cfg, os.path.join(out, f"seed-{cfg.seed}"), f"{name}-config.yaml")
    before = set(os.listdir(root)) if os.path.isdir(root) else set()
    t0 = time.time()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*non-Python base image.*")
        try:
            getattr(mod, mod.PIPELINE)(**args)
        except RuntimeError as err:  # kfp.local: "Pipeline ... finished with status FAILURE ..."
            msg = re.sub(r"\x1b\[[0-9;]*m", "", str(err)).splitlines()[0]
            raise PipelineFailed(f"{msg} (the failing task's log is above; finished tasks are "
                                 "cached, so rerunning resumes)") from None
    runs = sorted(set(os.listdir(root)) - before)
    run_dir = os.path.join(root, runs[-1]) if runs else root
    return mod.finish(cfg, out, run_dir, _artifacts(run_dir), time.time() - t0)


def copy_tree(src: str, dst: str) -> None:
    if os.path.isdir(dst):
        shutil.rmtree(dst)
    shutil.copytree(src, dst)
