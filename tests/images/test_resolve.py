"""Each image's package set resolves on PyPI with the Dockerfile's pip flags; every package it
pulls in, transitively, has an exact pin in the image's constraints; and the image's hash lock
(images/<stage>/requirements.lock, what the Dockerfile installs with --require-hashes) is
exactly that resolution, hashes included -- a stale lock fails here.

Needs PyPI. pip reads PEP 658 metadata where the index serves it (PyPI does), so a dry run
downloads no wheels; an index without that metadata makes pip download them all (a few GB
for the torch images), hence ``slow``. The resolution is scripts/lock_images.py's, which
writes the locks (make image-locks).
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import pytest
from packaging.version import Version

from tests.images.dockerfile import REPO_ROOT, constraints_file, lock_file, stage_images
from tests.images.lockscript import lock_images
from tests.images.pins import pins

BUILD_LOCK = lock_images.BUILD_LOCK


def _interpreter_problem() -> str | None:
    try:
        lock_images.check_interpreter()
    except lock_images.LockError as exc:
        return str(exc)
    return None


pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(_interpreter_problem() is not None,
                                 reason=f"pip resolves for this interpreter: "
                                        f"{_interpreter_problem()}")]


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("pip-reports")


@lru_cache(maxsize=None)
def _resolve(image: str, work: Path) -> tuple[tuple[str, str, str], ...]:
    try:
        return tuple(lock_images.resolve(lock_images.names(REPO_ROOT / "images" / image /
                                                           "requirements.txt"),
                                         [constraints_file(image), BUILD_LOCK], work))
    except lock_images.LockError as exc:
        pytest.fail(f"{image}: {exc}")


def _unpinned(resolved, constraints: Path) -> list[str]:
    pinned = {**pins(constraints), **pins(BUILD_LOCK)}
    return sorted(f"{n}=={v}" for n, v, _ in resolved
                  if n not in pinned or Version(v) != Version(pinned[n]))


@pytest.mark.parametrize("image", stage_images())
def test_image_resolves_to_pinned_versions(image, work):
    constraints = constraints_file(image)
    unpinned = _unpinned(_resolve(image, work), constraints)
    assert not unpinned, (f"{image}: resolves to versions without a pin in "
                          f"{constraints.relative_to(REPO_ROOT)}: {', '.join(unpinned)}")


@pytest.mark.parametrize("image", stage_images())
def test_hash_lock_is_the_resolution(image, work):
    fresh = {f"{n}=={v} --hash=sha256:{h}" for n, v, h in _resolve(image, work)}
    locked = {ln for ln in lock_file(image).read_text().splitlines()
              if ln.strip() and not ln.startswith("#")}
    assert locked == fresh, (f"images/{image}/requirements.lock is stale (run make image-locks): "
                             f"only in the lock {sorted(locked - fresh)[:3]}, "
                             f"only in a fresh resolution {sorted(fresh - locked)[:3]}")


def test_build_lock_is_fresh(work):
    """The build tools' hashes, and the whole closure --require-hashes needs (wheel pulls in
    packaging)."""
    assert lock_images.build_lock_text(work) == BUILD_LOCK.read_text(), (
        "images/requirements-build.lock is stale: run make image-locks")


def test_faiss_gpu_is_unpinned_without_the_gpu_lock(work):
    """What the pin check catches: faiss-gpu-cu12 and its CUDA 12 wheels are pinned only in
    images/requirements-gpu.lock."""
    lock = REPO_ROOT / "requirements.lock"
    unpinned = _unpinned(lock_images.resolve(["faiss-gpu-cu12"], [lock], work), lock)
    assert any(u.startswith("faiss-gpu-cu12==") for u in unpinned), unpinned
    assert any(u.startswith("nvidia-cuda-runtime-cu12==") for u in unpinned), unpinned
