"""Image policy: pinned packages and base images, a numeric non-root user, a Dockerfile for
every image the code runs, `make images` building them all, a build context that has what the
Dockerfiles COPY and none of the local state."""

from __future__ import annotations

import fnmatch
import re
import os
import subprocess

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from components import IMAGE_REPO
from semisup_core import __version__
from tests.images.dockerfile import (BASE, IMAGES_DIR, REPO_ROOT, constraints_file, dockerfile,
                                     image_names, lock_file, requirements, stage_images,
                                     stages)
from tests.images.pins import pins
from tests.images.test_entrypoints import component_images

GPU_LOCK = IMAGES_DIR / "requirements-gpu.lock"
MUST_IGNORE = (".git", ".venv/", "node_modules/", "runs/", "**/__pycache__/", ".pytest_cache/")


@pytest.mark.parametrize("image", stage_images())
def test_requirements_are_names_pinned_by_the_constraints(image):
    constraints = constraints_file(image)
    pinned = pins(constraints)
    for line in requirements(image):
        req = Requirement(line)
        assert not (req.specifier or req.url or req.extras), (
            f"images/{image}/requirements.txt: {line!r}: list the name only, the version comes "
            f"from {constraints.relative_to(REPO_ROOT)}")
        assert canonicalize_name(req.name) in pinned, (
            f"images/{image}/requirements.txt: {req.name} has no pin in "
            f"{constraints.relative_to(REPO_ROOT)}")


def test_gpu_lock_only_adds_to_requirements_lock():
    assert "-c ../requirements.lock" in GPU_LOCK.read_text().splitlines()
    again = set(pins(GPU_LOCK, follow=False)) & set(pins(REPO_ROOT / "requirements.lock"))
    assert not again, f"{GPU_LOCK.name} re-pins {sorted(again)}: requirements.lock has them"


@pytest.mark.parametrize("image", stage_images())
def test_faiss_gpu_only_with_the_gpu_lock(image):
    names = {canonicalize_name(r) for r in requirements(image)}
    gpu = constraints_file(image) == GPU_LOCK
    assert "faiss-cpu" not in names, f"{image}: faiss-cpu is the dev machines' faiss"
    assert ("faiss-gpu-cu12" in names) == gpu, (
        f"{image}: faiss-gpu-cu12 and images/requirements-gpu.lock go together")


HASHED = re.compile(r"([A-Za-z0-9._-]+)==(\S+) --hash=sha256:[0-9a-f]{64}")


def _lock_lines(path) -> list[str]:
    return [ln for ln in path.read_text().splitlines() if ln.strip() and not ln.startswith("#")]


@pytest.mark.parametrize("image", stage_images())
def test_lock_pins_and_hashes_every_package(image):
    lock = lock_file(image)
    bad = [ln for ln in _lock_lines(lock) if not HASHED.fullmatch(ln)]
    assert not bad, f"{lock.relative_to(REPO_ROOT)}: not name==version --hash=sha256:...: {bad[0]}"
    locked = pins(lock)
    missing = sorted({canonicalize_name(r) for r in requirements(image)} - set(locked))
    assert not missing, f"{lock.relative_to(REPO_ROOT)} lacks {missing}: run make image-locks"
    constraints = pins(constraints_file(image))
    drift = sorted(f"{n}=={v} (constraints: {constraints[n]})" for n, v in locked.items()
                   if n in constraints and constraints[n] != v)
    assert not drift, f"{lock.relative_to(REPO_ROOT)} is stale: {drift}: run make image-locks"


def test_build_tools_are_hashed():
    lock = IMAGES_DIR / "requirements-build.lock"
    bad = [ln for ln in _lock_lines(lock) if not HASHED.fullmatch(ln)]
    assert not bad and _lock_lines(lock), f"{lock.name}: {bad}"


@pytest.mark.parametrize("image", stage_images())
def test_image_installs_its_own_lock_with_require_hashes(image):
    builder = stages(dockerfile(image))[0]
    copied = [w for i in builder.instructions if i.keyword == "COPY"
              for w in i.args.split()[:-1] if "requirements" in w]
    assert f"images/{image}/requirements.lock" in copied, (
        f"images/{image}/Dockerfile copies {copied}, not images/{image}/requirements.lock")
    others = [c for c in copied if c.startswith("images/") and c.count("/") == 2
              and c.split("/")[1] != image]
    assert not others, f"images/{image}/Dockerfile installs another image's packages: {others}"
    installs = [cmd for i in builder.instructions if i.keyword == "RUN"
                for cmd in i.args.split("&&") if "pip install" in cmd and " -r " in cmd]
    assert installs and all("--require-hashes" in cmd for cmd in installs), (
        f"images/{image}/Dockerfile: a pip install -r without --require-hashes: {installs}")
    assert any("-r images/requirements.lock" in cmd for cmd in installs)
    assert any("-r images/requirements-build.lock" in cmd for cmd in installs)
    assert not any(re.search(r"\s-c\s", cmd) for cmd in installs), (
        f"images/{image}/Dockerfile: constraints next to a hash lock")


def _base_uid() -> str:
    run = " ".join(i.args for i in stages(dockerfile(BASE))[-1].instructions if i.keyword == "RUN")
    m = re.search(r"useradd .*--uid (\d+)", run)
    assert m, "images/base/Dockerfile: no useradd --uid"
    return m.group(1)


