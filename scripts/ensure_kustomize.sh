#!/usr/bin/env bash
# The pinned kustomize that renders k8s/overlays in the tests (tests/k8s/conftest.py).
#   scripts/ensure_kustomize.sh [--path]     # ~1-2 min the first time, instant after
set -euo pipefail
KUSTOMIZE_MODULE="sigs.k8s.io/kustomize/kustomize/v5@v5.8.1"   # the one pin; bump here only
exec "$(dirname "$0")/go_bin.sh" kustomize "$KUSTOMIZE_MODULE" "$@"
