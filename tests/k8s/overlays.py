"""k8s/ overlays rendered by the pinned kustomize (scripts/ensure_kustomize.sh), and the
deliberate breakages both the schema tests (tests/k8s) and the API server (tests/cluster) must
refuse."""

from __future__ import annotations

import os
import subprocess

import pytest
import yaml

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OVERLAYS = sorted(os.listdir(os.path.join(REPO, "k8s", "overlays")))
NAMESPACE = "semisup"  # k8s/base/kustomization.yaml


def kustomize_path() -> str:
    path = subprocess.run([os.path.join(REPO, "scripts", "ensure_kustomize.sh"), "--path"],
                          capture_output=True, text=True, check=True).stdout.strip()
    if not os.access(path, os.X_OK):
        pytest.fail(f"kustomize not built at {path}: run scripts/ensure_kustomize.sh")
    return path


def build(kustomize: str, overlay: str) -> list[dict]:
    proc = subprocess.run([kustomize, "build", os.path.join(REPO, "k8s", "overlays", overlay)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return [d for d in yaml.safe_load_all(proc.stdout) if d]


def of(docs: list[dict], kind: str) -> list[dict]:
    return [d for d in docs if d["kind"] == kind]


def _break_statefulset_type(docs):
    of(docs, "StatefulSet")[0]["spec"]["replicas"] = "one"


def _break_container_field(docs):
    of(docs, "Job")[0]["spec"]["template"]["spec"]["containers"][0]["imagePullPolicyy"] = "Always"


def _break_networkpolicy(docs):
    of(docs, "NetworkPolicy")[0]["spec"]["policyTypes"] = "Ingress"


def _break_pytorchjob_field(docs):
    of(docs, "PyTorchJob")[0]["spec"]["pytorchReplicaSpecs"]["Master"]["replica"] = 1


def _break_pytorchjob_type(docs):
    of(docs, "PyTorchJob")[0]["spec"]["runPolicy"]["backoffLimit"] = "3"


BREAKAGES = [_break_statefulset_type, _break_container_field, _break_networkpolicy,
             _break_pytorchjob_field, _break_pytorchjob_type]
