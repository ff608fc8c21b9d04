#!/usr/bin/env bash
# Build a pinned Go binary once and cache it outside the repo (used for the test servers/tools).
#
#   scripts/go_bin.sh NAME MODULE@VERSION [--path]
#
# Prints the binary's path: ${SEMISUP_CACHE:-$HOME/.cache/semisup}/bin/NAME-<version>.
# Idempotent (skips the build when the binary exists); --path only prints where it goes.
# The binary is renamed into place only after a successful build, so a half-built one is
# never found. Needs Go (>= 1.24) on PATH.
set -euo pipefail

name="$1"; module="$2"; version="${module##*@}"
cache="${SEMISUP_CACHE:-$HOME/.cache/semisup}"
target="$cache/bin/$name-$version"
if [[ "${3:-}" == "--path" || -x "$target" ]]; then
  echo "$target"
  exit 0
fi
command -v go >/dev/null || { echo "go_bin.sh: 'go' not found on PATH; install Go >= 1.24" >&2; exit 1; }
mkdir -p "$cache/bin"
build_dir="$(mktemp -d "$cache/bin/.build-XXXXXX")"
trap 'rm -rf "$build_dir"' EXIT
echo "go_bin.sh: building $module (a few minutes the first time)" >&2
GOBIN="$build_dir" GOFLAGS= go install "$module" >&2
built=("$build_dir"/*)
mv "${built[0]}" "$target"
echo "$target"
