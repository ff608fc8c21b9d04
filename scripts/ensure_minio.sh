#!/usr/bin/env bash
# The pinned MinIO server used by the storage tests (tests/conftest.py: minio_server).
#
#   scripts/ensure_minio.sh          # prints the binary's path; ~3-5 min the first time, instant after
#   scripts/ensure_minio.sh --path   # only prints where the binary goes (the test fixture asks this)
#
# The tests look there unless SEMISUP_MINIO_BIN points elsewhere.
set -euo pipefail
MINIO_MODULE="github.com/minio/minio@v0.0.0-20260212201848-7aac2a2c5b7c"   # the one pin; bump here only
exec "$(dirname "$0")/go_bin.sh" minio "$MINIO_MODULE" "$@"
