"""Issue 22: no compiled pipeline, manifest, image or README example carries a credential.
Credentials reach pods from the Secret semisup-minio (envFrom / secretKeyRef) and users from
their environment; a literal anywhere in what is committed or shipped fails this test."""

from __future__ import annotations

import glob
import os
import re

import pytest
import yaml

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHIPPED = ["README.md", "docs/**/*.md", "pipelines/*.yaml", "k8s/**/*.yaml", "k8s/**/*.md",
           "images/**/Dockerfile", "images/**/*.md", "configs/**/*.yaml", "components/**/*.py",
           "pipelines/*.py", "semisup/*.py", "Makefile", "scripts/*.sh", ".ci/*"]
SECRET_VARS = r"(?:MINIO_ROOT_PASSWORD|MINIO_SECRET_KEY|AWS_SECRET_ACCESS_KEY|AWS_SESSION_TOKEN)"
# a value that names where the secret comes from instead of being it
REFERENCE = re.compile(r"""^["']?(\$|\.\.\.|<|\{\{|secretKeyRef|valueFrom|\S*_(?:PASSWORD|KEY)["']?$)""")
PATTERNS = {
    "an AWS access key id": re.compile(r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b"),
    "a private key": re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
    "MinIO's default credentials": re.compile(r"\bminioadmin\b"),
    "a literal secret": re.compile(SECRET_VARS + r"""\s*[=:]\s*(?P<value>["']?[^\s"',;)]+)"""),
}
SECRET_NAME = re.compile(r"PASSWORD|SECRET|TOKEN|ACCESS_KEY", re.I)


def leaks(text: str) -> list[str]:
    found = []
    for what, pattern in PATTERNS.items():
        for m in pattern.finditer(text):
            if what == "a literal secret" and REFERENCE.match(m.group("value")):
                continue
            line = text.count("\n", 0, m.start()) + 1
            found.append(f"line {line}: {what} ({m.group(0)[:40]})")
    return found


def env_literals(doc) -> list[str]:
    """Kubernetes env entries whose name says secret and whose value is a literal."""
    out = []
    if isinstance(doc, dict):
        if isinstance(doc.get("name"), str) and SECRET_NAME.search(doc["name"]) and \
                isinstance(doc.get("value"), str) and doc["value"]:
            out.append(f"env {doc['name']} has a literal value")
        for v in doc.values():
            out += env_literals(v)
    elif isinstance(doc, list):
        for v in doc:
            out += env_literals(v)
    return out


def shipped_files() -> list[str]:
    files = {f for g in SHIPPED for f in glob.glob(os.path.join(REPO, g), recursive=True)}
    return sorted(f for f in files if os.path.isfile(f))


def test_the_scanner_finds_what_it_looks_for():
    assert leaks("export AWS_SECRET_ACCESS_KEY=wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY")
    assert leaks("MINIO_ROOT_PASSWORD: hunter2hunter2")
    assert leaks("key: AKIAIOSFODNN7EXAMPLE") and leaks("mc alias set s http://x minioadmin minioadmin")
    assert leaks("-----BEGIN RSA PRIVATE KEY-----")
    assert not leaks('MINIO_ROOT_PASSWORD="$(openssl rand -hex 24)"')
    assert not leaks("MINIO_ROOT_PASSWORD=... and AWS_SECRET_ACCESS_KEY/MINIO_SECRET_KEY")
    assert not leaks("secretKey: MINIO_ROOT_PASSWORD")
    assert env_literals({"env": [{"name": "MINIO_ROOT_PASSWORD", "value": "x"}]})
    assert not env_literals({"env": [{"name": "MINIO_ROOT_PASSWORD",
                                      "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}]})


def test_nothing_shipped_carries_a_credential():
    files = shipped_files()
    assert any(f.endswith("k8s/pipelines/teacher_student.yaml") for f in files)
    assert any(f.endswith("images/train/Dockerfile") for f in files)
    problems = []
    for path in files:
        text = open(path, encoding="utf-8", errors="replace").read()
        rel = os.path.relpath(path, REPO)
        problems += [f"{rel}: {p}" for p in leaks(text)]
        if path.endswith(".yaml"):
            try:
                docs = list(yaml.safe_load_all(text))
            except yaml.YAMLError:
                continue  # templates (k8s/operator) are not YAML until the operator fills them
            problems += [f"{rel}: {p}" for d in docs for p in env_literals(d)]
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("overlay", sorted(os.listdir(os.path.join(REPO, "k8s", "overlays"))))
def test_no_rendered_overlay_carries_a_credential(overlay):
    from tests.k8s.overlays import build, kustomize_path
    docs = build(kustomize_path(), overlay)
    assert not [d for d in docs if d["kind"] == "Secret"]  # the Secret is made by hand, never in Git
    assert not [p for d in docs for p in env_literals(d)]
    assert not leaks(yaml.safe_dump_all(docs))
