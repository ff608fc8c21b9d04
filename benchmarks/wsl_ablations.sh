#!/bin/bash
# WSL ablations (docs/wsl.md, "Results": the ablation table) for seed $SEED (default 0), after
# the three seeds of configs/wsl_demo.yaml (runs/wsl/seed-$SEED must exist): each ablation its
# own out, sharing the imported data and that seed's baseline (copied); dedup reruns (its
# embeddings name the data path); no teacher/student variants. ~4-6 min each alone on 2
# cores. Extra arguments go to every run (e.g. --set pretrain.threads=1).
#   benchmarks/wsl_ablations.sh; SEED=1 benchmarks/wsl_ablations.sh; SEED=2 ...
set -u
SEED=${SEED:-0}
EXTRA=("$@")
cd "$(dirname "$0")/.."
run() {  # name, then --set overrides
  name=$1; shift
  mkdir -p runs/$name/seed-$SEED
  ln -sfn ../wsl/data runs/$name/data
  for d in models/baseline eval/baseline; do
    [ -e runs/$name/seed-$SEED/$d ] || { mkdir -p runs/$name/seed-$SEED/$(dirname $d); cp -r runs/wsl/seed-$SEED/$d runs/$name/seed-$SEED/$d; }
  done
  echo "$name seed $SEED start $(date -u +%T)" >> runs/wsl-times.txt
  .venv/bin/semisup stage wsl-run -c configs/wsl_demo.yaml --set out=runs/$name --set seed=$SEED --set semi_weak=false "$@" "${EXTRA[@]}" > runs/$name-s$SEED.log 2>&1
  rc=$?; echo "$name seed $SEED end $(date -u +%T) rc $rc" >> runs/wsl-times.txt
}
run wsl-top --set synsets.vocabulary=top
run wsl-top-natural --set synsets.vocabulary=top --set synsets.power=1.0
run wsl-noise0 --set tags.noise_rate=0.0
run wsl-noise60 --set tags.noise_rate=0.6
