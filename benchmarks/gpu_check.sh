#!/usr/bin/env bash
# One prepared GPU run (H100 or H200): kernel correctness on CUDA, then the full benchmark, then a profile.
#   bash benchmarks/gpu_check.sh [OUTDIR]        (default OUTDIR: benchmarks/gpu)
# Writes OUTDIR/tests.log, OUTDIR/small.{json,png}, OUTDIR/tiny.{json,png}, OUTDIR/dit-small.{json,png},
# OUTDIR/profile.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-benchmarks/gpu}"
mkdir -p "$out"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$out/device.txt"

# 1. Correctness: the Triton kernels natively on CUDA (every shape/dtype case), fast vs reference for the
#    layers and the whole model, fp32 and bf16, forward and backward.
python -m pytest -q tests/test_kernels.py tests/test_layers.py 2>&1 | tee "$out/tests.log"

# 2. The issue's targets: WeightFormer-S vs DeiT-S (SDPA), bf16 autocast, eager and compiled, inference and
#    training, 224..1536 at 256 * (224/res)^2 images per batch. Then T vs DeiT-T for the record.
weightformer bench --device cuda --model small --out "$out/small" 2>&1 | tee "$out/small.log"
weightformer bench --device cuda --model tiny --compile off --out "$out/tiny" 2>&1 | tee "$out/tiny.log"

# 2b. Generation: WeightFormer-DiT-S/2 vs DiT-S/2 (SDPA, same width and depth) on 4-channel latents 32, 64, 128
#     (256, 512, 1024 px), training step and guided sampling step, bf16, eager and compiled.
weightformer bench --task generation --device cuda --model small --out "$out/dit-small" 2>&1 | tee "$out/dit-small.log"

# 3. Where the time goes at 224 and 1248 (fast path, bf16, inference): per-kernel CUDA times.
python - <<'PY' 2>&1 | tee "$out/profile.txt"
import timm, torch
import weightformer  # noqa: F401
from torch.profiler import ProfilerActivity, profile
for res, batch in ((224, 256), (1248, 8)):
    for name in ("weightformer_small", "deit_small_patch16_224"):
        model = timm.create_model(name, img_size=res).cuda().eval()
        x = torch.randn(batch, 3, res, res, device="cuda")
        with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16):
            for _ in range(3):
                model(x)
            torch.cuda.synchronize()
            with profile(activities=[ProfilerActivity.CUDA]) as prof:
                model(x)
                torch.cuda.synchronize()
        print(f"== {name} {res}px batch {batch}")
        print(prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=15))
PY
