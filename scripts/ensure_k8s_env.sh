#!/usr/bin/env bash
# The pinned binaries of the loopback Kubernetes test cluster (scripts/k8s_env.py, tests/cluster):
# etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kwok and the Kubeflow training
# operator, all built from Go modules and cached outside the repo.
#
#   scripts/ensure_k8s_env.sh          # builds what is missing (10-14 min cold on 2 cores), prints the paths
#   scripts/ensure_k8s_env.sh --path   # only prints where the binaries go
#   scripts/ensure_k8s_env.sh --kubectl  # also a kubectl of the same release (for people: ~3 min more)
#
# stdout is one path per line, in this order: etcd, kube-apiserver, kube-controller-manager,
# kube-scheduler, kwok, training-operator (then kubectl, with --kubectl); each is ${SEMISUP_CACHE:-$HOME/.cache/semisup}/bin/NAME-<version>.
# Build logs go to stderr. Idempotent: a binary that exists is never rebuilt, and each one is
# renamed into place only after its build succeeded. Builds run one after another (2-core
# machines), under a lock so two callers never build the same thing at once. Needs Go >= 1.24.
#
# Pins, one place each:
#   Kubernetes v1.33.x  scripts/k8s-env/go.mod       (k8s.io/kubernetes + the staging modules)
#   etcd v3.5.x         scripts/k8s-env/etcd/go.mod  (the version kubeadm pairs with 1.33)
#   kwok, operator      KWOK_MODULE / OPERATOR_MODULE below
set -euo pipefail

KWOK_MODULE="sigs.k8s.io/kwok/cmd/kwok@v0.7.0"
OPERATOR_MODULE="github.com/kubeflow/training-operator/cmd/training-operator.v1@v1.9.2"

here="$(cd "$(dirname "$0")" && pwd)"
k8s_mod="$here/k8s-env"
etcd_mod="$here/k8s-env/etcd"
cache="${SEMISUP_CACHE:-$HOME/.cache/semisup}"
bin="$cache/bin"

# The version a go.mod requires of a module (the pins live in go.mod, not here).
mod_version() { awk -v m="$2" '$1 == m { print $2; exit }' "$1/go.mod"; }

k8s_version="$(mod_version "$k8s_mod" k8s.io/kubernetes)"
etcd_version="$(mod_version "$etcd_mod" go.etcd.io/etcd/server/v3)"
[[ -n "$k8s_version" && -n "$etcd_version" ]] || {
  echo "ensure_k8s_env.sh: cannot read the pins from $k8s_mod/go.mod and $etcd_mod/go.mod" >&2; exit 1; }

# name | target path | how to build it
targets=(
  "etcd|$bin/etcd-$etcd_version"
  "kube-apiserver|$bin/kube-apiserver-$k8s_version"
  "kube-controller-manager|$bin/kube-controller-manager-$k8s_version"
  "kube-scheduler|$bin/kube-scheduler-$k8s_version"
  "kwok|$bin/kwok-${KWOK_MODULE##*@}"
  "training-operator|$bin/training-operator-${OPERATOR_MODULE##*@}"
)

if [[ " $* " == *" --kubectl "* ]]; then
  targets+=("kubectl|$bin/kubectl-$k8s_version")
fi

print_paths() { local t; for t in "${targets[@]}"; do echo "${t#*|}"; done; }

all_built() {
  local t
  for t in "${targets[@]}"; do [[ -x "${t#*|}" ]] || return 1; done
}

if [[ " $* " == *" --path "* ]] || all_built; then
  print_paths
  exit 0
fi

command -v go >/dev/null || { echo "ensure_k8s_env.sh: 'go' not found on PATH; install Go >= 1.24" >&2; exit 1; }
mkdir -p "$bin"
exec 9>"$bin/.k8s-env.lock"
flock 9  # another caller may be building; wait for it, then build only what is still missing

# -trimpath and -s -w (no symbol tables or DWARF) keep the binaries small: ~430 MB for all six.
export GOFLAGS="-trimpath -buildvcs=false -mod=readonly" GOWORK=off
ldflags="-s -w"
# What hack/lib/version.sh stamps into an upstream build, so /version reports the real release.
k8s_ldflags="$ldflags"
minor="${k8s_version#v1.}"; minor="${minor%%.*}"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  k8s_ldflags+=" -X $pkg.gitVersion=$k8s_version -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
  k8s_ldflags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
done

build_dir=""
trap '[[ -z "$build_dir" ]] || rm -rf "$build_dir"' EXIT

build_one() {  # name target
  local name="$1" target="$2" dir start
  dir="$(mktemp -d "$bin/.build-XXXXXX")"
  build_dir="$dir"
  start=$SECONDS
  echo "ensure_k8s_env.sh: building $name -> $target" >&2
  case "$name" in
    etcd)
      (cd "$etcd_mod" && go build -ldflags="$ldflags" -o "$dir/out" go.etcd.io/etcd/server/v3) >&2 ;;
    kube-*|kubectl)
      (cd "$k8s_mod" && go build -ldflags="$k8s_ldflags" -o "$dir/out" "k8s.io/kubernetes/cmd/$name") >&2 ;;
    kwok)
      GOBIN="$dir" GOFLAGS="-trimpath" go install -ldflags="$ldflags" "$KWOK_MODULE" >&2
      mv "$dir/kwok" "$dir/out" ;;
    training-operator)
      GOBIN="$dir" GOFLAGS="-trimpath" go install -ldflags="$ldflags" "$OPERATOR_MODULE" >&2
      mv "$dir/training-operator.v1" "$dir/out" ;;
  esac
  mv "$dir/out" "$target"
  rmdir "$dir"
  build_dir=""
  echo "ensure_k8s_env.sh: built $name in $((SECONDS - start)) s" >&2
}

for t in "${targets[@]}"; do
  name="${t%%|*}"; target="${t#*|}"
  [[ -x "$target" ]] || build_one "$name" "$target"
done
print_paths
