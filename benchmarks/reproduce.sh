#!/usr/bin/env bash
# The paper's findings at small scale: three seeds, two single-threaded processes at a time.
# ~1 h 50 min on 2 cores (prepare 15 min, then ~5-8 min per student). Resumable: rerun after a kill and finished steps are skipped.
set -euo pipefail
cd "$(dirname "$0")/.."
CFG=${1:-configs/repro/paper_findings.yaml}
PY=.venv/bin/python
R=benchmarks/reproduce.py
mkdir -p runs/repro
start=$(date +%s)
$PY $R prepare --config "$CFG" --seed 0 --seed 2 > runs/repro/prepare-0.log 2>&1 &
p=$!
$PY $R prepare --config "$CFG" --seed 1 > runs/repro/prepare-1.log 2>&1
wait $p
echo "prepared in $(( $(date +%s) - start )) s"
$PY $R run --config "$CFG" --worker 0 --workers 2 > runs/repro/worker-0.log 2>&1 &
p=$!
$PY $R run --config "$CFG" --worker 1 --workers 2 > runs/repro/worker-1.log 2>&1
wait $p
echo "all variants in $(( $(date +%s) - start )) s"
$PY $R report --config "$CFG" > benchmarks/results/paper_findings.md
cat benchmarks/results/paper_findings.md
