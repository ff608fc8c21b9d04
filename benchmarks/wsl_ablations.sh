#!/bin/bash
# WSL ablations on seed 0 (docs/wsl.md, "Results": the ablation table), after the three seeds
# of configs/wsl_demo.yaml (runs/wsl/seed-0 must exist): each ablation its own out, sharing the
# imported data and seed 0's baseline (copied); dedup reruns (its embeddings name the data
# path); no teacher/student variants. ~4-6 min each alone on 2 cores.
set -u
cd "$(dirname "$0")/.."
run() {  # name, then --set overrides
  name=$1; shift
  mkdir -p runs/$name/seed-0
  ln -sfn ../wsl/data runs/$name/data
  for d in models/baseline eval/baseline; do
    [ -e runs/$name/seed-0/$d ] || { mkdir -p runs/$name/seed-0/$(dirname $d); cp -r runs/wsl/seed-0/$d runs/$name/seed-0/$d; }
  done
  echo "$name start $(date -u +%T)" >> runs/wsl-times.txt
  .venv/bin/semisup stage wsl-run -c configs/wsl_demo.yaml --set out=runs/$name --set semi_weak=false "$@" > runs/$name.log 2>&1
  echo "$name end $(date -u +%T) rc $?" >> runs/wsl-times.txt
}
run wsl-top --set synsets.vocabulary=top
run wsl-top-natural --set synsets.vocabulary=top --set synsets.power=1.0
run wsl-noise0 --set tags.noise_rate=0.0
run wsl-noise60 --set tags.noise_rate=0.6
