#!/usr/bin/env bash
# Everything the tests need on top of scripts/setup.sh: the Go-built MinIO server, kustomize
# and the loopback Kubernetes control plane of tests/cluster (10-14 min the first time, cached).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh

built() {
  scripts/ensure_minio.sh --path; scripts/ensure_kustomize.sh --path; scripts/ensure_k8s_env.sh --path
}
missing=0
for b in $(built); do [[ -x "$b" ]] || missing=1; done
if (( missing )); then
  # A cold build fills Go's module cache (2.4 GB) and build cache (5.4 GB) beside the
  # binaries (0.6 GB). Under CI=true both caches are private to this run and removed after
  # it, so the tests keep that disk; elsewhere they are the user's own Go caches.
  scripts/need_disk.sh 9 "${SEMISUP_CACHE:-$HOME/.cache/semisup}" "building the test servers (Go caches)"
  if [[ "${CI:-}" == true ]]; then
    gotmp="$(mktemp -d "${TMPDIR:-/tmp}/semisup-go-XXXXXX")"
    trap 'chmod -R u+w "$gotmp" 2>/dev/null; rm -rf "$gotmp"' EXIT
    export GOCACHE="$gotmp/build" GOMODCACHE="$gotmp/mod"
  fi
fi
scripts/ensure_minio.sh >/dev/null
scripts/ensure_kustomize.sh >/dev/null
scripts/ensure_k8s_env.sh >/dev/null
