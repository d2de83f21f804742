#!/usr/bin/env bash
# The embedded classification, segmentation, detection and generation defaults with the release's dynamic linear
# predictor and with another one (default: normalized), one after the other; prints each run's last validation
# line (generation: the judge's verdict on the guided samples).
# Usage, from the repository root (EPOCHS=1 shortens every run to one epoch; unset: the recipes' epochs;
# TASKS picks some of "cls seg det gen"; SEED replaces the recipes' seed, 0):
#   [EPOCHS=1] [TASKS="cls gen"] [SEED=1] bash benchmarks/defaults_predictor.sh [PREDICTOR] [OUT_DIR]
set -euo pipefail
predictor=${1:-normalized}
out=${2:-/tmp/defaults-predictor}
tasks=${TASKS:-cls seg det gen}
mkdir -p "$out"
extra=()  # flags added to every run
if [ -n "${EPOCHS:-}" ]; then extra=(--epochs "$EPOCHS"); fi
if [ -n "${SEED:-}" ]; then extra+=(--seed "$SEED"); fi
declare -A command=([cls]="train" [seg]="segment train" [det]="detect train" [gen]="dit train")
for linear in bilateral "$predictor"; do
  for task in $tasks; do
    # --model-kwargs adds the predictor to the recipe's sizes (configs/*synthetic.yaml).
    # shellcheck disable=SC2086
    weightformer ${command[$task]} "${extra[@]}" --progress false --output-dir "$out/$linear" \
      --model-kwargs "{linear_predictor: $linear}" > "$out/$linear-$task.txt" 2>&1
  done
done
for task in $tasks; do
  for linear in bilateral "$predictor"; do
    echo "$task $linear: $(grep -E 'val_|Done|Judged' "$out/$linear-$task.txt" | tail -n 1)"
  done
done
