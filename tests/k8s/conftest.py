"""Real schemas from the upstream Go modules, fetched with `go mod download` (pinned, cached in
the Go module cache; nothing is copied into the repo). The training operator's release is the
one scripts/ensure_k8s_env.sh pins for the loopback cluster of tests/cluster."""

import os

import pytest
import yaml

from tests.loopback import k8s_env


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
    # the release the loopback cluster runs (scripts/ensure_k8s_env.sh pins it, once)
    root = k8s_env.go_module_dir(k8s_env.OPERATOR_MODULE, k8s_env.operator_version())
    return crd_schema(os.path.join(root, "manifests", "base", "crds", "kubeflow.org_pytorchjobs.yaml"))
