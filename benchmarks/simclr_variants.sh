#!/bin/bash
# SimCLRv2's remaining comparisons (issue 19; docs/simclr.md "Results"), from ONE width-16
# pre-training per seed, as the paper fine-tunes one pre-trained network on 1% and on 10% of
# the labels and distils the same teacher into every student:
#   runs/simclr/seed-N           the demo config at 10 labels a class (pre-training, fine-tuning,
#                                self-distillation): `semisup stage simclr-run`, resumable
#   runs/simclr-b2s/seed-N       big -> small: the width-16 fine-tuned teacher of runs/simclr
#                                distilled into a width-8 student (distill.model_kwargs.width=8);
#                                its baseline, pre-training and fine-tunings are runs/simclr's (copied)
#   runs/simclr-l50/seed-N       50 labels a class: runs/simclr's pre-training (copied: it saw the
#                                same images, labelled + pool, labels unused), then a fresh
#                                baseline, fine-tunings and distillation on the 50-label split
# Seeds in $SEEDS (default "0 1 2"), one at a time (one heavy job at a time on 2 cores: two side
# by side ran 5-30x slower each); a run whose report exists is skipped, a killed one resumes.
# Extra arguments go to every run (e.g. --set pretrain.threads=1 beside another one-thread job).
#   benchmarks/simclr_variants.sh
#   .venv/bin/python benchmarks/demo_seeds.py runs/simclr-b2s     # and runs/simclr, runs/simclr-l50
set -u
SEEDS=${SEEDS:-0 1 2}
EXTRA=("$@")
cd "$(dirname "$0")/.."
log=runs/simclr-variants-times.txt
mkdir -p runs
step() {  # name, seed, then arguments of simclr-run
  name=$1; seed=$2; shift 2
  [ -e runs/$name/seed-$seed/report/metrics.json ] && return 0
  echo "$name seed $seed start $(date -u +%T)" >> $log
  .venv/bin/semisup stage simclr-run -c configs/simclr_demo.yaml --set out=runs/$name \
      --set seed=$seed "$@" "${EXTRA[@]}" > runs/$name-s$seed.log 2>&1
  rc=$?; echo "$name seed $seed end $(date -u +%T) rc $rc" >> $log
  return $rc
}
share() {  # name, seed, then the model dirs copied from runs/simclr/seed-N
  name=$1; seed=$2; shift 2
  mkdir -p runs/$name/seed-$seed/models
  [ -e runs/$name/data ] || ln -sfn ../simclr/data runs/$name/data
  for m in "$@"; do
    [ -e runs/$name/seed-$seed/models/$m ] || cp -r runs/simclr/seed-$seed/models/$m runs/$name/seed-$seed/models/$m
  done
}
for seed in $SEEDS; do
  step simclr $seed || continue
  share simclr-b2s $seed baseline pretrain finetune finetune-encoder
  step simclr-b2s $seed --set distill.model_kwargs.width=8
  share simclr-l50 $seed pretrain
  step simclr-l50 $seed --set labels_per_class=50
done
