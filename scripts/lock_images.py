"""Hash-lock the container images' Python packages (issue 17: reproducible images).

For every stage image, ``images/<stage>/requirements.lock`` lists every package the image
installs, transitively, as ``name==version --hash=sha256:<digest>``: what pip resolves for
``images/<stage>/requirements.txt`` (names only) under the image's constraints
(``requirements.lock``, or ``images/requirements-gpu.lock`` where the image carries faiss-gpu),
with the Dockerfiles' pip flags, for CPython 3.11 on manylinux x86_64 -- the interpreter and
platform of ``python:3.11-slim-bookworm`` (images/base/Dockerfile), which this script must run
on, since pip picks the file (and so the hash) for the running interpreter. The Dockerfiles
install that file with ``pip install --require-hashes``: a package that changed on the index
under the same version, or one that the lock does not name, fails the build.
``images/requirements-build.lock`` (pip, setuptools, wheel) gets its hashes the same way.

    .venv/bin/python scripts/lock_images.py            # rewrite the locks (needs PyPI)
    .venv/bin/python scripts/lock_images.py --check    # exit 1 naming the stale locks
    .venv/bin/python scripts/lock_images.py score dedup

``make image-locks`` runs the first. Run it after changing requirements.lock, the GPU lock or
an image's requirements.txt; ``tests/images/test_resolve.py`` fails while a lock is stale.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
IMAGES_DIR = REPO_ROOT / "images"
ROOT_LOCK = REPO_ROOT / "requirements.lock"
GPU_LOCK = IMAGES_DIR / "requirements-gpu.lock"
BUILD_LOCK = IMAGES_DIR / "requirements-build.lock"
# the flags of the Dockerfiles' `pip install -r images/requirements.lock`: wheels only, except
# kfp-server-api (an sdist only on PyPI), built with the venv's pinned setuptools
PIP_FLAGS = ("--only-binary=:all:", "--no-binary=kfp-server-api", "--no-build-isolation")
IMAGE_PYTHON = (3, 11)
CONSTRAINTS_PREFIX = "# constraints: "


class LockError(Exception):
    """A one-line reason the locks cannot be made."""


def check_interpreter() -> None:
    if (sys.version_info[:2] != IMAGE_PYTHON or sys.platform != "linux"
            or platform.machine() != "x86_64"):
        raise LockError(f"the images run CPython {IMAGE_PYTHON[0]}.{IMAGE_PYTHON[1]} on Linux "
                        f"x86_64; this is {platform.python_implementation()} "
                        f"{platform.python_version()} on {sys.platform} {platform.machine()}, "
                        "for which pip would pick other files")


def stage_images() -> list[str]:
    return sorted(p.parent.name for p in IMAGES_DIR.glob("*/requirements.txt"))


def names(path: Path) -> list[str]:
    """The requirement lines of a names-only file (comments and blanks dropped)."""
    out = []
    for raw in path.read_text().splitlines():
        line = raw.split("#")[0].strip()
        if line:
            out.append(line)
    return out


def exact_pins(path: Path, text: str | None = None) -> dict[str, str]:
    """canonical name -> version of the ``name==version`` lines of ``path`` itself (or of
    ``text``; not of the files it includes); ``--hash`` options are ignored."""
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name
    out = {}
    for raw in (path.read_text() if text is None else text).splitlines():
        line = raw.split("#")[0].split(" --")[0].strip()
        if line and not line.startswith("-"):
            req = Requirement(line)
            out[canonicalize_name(req.name)] = next(iter(req.specifier)).version
    return out


def constraints_for(image: str) -> Path:
    """The GPU lock for an image that lists a package only it pins (faiss-gpu-cu12 and the
    CUDA 12 wheels), requirements.lock otherwise."""
    from packaging.utils import canonicalize_name
    gpu_only = set(exact_pins(GPU_LOCK))
    wanted = {canonicalize_name(n) for n in names(IMAGES_DIR / image / "requirements.txt")}
    return GPU_LOCK if wanted & gpu_only else ROOT_LOCK


def _unhashed(path: Path, work: Path) -> Path:
    """``path``, or a copy without its ``--hash`` options: a hash in a constraints file turns
    on pip's hash-checking mode for the whole resolution."""
    text = path.read_text()
    if "--hash" not in text:
        return path
    copy = work / f"unhashed-{path.name}"
    copy.write_text("\n".join(ln.split(" --hash")[0] for ln in text.splitlines()) + "\n")
    return copy


