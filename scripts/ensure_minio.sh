#!/usr/bin/env bash
# Build the pinned MinIO server used by the storage tests (tests/conftest.py: minio_server).
#
#   scripts/ensure_minio.sh          # prints the binary's path; ~3-5 min the first time, instant after
#   scripts/ensure_minio.sh --path   # only prints where the binary goes (the test fixture asks this)
#
# Idempotent: skips the build when the binary already exists. Needs Go (>= 1.24) on PATH.
# The binary lands in ${SEMISUP_CACHE:-$HOME/.cache/semisup}/bin/minio-<date of the pin>;
# the tests look there unless SEMISUP_MINIO_BIN points elsewhere.
set -euo pipefail

MINIO_VERSION="v0.0.0-20260212201848-7aac2a2c5b7c"   # the one pin; bump here only

cache="${SEMISUP_CACHE:-$HOME/.cache/semisup}"
bin_dir="$cache/bin"
stamp="$(echo "$MINIO_VERSION" | cut -d- -f2)"      # 20260212201848
target="$bin_dir/minio-$stamp"

if [[ "${1:-}" == "--path" ]]; then
  echo "$target"
  exit 0
fi

if [[ -x "$target" ]]; then
  echo "$target"
  exit 0
fi

command -v go >/dev/null || { echo "ensure_minio.sh: 'go' not found on PATH; install Go >= 1.24" >&2; exit 1; }

mkdir -p "$bin_dir"
build_dir="$(mktemp -d "$bin_dir/.build-XXXXXX")"
trap 'rm -rf "$build_dir"' EXIT

echo "ensure_minio.sh: building github.com/minio/minio@$MINIO_VERSION (a few minutes)" >&2
GOBIN="$build_dir" go install "github.com/minio/minio@$MINIO_VERSION" >&2
# Rename into place only once the build succeeded, so a half-built binary is never found.
mv "$build_dir/minio" "$target"
echo "$target"
