#!/usr/bin/env bash
# Every GPU comparison of issue 20 in one call of under 10 minutes on one H100 / H200:
#   bash benchmarks/gpu_check.sh [OUTDIR]          (default OUTDIR: benchmarks/gpu)
#   GPU_CHECK_DRY_RUN=1 bash benchmarks/gpu_check.sh OUTDIR   the same steps on the CPU with tiny sizes, eager
#                                                              (checks the script; tests/test_bench.py runs it)
# Writes into OUTDIR: device.txt, tests.log, one NAME.json + NAME.txt (the printed table: machine, MAC ratio, speed
# and memory ratios) + NAME.log (progress) per comparison, tables.txt (all tables), profile.txt, budget.txt.
#
# Comparisons (bf16 autocast, every contestant timed interleaved in one process, the MAC ratio beside each ratio):
#   cls-small      WeightFormer-S vs DeiT-S (SDPA: FlashAttention), 224 and 1248, inference and training, peak
#                  memory; batch 256 * (224 / res)^2 = 256 and 8. Eager, then (cls-small-compiled) compiled.
#   cls-tiny       WeightFormer-T vs DeiT-T at 224, eager, batch 256.
#   dit-S          WeightFormer-DiT-S/2 (S = small) or B/2 (S = base) vs DiT's block with SDPA at the same width and
#                  depth, latents 32, 64, 128 (256, 512, 1024 px), batch 32 at each (DiT's per-GPU batch), guided
#                  sampling step and training step. Eager; then dit-S-L-compiled, one command per latent L.
#
# Time budget. The H200 peaks at ~990 bf16 TFLOP/s dense; these narrow models (width 384 / 768) may reach a third,
# ~150 TMAC/s. Heaviest timed step: DiT-B/2's training step at latent 128, 32 x 3 x 0.82 TMAC = 79 TMAC, ~0.5-1 s;
# DiT-S/2's is 32 x 3 x 0.30 = 29 TMAC (~0.2 s), its guided sampling step 64 x 0.30 = 19 TMAC; WeightFormer-S at
# 1248 (8 x 0.14 TMAC) and at 224 (256 x 4.4 GMACs = 1.1 TMAC) ~10-30 ms a step. With 2 warm-up steps, 1 memory
# step and 10 timed rounds per contestant the eager comparisons take ~1.5 min of GPU time plus ~10 s of start-up
# per command: ~3.5 min with the kernel tests (60 s at most). What costs is torch.compile: ~15-30 s per model, mode
# and shape (8 graphs for cls-small-compiled, 4 per DiT latent): ~4-7 min if every one is cold. So the eager
# comparisons run first, then the compiled ones, B/2's last; each step runs under `timeout` with what is left of
# BUDGET_S (570 s), and a step that would start with under 20 s left is skipped, as budget.txt then says: the
# call ends within 10 minutes whatever compilation costs, and a step cut short loses only its own JSON.
set -uo pipefail
cd "$(dirname "$0")/.."
out="${1:-benchmarks/gpu}"
mkdir -p "$out"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"  # this checkout's code, installed or not
wb=(python -m weightformer)
budget_s="${BUDGET_S:-570}"
scale=1  # of the per-step limits

if [[ "${GPU_CHECK_DRY_RUN:-0}" != "0" ]]; then  # the CPU, tiny sizes and rounds, eager: the script's logic only
    budget_s="${BUDGET_S:-7200}"; scale=100  # a CPU, perhaps shared: the limits are not what is being checked
    device=cpu; compile=off; rounds=1; warmup=0; cls_res=112; cls_res_large=224; cls_batch=1
    latents=(8); dit_batch=2; tests=()
else
    device=cuda; compile=on; rounds=10; warmup=2; cls_res_large=1248; cls_res=224; cls_batch=256
    latents=(32 64 128); dit_batch=32; tests=(tests/test_kernels.py)
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$out/device.txt"
fi
start=$(date +%s)
: > "$out/budget.txt"

# step NAME SECONDS CMD...: run CMD under the smaller of SECONDS and what is left of the budget, or skip it.
step() {
    local name=$1 limit=$(($2 * scale)); shift 2
    local left=$((budget_s - ($(date +%s) - start)))
    if ((left < 20)); then
        echo "$name: skipped, ${left} s of the budget left" | tee -a "$out/budget.txt"
        return 0
    fi
    ((limit > left)) && limit=$left
    local t0 rc
    t0=$(date +%s)
    timeout --kill-after=10 "$limit" "$@"
    rc=$?
    echo "$name: exit $rc after $(($(date +%s) - t0)) s (limit $limit s)" | tee -a "$out/budget.txt"
}

# bench NAME SECONDS ARGS...: one `weightformer bench` comparison, its table in NAME.txt, progress in NAME.log.
bench() {
    local name=$1 limit=$2; shift 2
    step "$name" "$limit" bash -c '"${@:3}" > "$1.txt" 2> "$1.log"; rc=$?; cat "$1.txt"; exit $rc' _ \
        "$out/$name" "$out/$name" "${wb[@]}" bench --device "$device" --out "$out/$name" "$@"
}

# 1. Correctness first, briefly: the Triton kernels natively on CUDA against the reference (forward, backward).
if ((${#tests[@]})); then
    step tests 60 bash -c 'python -m pytest -q -x "${@:2}" > "$1" 2>&1; rc=$?; tail -3 "$1"; exit $rc' _ \
        "$out/tests.log" "${tests[@]}"
fi

# 2. Eager, every comparison: WeightFormer-S vs DeiT-S at 224 and 1248 (the classifier targets), T vs DeiT-T at
#    224, WeightFormer-DiT S/2 and B/2 vs DiT at DiT's working point.
cls=(--resolutions "$cls_res" "$cls_res_large" --base-batch "$cls_batch" --no-reference --rounds "$rounds"
     --warmup "$warmup")
dit=(--task generation --base-batch "$dit_batch" --no-reference --rounds "$rounds" --warmup "$warmup")
bench cls-small 120 --model small "${cls[@]}" --compile off
bench cls-tiny 45 --model tiny --resolutions "$cls_res" "${cls[@]:3}" --compile off  # (224 only)
bench dit-small 120 --model small --resolutions "${latents[@]}" "${dit[@]}" --compile off
bench dit-base 150 --model base --resolutions "${latents[@]}" "${dit[@]}" --compile off

# 3. Compiled against compiled (torch.compile of both contestants), with what is left of the budget.
if [[ "$compile" != off ]]; then
    bench cls-small-compiled 150 --model small "${cls[@]}" --compile on
    for size in small base; do
        for latent in "${latents[@]}"; do
            bench "dit-$size-$latent-compiled" 90 --model "$size" --resolutions "$latent" "${dit[@]}" --compile on
        done
    done
fi

# 4. Where the time goes at 224 and 1248 (fast path, bf16, inference): per-kernel CUDA times, if time is left.
if [[ "$device" == cuda ]]; then
    cat > "$out/profile.py" <<'PY'
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
    step profile 40 bash -c 'python "$1" > "$2" 2>&1' _ "$out/profile.py" "$out/profile.txt"
fi

for table in "$out"/*.txt; do
    case "$table" in */tables.txt|*/budget.txt|*/device.txt|*/profile.txt) continue ;; esac
    printf '== %s\n%s\n\n' "$(basename "$table" .txt)" "$(cat "$table")"
done > "$out/tables.txt"
echo "total: $(($(date +%s) - start)) s of a ${budget_s} s budget" | tee -a "$out/budget.txt"
