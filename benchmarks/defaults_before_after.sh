#!/usr/bin/env bash
# The four embedded defaults, shortened, on an earlier commit and on this checkout, side by side: the metrics
# each prints (timings removed) are compared line by line. Usage, from the repository root:
#   bash benchmarks/defaults_before_after.sh d6abe3c [OUT_DIR]
# (d6abe3c: the commit before evaluation moved into the engine; the README's "What changed" quotes this run:
# classification, segmentation and detection print the same metrics; generation the same training losses and
# judge numbers, and a different val_loss by design, its validation noise being drawn from each sample's index.)
set -euo pipefail
ref=${1:?usage: defaults_before_after.sh GIT_REF [OUT_DIR]}
out=${2:-/tmp/defaults-before-after}
here=$(pwd)
mkdir -p "$out"
git worktree add -q --detach "$out/before-src" "$ref"
trap 'git -C "$here" worktree remove --force "$out/before-src"' EXIT

run() {  # run SRC NAME: the four defaults from the source tree SRC, logs to $out/NAME-*.txt
  local src=$1 name=$2
  export PYTHONPATH=$src/src
  python -m weightformer train --epochs 1 --progress false --output-dir "$out/$name" > "$out/$name-cls.txt" 2>&1
  python -m weightformer segment train --epochs 1 --progress false --output-dir "$out/$name" > "$out/$name-seg.txt" 2>&1
  python -m weightformer detect train --epochs 1 --progress false --output-dir "$out/$name" > "$out/$name-det.txt" 2>&1
  python -m weightformer dit train --epochs 2 --progress false --judge-samples-per-class 10 --judge-epochs 1 \
    --output-dir "$out/$name" > "$out/$name-gen.txt" 2>&1
}

normalise() {  # the metrics of a log, without timings, paths or the order of keys within a line
  sed -E "s#$out/(before|after)#RUN#g; s#, (epoch_seconds|val_images_per_second|val_ema_images_per_second) [0-9.e+-]+##g;
          s#, val_skipped_samples 0##g" "$1" | grep -v "^Run \|Predictions\|Samples (" \
    | python3 -c 'import sys; [print(", ".join(sorted(line.rstrip("\n").split(", ")))) for line in sys.stdin]'
}

run "$out/before-src" before
run "$here" after
status=0
for task in cls seg det gen; do
  if diff <(normalise "$out/before-$task.txt") <(normalise "$out/after-$task.txt"); then
    echo "$task: the same metrics"
  else
    echo "$task: differs (above)"; status=1
  fi
done
exit $status
