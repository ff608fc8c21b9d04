#!/bin/bash
# Issue 16: dedup's copy verifier over three seeds (docs/dedup.md "The copy verifier").
# For each seed: the copy descriptor (benchmarks/copydet_probe.py, ~37 min alone), the pool
# embedded by it, the verifier's pairs (semisup stage verify-pairs), the verifier trained by the
# one loop (semisup stage train, ~8 min alone), then
#   - the descriptor protocol (benchmarks/copydet_verify.py: threshold frozen on 10k held-out
#     pool images) -> runs/copy-verifier/report-seed<N>.json;
#   - with STAGE=1, the dedup stage itself on the 60k pool and the test set, calibrated
#     (calibration.json, summary.json) -> runs/copy-verifier/seed<N>/dedup.
# Resumable: every step skips what is finished (training resumes from its checkpoint).
# THREADS=1: one torch thread per training. Run one chain at a time: two 2-thread trainings side
# by side on 2 cores ran 5-30x slower each (seed 2's verifier: 71 min beside the descriptor,
# 0.3 s a step alone).
# Usage: benchmarks/copy_verifier_seeds.sh [SEED ...]   (default 2 0 1); log: runs/copy-verifier/times.txt
set -euo pipefail
cd "$(dirname "$0")/.."
S=.venv/bin/semisup
PY=.venv/bin/python
C=configs/copy_verifier.yaml
mkdir -p runs/copy-verifier
log() { echo "$* $(date +%T)" >> runs/copy-verifier/times.txt; }
for seed in "${@:-2 0 1}"; do
  for s in $seed; do
    run=runs/copydet/run-seed$s
    dir=runs/copy-verifier/seed$s
    if [ "$s" = 2 ]; then pairs=runs/copy-verifier/pairs; model=runs/copy-verifier/model
    else pairs=$dir/pairs; model=$dir/model; fi
    if [ ! -f runs/copydet/report-seed$s.json ]; then
      log "seed $s descriptor start"
      $PY benchmarks/copydet_probe.py --out runs/copydet --seed $s --epochs 6 --memory 8192 \
        --align 4 > runs/copydet-seed$s.log 2>&1
      log "seed $s descriptor end"
    fi
    mkdir -p $dir
    emb=runs/copydet/emb$s-train50k
    $S stage embed -c $C --section embed_pool --set model=$run --set out=$emb > $dir.embed.log 2>&1
    $S stage verify-pairs -c $C --section pairs --set embeddings=$emb --set out=$pairs \
      --set seed=$s > $dir.pairs.log 2>&1
    if [ ! -f $model/model.safetensors ]; then
      log "seed $s verifier start"
      $S stage train -c $C --section train --set data.train=$pairs --set out=$model \
        --set seed=$s ${THREADS:+--set threads=$THREADS} > $dir.train.log 2>&1
      log "seed $s verifier end"
    fi
    if [ ! -f runs/copy-verifier/report-seed$s.json ]; then
      log "seed $s protocol start"
      $PY benchmarks/copydet_verify.py --run $run --verifier $model --seed $s \
        --out runs/copy-verifier/report-seed$s.json > $dir.protocol.log 2>&1
      log "seed $s protocol end"
    fi
    if [ "${STAGE:-0}" = 1 ] && [ ! -f $dir/dedup/summary.json ]; then
      log "seed $s stage start"
      for part in train test; do
        $S stage embed --set dataset=runs/fmnist/$part --set model=$run \
          --set out=$dir/emb-$part > $dir.embed-$part.log 2>&1
      done
      $S stage dedup -c $C --section dedup --set pool=$dir/emb-train \
        --set "eval_sets=[$dir/emb-test]" --set out=$dir/dedup --set verifier=$model \
        --set seed=$s > $dir.dedup.log 2>&1
      log "seed $s stage end"
    fi
  done
done
