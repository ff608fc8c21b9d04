"""Each image's package set resolves on PyPI with the Dockerfile's pip flags, and every
package it pulls in, transitively, has an exact pin in the image's constraints.

Needs PyPI. pip reads PEP 658 metadata where the index serves it (PyPI does), so a dry run
downloads no wheels; an index without that metadata makes pip download them all (a few GB
for the torch images), hence ``slow``.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import subprocess
import sys
from functools import lru_cache
from pathlib import Path

import pytest
from packaging.utils import canonicalize_name
from packaging.version import Version

from tests.images.dockerfile import (IMAGES_DIR, REPO_ROOT, constraints_file, requirements,
                                     stage_images)
from tests.images.pins import pins

BUILD_LOCK = IMAGES_DIR / "requirements-build.lock"
# the flags of the Dockerfiles' `pip install -r images/requirements.txt`
PIP_FLAGS = ("--only-binary=:all:", "--no-binary=kfp-server-api", "--no-build-isolation")
IMAGE_PYTHON = (3, 11)  # python:3.11-slim-bookworm (images/base/Dockerfile)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(sys.version_info[:2] != IMAGE_PYTHON or sys.platform != "linux"
                       or platform.machine() != "x86_64",
                       reason="resolves for this interpreter, which must match the images' "
                              "(CPython 3.11, Linux x86_64)"),
]


@lru_cache(maxsize=None)  # train and score install the same set: resolved once
def _resolve(names: tuple[str, ...], constraints: Path, work: Path) -> dict[str, str]:
    """name -> version that pip would install into a fresh venv (dry run)."""
    key = hashlib.sha256(repr((names, str(constraints))).encode()).hexdigest()[:12]
    req_file, report = work / f"{key}.txt", work / f"{key}.json"
    req_file.write_text("\n".join(names) + "\n")
    cmd = [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet",
           "--report", str(report), *PIP_FLAGS, "-r", str(req_file), "-r", str(BUILD_LOCK),
           "-c", str(constraints), "-c", str(BUILD_LOCK)]
    env = {k: v for k, v in os.environ.items() if k != "PIP_FIND_LINKS"}  # the index only
    proc = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("ERROR")] or [proc.stderr]
        pytest.fail(f"{', '.join(names)} with {constraints.name} do not resolve: {errors[0]}")
    items = json.loads(report.read_text())["install"]
    return {canonicalize_name(i["metadata"]["name"]): i["metadata"]["version"] for i in items}


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("pip-reports")


def _unpinned(resolved: dict[str, str], constraints: Path) -> list[str]:
    pinned = {**pins(constraints), **pins(BUILD_LOCK)}
    return sorted(f"{n}=={v}" for n, v in resolved.items()
                  if n not in pinned or Version(v) != Version(pinned[n]))


@pytest.mark.parametrize("image", stage_images())
def test_image_resolves_to_pinned_versions(image, work):
    constraints = constraints_file(image)
    resolved = _resolve(tuple(sorted(requirements(image))), constraints, work)
    unpinned = _unpinned(resolved, constraints)
    assert not unpinned, (f"{image}: resolves to versions without a pin in "
                          f"{constraints.relative_to(REPO_ROOT)}: {', '.join(unpinned)}")


def test_faiss_gpu_is_unpinned_without_the_gpu_lock(work):
    """What the check above catches: faiss-gpu-cu12 and its CUDA 12 wheels are pinned only in
    images/requirements-gpu.lock."""
    lock = REPO_ROOT / "requirements.lock"
    unpinned = _unpinned(_resolve(("faiss-gpu-cu12",), lock, work), lock)
    assert any(u.startswith("faiss-gpu-cu12==") for u in unpinned), unpinned
    assert any(u.startswith("nvidia-cuda-runtime-cu12==") for u in unpinned), unpinned
