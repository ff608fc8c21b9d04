#!/usr/bin/env bash
# Fail early, in one line, when a setup step would run out of disk.
#
#   scripts/need_disk.sh GB PATH WHAT
#
# PATH is where the step writes (the nearest existing parent is measured; ".venv-parent"
# means the repository). Exit 1 with "setup: WHAT needs GB GB free on <mount>, <n> GB free"
# when there is less; silent otherwise. SEMISUP_SKIP_DISK_CHECK=1 skips the check.
set -euo pipefail
need="$1"; path="$2"; what="$3"
[[ "${SEMISUP_SKIP_DISK_CHECK:-}" == 1 ]] && exit 0
[[ "$path" == .venv-parent ]] && path="$(cd "$(dirname "$0")/.." && pwd)"
while [[ ! -e "$path" ]]; do path="$(dirname "$path")"; done
read -r avail mount < <(df -Pk "$path" | awk 'NR==2 { print $4, $6 }')
have=$(( avail / 1024 / 1024 ))
if (( avail < need * 1024 * 1024 )); then
  echo "setup: $what needs $need GB free on $mount, $have GB free" >&2
  exit 1
fi