def resolve(requirement_lines: list[str], constraints: list[Path],
            work: Path) -> list[tuple[str, str, str]]:
    """(name, version, sha256 of the file pip would install) for every package a fresh venv
    would get (a dry run: PyPI's PEP 658 metadata, no wheel downloads), sorted by name."""
    from packaging.utils import canonicalize_name
    req_file = work / f"req-{len(list(work.iterdir()))}.txt"
    report = req_file.with_suffix(".json")
    req_file.write_text("\n".join(requirement_lines) + "\n")
    cmd = [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet",
           "--report", str(report), *PIP_FLAGS, "-r", str(req_file)]
    for c in constraints:
        cmd += ["-c", str(_unhashed(c, work))]
    env = {k: v for k, v in os.environ.items() if k != "PIP_FIND_LINKS"}  # the index only
    proc = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("ERROR")]
        raise LockError(f"{', '.join(requirement_lines)} do not resolve: "
                        f"{(errors or proc.stderr.strip().splitlines() or ['pip failed'])[0]}")
    out = []
    for item in json.loads(report.read_text())["install"]:
        hashes = item["download_info"].get("archive_info", {}).get("hashes", {})
        if "sha256" not in hashes:
            raise LockError(f"{item['metadata']['name']}: the index gives no sha256 for "
                            f"{item['download_info']['url']}")
        out.append((canonicalize_name(item["metadata"]["name"]), item["metadata"]["version"],
                    hashes["sha256"]))
    return sorted(out)


def _rel(path: Path) -> str:
    return path.relative_to(REPO_ROOT).as_posix()


def image_lock_text(image: str, work: Path) -> str:
    constraints = constraints_for(image)
    rows = resolve(names(IMAGES_DIR / image / "requirements.txt"), [constraints, BUILD_LOCK],
                   work)
    head = [f"# images/{image}/requirements.lock: generated by `make image-locks` "
            "(scripts/lock_images.py); do not edit.",
            f"# Every package of images/{image}/requirements.txt, transitively, for CPython 3.11 "
            "on manylinux x86_64,",
            "# with the sha256 of the file pip installs there (pip install --require-hashes).",
            f"{CONSTRAINTS_PREFIX}{_rel(constraints)}"]
    return "\n".join(head + [f"{n}=={v} --hash=sha256:{h}" for n, v, h in rows]) + "\n"


DEPENDENCIES_HEADER = "# what they depend on, at requirements.lock's versions (generated)"


def build_lock_text(work: Path) -> str:
    """requirements-build.lock with the sha256 of each pinned build tool; its comments and
    versions stay as they are (the versions of the dev .venv). What they depend on (wheel needs
    packaging) is appended at requirements.lock's version: --require-hashes wants the whole
    closure."""
    own = BUILD_LOCK.read_text().split(DEPENDENCIES_HEADER)[0]  # the tools, without the
    tools = exact_pins(BUILD_LOCK, own)                          # generated dependencies
    rows = {n: (v, h) for n, v, h in resolve([f"{n}=={v}" for n, v in tools.items()],
                                              [ROOT_LOCK], work)}
    lines = []
    for raw in own.splitlines():
        line = raw.split("#")[0].split(" --")[0].strip()
        if not line:
            lines.append(raw)
            continue
        name = line.split("==")[0].strip().lower()
        version, digest = rows[name]
        lines.append(f"{name}=={version} --hash=sha256:{digest}")
    extra = sorted(set(rows) - set(tools))
    if extra:
        lines.append(DEPENDENCIES_HEADER)
        lines += [f"{n}=={rows[n][0]} --hash=sha256:{rows[n][1]}" for n in extra]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("images", nargs="*", help="stage images (default: all)")
    parser.add_argument("--check", action="store_true",
                        help="change nothing; exit 1 when a lock differs from a fresh one")
    args = parser.parse_args(argv)
    try:
        check_interpreter()
        unknown = sorted(set(args.images) - set(stage_images()))
        if unknown:
            raise LockError(f"no image {', '.join(unknown)} (images: {', '.join(stage_images())})")
        stale = []
        with tempfile.TemporaryDirectory() as tmp:
            work = Path(tmp)
            targets = [(BUILD_LOCK, lambda: build_lock_text(work))] if not args.images else []
            targets += [(IMAGES_DIR / i / "requirements.lock",
                         lambda i=i: image_lock_text(i, work))
                        for i in (args.images or stage_images())]
            for path, make in targets:
                text = make()
                if path.exists() and path.read_text() == text:
                    continue
                stale.append(_rel(path))
                if not args.check:
                    path.write_text(text)
                    print(f"wrote {_rel(path)}")
    except LockError as exc:
        print(f"lock_images: {exc}", file=sys.stderr)
        return 2
    if args.check and stale:
        print(f"lock_images: stale: {', '.join(stale)} (run make image-locks)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