@pytest.mark.parametrize("image", stage_images())
def test_runs_as_numeric_non_root_user(image):
    user = stages(dockerfile(image))[-1].last("USER")
    assert user, f"images/{image}/Dockerfile: the final stage sets no USER (it would run as root)"
    m = re.fullmatch(r"(\d+)(?::(\d+))?", user.args)
    assert m, f"images/{image}/Dockerfile:{user.line}: USER {user.args} is not a numeric UID[:GID]"
    assert m.group(1) != "0" and m.group(1) == _base_uid(), f"{image}: USER {user.args}"


@pytest.mark.parametrize("image", image_names())
def test_base_images_are_pinned(image):
    for stage in stages(dockerfile(image)):
        ref = stage.image.split("@")[0]
        tag = ref.rsplit("/", 1)[-1].partition(":")[2]
        assert ("@sha256:" in stage.image or tag) and tag != "latest" and "$" not in ref, (
            f"images/{image}/Dockerfile: FROM {stage.image} is not pinned to a tag or digest")
        if image != BASE:
            assert stage.image == f"{IMAGE_REPO}/semisup-base:{__version__}", (
                f"images/{image}/Dockerfile: BASE_IMAGE defaults to {stage.image}; want this "
                f"release's base, {IMAGE_REPO}/semisup-base:{__version__}")


def test_every_image_the_code_runs_has_a_dockerfile():
    from semisup.pytorchjob import JobSpec

    used = {img for imgs in component_images().values() for img in imgs}
    default = JobSpec.model_fields["image"].default
    m = re.fullmatch(rf"{re.escape(IMAGE_REPO)}/semisup-([a-z0-9-]+):{re.escape(__version__)}",
                     default)
    assert m, f"JobSpec's default image {default} is not a stage image of this release"
    used.add(m.group(1))
    missing = sorted(used - set(stage_images()))
    assert not missing, f"no images/<stage>/Dockerfile for {missing}"


def _make_n(*args: str) -> list[str]:
    """``make -n`` as a person runs it: not the sub-make of ``make test``, whose inherited
    MAKEFLAGS would add "Entering/Leaving directory" lines."""
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MAKELEVEL", "MFLAGS")}
    proc = subprocess.run(["make", "--no-print-directory", "-n", *args], cwd=REPO_ROOT,
                          capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.replace("\\\n", " ").splitlines()


def test_make_images_builds_and_pushes_every_image_at_one_version():
    commit = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=REPO_ROOT,
                            capture_output=True, text=True, check=True).stdout.strip()
    lines = _make_n("images", "push-images", "VERSION=9.9.9", "REGISTRY=example.org/x")
    builds = [ln for ln in lines if " build " in f" {ln} "]
    assert "images/base" in builds[0].split(), f"the base is not built first: {builds[0]}"
    assert "-t example.org/x/semisup-base:9.9.9 " in builds[0]
    assert f"-t example.org/x/semisup-base:9.9.9-{commit} " in builds[0]
    assert f"org.opencontainers.image.revision={commit}" in builds[0]
    for image in stage_images():
        build = [b for b in builds if f"-f images/{image}/Dockerfile" in b]
        assert len(build) == 1, f"make images does not build {image} once"
        # a stage builds on the base of the same commit, not whatever 9.9.9 the registry holds
        assert f"--build-arg BASE_IMAGE=example.org/x/semisup-base:9.9.9-{commit} " in build[0]
        assert f"-t example.org/x/semisup-{image}:9.9.9 " in build[0]
        assert f"-t example.org/x/semisup-{image}:9.9.9-{commit} " in build[0]
    pushed = re.findall(r"push (\S+)", " ".join(lines))
    assert sorted(pushed) == sorted(f"example.org/x/semisup-{i}:9.9.9{c}" for i in image_names()
                                    for c in ("", f"-{commit}"))


def test_make_images_defaults_to_the_release():
    base = _make_n("image-base")[-1]
    assert f"-t {IMAGE_REPO}/semisup-base:{__version__}" in base


def _ignored(path: str, patterns: list[str]) -> bool:
    """Whether .dockerignore excludes ``path`` or a folder above it (no ! exceptions used)."""
    parts = path.split("/")
    prefixes = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
    for pat in (p.rstrip("/") for p in patterns):
        if pat.startswith("**/"):
            if any(fnmatch.fnmatch(part, pat[3:]) for part in parts):
                return True
        elif any(fnmatch.fnmatch(pre, pat) for pre in prefixes):
            return True
    return False


def _dockerignore() -> list[str]:
    lines = (REPO_ROOT / ".dockerignore").read_text().splitlines()
    return [ln.strip() for ln in lines if ln.strip() and not ln.startswith("#")]


def test_dockerignore_leaves_out_local_state():
    patterns = _dockerignore()
    assert not [p for p in patterns if p.startswith("!")], "exceptions are not handled here"
    missing = [p for p in MUST_IGNORE if p not in patterns]
    assert not missing, f".dockerignore lacks {missing}"


@pytest.mark.parametrize("image", stage_images())
def test_copy_sources_are_in_the_build_context(image):
    for stage in stages(dockerfile(image)):
        for ins in stage.instructions:
            if ins.keyword != "COPY" or "--from=" in ins.args:
                continue
            sources = [w for w in ins.args.split() if not w.startswith("--")][:-1]
            for src in sources:
                assert (REPO_ROOT / src).exists(), f"images/{image}/Dockerfile:{ins.line}: no {src}"
                assert not _ignored(src, _dockerignore()), (
                    f"images/{image}/Dockerfile:{ins.line}: {src} is in .dockerignore")
