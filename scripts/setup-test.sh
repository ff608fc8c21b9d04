#!/usr/bin/env bash
# Everything the tests need on top of scripts/setup.sh: the Go-built MinIO server, kustomize
# and the loopback Kubernetes control plane of tests/cluster (10-14 min the first time, cached).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
scripts/ensure_minio.sh >/dev/null
scripts/ensure_kustomize.sh >/dev/null
scripts/ensure_k8s_env.sh >/dev/null
