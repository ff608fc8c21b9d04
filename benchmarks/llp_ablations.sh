#!/bin/bash
# LLP's ablations (issue 18; docs/llp.md "Ablations") at 10 labels per class, after the three
# seeds of `semisup stage llp-run -c configs/llp_demo.yaml --set labels_per_class=10
# --set out=runs/llp-l10` (runs/llp-l10/seed-N must exist): each ablation its own out, sharing
# the imported data (linked) and that seed's baseline (copied, so LLP warm-starts from the same
# weights); dedup reruns (~1 min: its embeddings name the data path). One change each from the
# full LLP of configs/llp_demo.yaml: density weighting off (the plain vote of Eq. 5), K = 50,
# and no aggregation loss (L_C on labels and pseudo-labels only). ~15 min each alone on 2 cores.
# Seeds in $SEEDS (default "0 1 2"), each seed's three ablations before the next seed's; a run
# whose report exists is skipped, a killed one resumes. Extra arguments go to every run.
#   benchmarks/llp_ablations.sh
#   .venv/bin/python benchmarks/ablation_table.py --model LLP runs/llp-l10 runs/llp-l10-density-off \
#       runs/llp-l10-k50 runs/llp-l10-no-aggregation
set -u
SEEDS=${SEEDS:-0 1 2}
EXTRA=("$@")
cd "$(dirname "$0")/.."
run() {  # seed, name, then --set overrides
  seed=$1; name=$2; shift 2
  [ -e runs/$name/seed-$seed/report/metrics.json ] && return 0
  mkdir -p runs/$name/seed-$seed
  ln -sfn ../llp-l10/data runs/$name/data
  for d in models/baseline eval/baseline; do
    [ -e runs/$name/seed-$seed/$d ] || { mkdir -p runs/$name/seed-$seed/$(dirname $d); cp -r runs/llp-l10/seed-$seed/$d runs/$name/seed-$seed/$d; }
  done
  echo "$name seed $seed start $(date -u +%T)" >> runs/llp-ablation-times.txt
  .venv/bin/semisup stage llp-run -c configs/llp_demo.yaml --set labels_per_class=10 \
      --set out=runs/$name --set seed=$seed "$@" "${EXTRA[@]}" > runs/$name-s$seed.log 2>&1
  rc=$?; echo "$name seed $seed end $(date -u +%T) rc $rc" >> runs/llp-ablation-times.txt
}
for seed in $SEEDS; do
  run $seed llp-l10-density-off --set llp.llp.density=off
  run $seed llp-l10-k50 --set llp.llp.k=50
  run $seed llp-l10-no-aggregation --set llp.llp.aggregation_weight=0
done
