#!/usr/bin/env bash
# Everything the tests need on top of scripts/setup.sh: the Go-built MinIO server and kustomize.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
scripts/ensure_minio.sh >/dev/null
scripts/ensure_kustomize.sh >/dev/null
