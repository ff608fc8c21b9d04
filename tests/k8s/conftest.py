"""Real schemas from the upstream Go modules, fetched with `go mod download` (pinned, cached in
the Go module cache; nothing is copied into the repo)."""

import json
import os
import subprocess

import pytest
import yaml

TRAINING_OPERATOR = ("github.com/kubeflow/training-operator", "v1.9.2")


def go_module_dir(module: str, version: str) -> str:
    """The module's directory in the Go module cache (downloaded once, then offline)."""
    proc = subprocess.run(["go", "mod", "download", "-json", f"{module}@{version}"],
                          capture_output=True, text=True, timeout=600, cwd="/",
                          env=dict(os.environ, GOFLAGS="-mod=mod"))
    info = json.loads(proc.stdout or "{}")
    if proc.returncode != 0 or "Dir" not in info:
        raise RuntimeError(f"go mod download {module}@{version} failed: "
                           f"{info.get('Error') or proc.stderr.strip()}")
    return info["Dir"]


def strict(schema):
    """CRD openAPIV3Schema -> a JSON Schema that rejects unknown fields, as the API server's
    strict field validation does (CRDs prune them otherwise, silently)."""
    if isinstance(schema, dict):
        out = {k: strict(v) for k, v in schema.items()}
        if ("properties" in out and "additionalProperties" not in out
                and not out.get("x-kubernetes-preserve-unknown-fields")):
            out["additionalProperties"] = False
        return out
    if isinstance(schema, list):
        return [strict(s) for s in schema]
    return schema


def crd_schema(path: str, version: str = "v1") -> dict:
    crd = yaml.safe_load(open(path))
    for v in crd["spec"]["versions"]:
        if v["name"] == version:
            return strict(v["schema"]["openAPIV3Schema"])
    raise KeyError(f"{path} has no version {version}")


@pytest.fixture(scope="session")
def pytorchjob_schema() -> dict:
    root = go_module_dir(*TRAINING_OPERATOR)
    return crd_schema(os.path.join(root, "manifests", "base", "crds", "kubeflow.org_pytorchjobs.yaml"))
