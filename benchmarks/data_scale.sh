#!/usr/bin/env bash
# The measurements of benchmarks/SCALE.md, "Data: folders and shards" (CPU only, no download).
#   bash benchmarks/data_scale.sh [WORKDIR]        (default WORKDIR: /tmp/wf-data-scale)
# 1. The embedded dataset (9,000 train / 1,800 val 32 px PNGs) and a 224 px one (2,700 / 180), each as a folder,
#    as data pack shards, as a Hugging Face save_to_disk folder and as parquet files.
# 2. Data loading alone (the training transform and the engine's loader, one pass), workers 0 / 1 / 2, from each.
# 3. A mid-epoch resumption on shards: one epoch on 1 process with a checkpoint every 50 steps, then the same
#    epoch resumed from step 50 on 2 processes (torchrun, batch 32 each: the same global batch of 64).
# 4. One epoch of the embedded recipe's training from each source (the same 9,000 images).
set -euo pipefail
cd "$(dirname "$0")/.."
work="${1:-/tmp/wf-data-scale}"
mkdir -p "$work"
export WEIGHTFORMER_CACHE="$work/cache" HF_HOME="$work/hf" HF_HUB_OFFLINE=1
small=$(python -c "from weightformer.tasks.classification import make_synthetic_dataset as m; print(m())")
large=$(python -c "from weightformer.tasks.classification import make_synthetic_dataset as m; \
print(m(image_size=224, train_per_class=300, val_per_class=20))")

for name in small large; do
    src=${!name}
    [ -d "$work/$name-shards" ] || weightformer data pack "$src" "$work/$name-shards" --shard-size 1000
    [ -d "$work/$name-hf" ] || python benchmarks/hf_copy.py "$src" "$work/$name-hf" --parquet-shards 4
done

# 2. Loading alone, with the embedded recipe's training transform (random resized crop, normalisation): 32 px
#    images at 32 px, 224 px images at 224 px. (The ImageNet recipe's RandAugment, --config tiny, stops on
#    Pillow 13 here: timm's posterize at the top magnitude asks PIL for 0 bits, which Pillow 13 refuses.)
for source in "$small" "wds:$work/small-shards" "hf:$work/small-hf/disk" "hf:$work/small-hf/parquet" \
              "hf-stream:$work/small-hf/parquet"; do
    weightformer data bench "$source" --img-size 32 --workers 0 1 2
done
for source in "$large" "wds:$work/large-shards" "hf:$work/large-hf/disk" "hf-stream:$work/large-hf/parquet"; do
    weightformer data bench "$source" --img-size 224 --workers 0 1 2
done

# 3. Mid-epoch resumption on shards, 1 process -> 2 processes.
runs="$work/runs"
rm -rf "$runs" "$work/train-runs"
weightformer train --data-dir "wds:$work/small-shards" --epochs 1 --warmup-epochs 0.1 --output-dir "$runs" \
    --run-name one --checkpoint-interval 50 --keep-checkpoints 10 --progress false --shard-order shards
mkdir -p "$runs/two/checkpoints"
cp "$runs/one/checkpoints/step-00000050.pth" "$runs/two/checkpoints/"
torchrun --nproc_per_node=2 -m weightformer train --data-dir "wds:$work/small-shards" --epochs 1 --warmup-epochs 0.1 \
    --output-dir "$runs" --resume "$runs/two/checkpoints/step-00000050.pth" --batch-size 32 \
    --resume-override world_size,batch_size --progress false --shard-order shards --workers 1
python - "$runs" <<'PY'
import sys, torch
one, two = (torch.load(f"{sys.argv[1]}/{r}/checkpoints/last.pth", weights_only=True) for r in ("one", "two"))
diff = max((one["model"][k].float() - two["model"][k].float()).abs().max().item() for k in one["model"])
print(f"steps {one['step']} / {two['step']}; largest weight difference, uninterrupted vs resumed: {diff:.2e}")
PY

# 4. Training from each source: one epoch of the embedded recipe (1 process, workers 1).
for source in "$small" "wds:$work/small-shards" "hf:$work/small-hf/disk" "hf-stream:$work/small-hf/parquet"; do
    weightformer train --data-dir "$source" --epochs 1 --warmup-epochs 0.1 --output-dir "$work/train-runs" \
        --progress false --log-interval 1000
done
