#!/usr/bin/env bash
# The embedded classification, segmentation and detection defaults with the release's dynamic linear predictor
# and with another one (default: normalized), one after the other; prints each run's last validation line.
# Usage, from the repository root (EPOCHS=1 shortens every run to one epoch; unset: the recipes' epochs):
#   [EPOCHS=1] bash benchmarks/defaults_predictor.sh [PREDICTOR] [OUT_DIR]
set -euo pipefail
predictor=${1:-normalized}
out=${2:-/tmp/defaults-predictor}
mkdir -p "$out"
epochs=()
if [ -n "${EPOCHS:-}" ]; then epochs=(--epochs "$EPOCHS"); fi
for linear in bilateral "$predictor"; do
  # --model-kwargs replaces the recipe's dict: the recipes' own sizes (configs/*synthetic.yaml) are repeated here.
  weightformer classify train "${epochs[@]}" --progress false --output-dir "$out/$linear" \
    --model-kwargs "{embed_dim: 64, depth: 6, patch_size: 4, linear_predictor: $linear}" > "$out/$linear-cls.txt" 2>&1
  weightformer segment train "${epochs[@]}" --progress false --output-dir "$out/$linear" \
    --model-kwargs "{embed_dim: 64, depth: 6, linear_predictor: $linear}" > "$out/$linear-seg.txt" 2>&1
  weightformer detect train "${epochs[@]}" --progress false --output-dir "$out/$linear" \
    --model-kwargs "{embed_dim: 96, depth: 6, linear_predictor: $linear}" > "$out/$linear-det.txt" 2>&1
done
for task in cls seg det; do
  for linear in bilateral "$predictor"; do
    echo "$task $linear: $(grep -E 'val_|Done' "$out/$linear-$task.txt" | tail -n 1)"
  done
done
