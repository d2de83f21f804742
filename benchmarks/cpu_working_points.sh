#!/usr/bin/env bash
# Issue 20's working points on an idle CPU, one command after the other (2 threads; ~30 min on a 2-core AMD EPYC):
#   bash benchmarks/cpu_working_points.sh [OUTDIR]      (default OUTDIR: benchmarks)
#   ONLY="cls dit" picks parts: cls (classifier, eager), cls-onednn (DeiT on oneDNN too), compiled and
#   compiled-onednn (the same, torch.compile against torch.compile), normalized (the
#   *_normalized variants), dit (WeightFormer-DiT-S/2 at latent 32 and 64, B/2 at 32, batch 32), dit128
#   (S/2 guided sampling at latent 128, batch 32; not in the default set: ~15 min; its training step at batch 32
#   needs more memory than 24 GiB), dit-base64 (B/2 guided sampling at latent 64, batch 32; not in the default set),
#   dit-base128 (B/2 guided sampling at latent 128, batch 32; not in the default set: ~45 min),
#   dit-compiled (S/2 and B/2 at latent 32 compiled against compiled; not in the default set), dit-compiled64
#   (S/2 at latent 64 compiled against compiled, batch 32; not in the default set: ~12 min), dit-compiled-large
#   (compiled guided sampling, batch 32: B/2 at latent 64 and S/2 at 128; not in the default set: ~30 min),
#   dit-checkpointed (B/2 training at latent 64, batch 32, every contestant with activation checkpointing: without
#   it the step needs more than 24 GiB; not in the default set: ~12 min), dit128-checkpointed (S/2 training at
#   latent 128, batch 32, the same way, with glibc's malloc defaults: kept for reuse, the freed blocks of the
#   recomputed blocks fragment the heap past 23 GiB, while the step's tensors peak at ~8 GiB; ~20 min),
#   dit128-checkpointed-b16 (the same at batch 16, freed memory reused: the step without its page faults; ~15 min),
#   dit-base64-compiled-checkpointed (B/2 training at latent 64, batch 32, checkpointed, compiled against compiled
#   block by block, 2 warm-up steps; ~20 min; compiled as one graph, --compile-scope model, it passed 23 GiB in its
#   first step on the 23.5 GiB machine: checkpointing saves far less there, see GENERATION.md),
#   dit128-compiled-checkpointed-b16 (S/2 training at latent 128, batch 16, checkpointed, compiled block by block
#   against the same; ~20 min), dit-compiled-base128 (B/2 compiled guided sampling at latent 128, batch 32, one
#   warm-up step; ~35 min), dit-base64-both (B/2 guided sampling at
#   latent 64, batch 32, eager and compiled in one run, 3 warm-up steps: compiled graphs' allocations take
#   several steps to settle; not in the default set: ~25 min), dit-compiled128 (S/2 compiled guided sampling at
#   latent 128, batch 32, 3 warm-up steps; not in the default set: ~25 min).
#   dit128-checkpointed-huge (S/2 training at latent 128, batch 32, both checkpointed, on glibc's malloc defaults
#   with malloc on transparent huge pages, GLIBC_TUNABLES=glibc.malloc.hugetlb=1: the dit128-checkpointed point
#   with 1/512 of its page faults; ~15 min), dit-base128-checkpointed-b16-huge (B/2 training at latent 128, batch
#   16, the same way: the last training point; batch 32's tensors alone would fill this 24 GiB machine; ~20 min).
# HUGE_PAGES=1 runs every part with malloc on transparent huge pages (weightformer.kernels.huge_pages).
# EXTRA="--system-malloc" adds arguments to every command (that one: glibc's malloc defaults instead of keeping
# freed memory for reuse, see weightformer.kernels.reuse_freed_cpu_memory).
# Each command writes OUTDIR/NAME.{json,png} (every timed round, the machine, the command) and prints its table;
# the tables also go to OUTDIR/cpu_working_points.txt. Run it on an otherwise idle machine: the ratios are only
# comparable within one command (contestants interleaved), and other load moves them by +-10 %.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-benchmarks}"
only="${ONLY:-cls cls-onednn compiled compiled-onednn normalized dit}"
# glibc >= 2.35 reads it at process start: malloc's memory on transparent huge pages
huge_tunables="${GLIBC_TUNABLES:+$GLIBC_TUNABLES:}glibc.malloc.hugetlb=1"
if [ "${HUGE_PAGES:-0}" = 1 ]; then export GLIBC_TUNABLES="$huge_tunables"; fi
huge_pages() { GLIBC_TUNABLES="$huge_tunables" "$@"; }  # COMMAND...: run it with malloc on huge pages
mkdir -p "$out"
log="$out/cpu_working_points.txt"
: > "$log"
bench() {  # NAME ARGS...: one bench command, its table appended to the log
  local name=$1; shift
  echo "== $name: weightformer bench $* ${EXTRA:-}" | tee -a "$log"
  weightformer bench --device cpu --threads 2 --no-reference "$@" ${EXTRA:-} --out "$out/$name" | tee -a "$log"
}
for part in $only; do
  case $part in
    cls)
      bench cpu_tiny --model tiny --modes inference train --resolutions 224 896 --rounds 6
      bench cpu_small --model small --modes inference train --resolutions 224 --rounds 6 ;;
    cls-onednn)  # the like-for-like: DeiT's linear layers on the same oneDNN GEMMs
      bench cpu_tiny_baseline_onednn --model tiny --modes inference train --resolutions 224 --rounds 6 --baseline-onednn
      bench cpu_small_baseline_onednn --model small --modes inference train --resolutions 224 --rounds 6 --baseline-onednn ;;
    normalized)
      bench cpu_tiny_normalized --model tiny_normalized --modes inference train --resolutions 224 896 --rounds 6
      bench cpu_small_normalized --model small_normalized --modes inference train --resolutions 224 --rounds 6 ;;
    compiled)  # torch.compile against torch.compile (inductor), timm's DeiT as it is
      bench cpu_tiny_compiled --model tiny --modes inference train --compile on --resolutions 224 --rounds 6
      bench cpu_small_compiled --model small --modes inference train --compile on --resolutions 224 --rounds 6
      bench cpu_tiny_compiled_896 --model tiny --modes inference --compile on --resolutions 896 --rounds 6 ;;
    compiled-onednn)  # compiled, DeiT's linear layers on the same oneDNN custom ops
      bench cpu_tiny_compiled_baseline_onednn --model tiny --modes inference train --compile on --resolutions 224 --rounds 6 --baseline-onednn
      bench cpu_small_compiled_baseline_onednn --model small --modes inference train --compile on --resolutions 224 --rounds 6 --baseline-onednn ;;
    dit)  # DiT's working point: 32 latents per step at every latent size
      bench cpu_dit_small_32_b32 --task generation --model small --resolutions 32 --base-batch 32 --rounds 3
      bench cpu_dit_base_32_b32 --task generation --model base --resolutions 32 --base-batch 32 --rounds 2 --warmup 1
      bench cpu_dit_small_64_b32 --task generation --model small --resolutions 64 --base-batch 32 --rounds 2 --warmup 1 ;;
    dit-compiled)  # torch.compile against torch.compile, S/2 and B/2 at latent 32, batch 32 (not in the default set: ~30 min)
      bench cpu_dit_small_32_b32_compiled --task generation --model small --resolutions 32 --base-batch 32 --compile on --rounds 2 --warmup 1
      bench cpu_dit_base_32_b32_compiled --task generation --model base --resolutions 32 --base-batch 32 --compile on --rounds 2 --warmup 1 ;;
    dit-compiled64)  # torch.compile against torch.compile, S/2 at latent 64, batch 32 (not in the default set)
      bench cpu_dit_small_64_b32_compiled --task generation --model small --resolutions 64 --base-batch 32 --compile on --rounds 2 --warmup 1 ;;
    dit-compiled-large)  # compiled against compiled, guided sampling only (the training steps need more than 24 GiB);
      # one warm-up step leaves the compiled graphs' heap unsettled (page faults in the timed steps): see dit-base64-both, dit-compiled128
      bench cpu_dit_base_64_b32_compiled --task generation --model base --resolutions 64 --base-batch 32 --modes inference --compile on --rounds 2 --warmup 1
      bench cpu_dit_small_128_b32_compiled --task generation --model small --resolutions 128 --base-batch 32 --modes inference --compile on --rounds 1 --warmup 1 ;;
    dit128)
      bench cpu_dit_small_128_b32 --task generation --model small --resolutions 128 --base-batch 32 --modes inference --rounds 1 --warmup 1 ;;
    dit-base128)  # B/2 guided sampling at latent 128, batch 32 (its training step needs more than 24 GiB)
      bench cpu_dit_base_128_b32 --task generation --model base --resolutions 128 --base-batch 32 --modes inference --rounds 1 --warmup 1 ;;
    dit-base64)  # B/2 guided sampling at latent 64, batch 32 (not in the default set: ~10 min; its training step needs more than 24 GiB)
      bench cpu_dit_base_64_b32 --task generation --model base --resolutions 64 --base-batch 32 --modes inference --rounds 2 --warmup 1 ;;
    dit-checkpointed)  # training where batch 32's activations exceed 24 GiB: WeightFormer-DiT and DiT both recompute theirs
      bench cpu_dit_base_64_b32_train_checkpointed --task generation --model base --resolutions 64 --base-batch 32 --modes train --checkpoint-activations --rounds 2 --warmup 1 ;;
    dit128-checkpointed-b16)  # S/2 training at latent 128 with freed memory reused: batch 16 fits (fragmented) in 24 GiB
      bench cpu_dit_small_128_b16_train_checkpointed --task generation --model small --resolutions 128 --base-batch 16 --modes train --checkpoint-activations --rounds 1 --warmup 1 ;;
    dit-base64-compiled-checkpointed)  # B/2 training at latent 64, batch 32, both checkpointed, compiled block by block (--compile-scope auto)
      bench cpu_dit_base_64_b32_train_compiled_checkpointed --task generation --model base --resolutions 64 --base-batch 32 --modes train --checkpoint-activations --compile on --rounds 1 --warmup 2 ;;
    dit128-compiled-checkpointed-b16)  # S/2 training at latent 128, batch 16, both checkpointed, compiled block by block
      bench cpu_dit_small_128_b16_train_compiled_checkpointed --task generation --model small --resolutions 128 --base-batch 16 --modes train --checkpoint-activations --compile on --rounds 1 --warmup 2 ;;
    dit-compiled-base128)  # B/2 compiled guided sampling at latent 128, batch 32 (its training step does not fit in 24 GiB)
      bench cpu_dit_base_128_b32_compiled --task generation --model base --resolutions 128 --base-batch 32 --modes inference --compile on --rounds 1 --warmup 1 ;;
    dit-base64-both)  # eager and compiled sampling side by side: which is faster once every allocation has settled
      bench cpu_dit_base_64_b32_eager_and_compiled --task generation --model base --resolutions 64 --base-batch 32 --modes inference --compile both --rounds 2 --warmup 3 ;;
    dit-compiled128)  # compiled S/2 guided sampling at latent 128 with its allocations settled (3 warm-up steps; ~25 min)
      bench cpu_dit_small_128_b32_compiled_settled --task generation --model small --resolutions 128 --base-batch 32 --modes inference --compile on --rounds 1 --warmup 3 ;;
    dit128-checkpointed)
      bench cpu_dit_small_128_b32_train_checkpointed --task generation --model small --resolutions 128 --base-batch 32 --modes train --checkpoint-activations --rounds 1 --warmup 0 --system-malloc ;;
    dit128-checkpointed-huge)  # the point above with malloc on huge pages: 512 times fewer page faults
      huge_pages bench cpu_dit_small_128_b32_train_checkpointed_huge_pages --task generation --model small --resolutions 128 --base-batch 32 --modes train --checkpoint-activations --rounds 1 --warmup 0 --system-malloc ;;
    dit-base128-checkpointed-b16-huge)  # B/2 training at latent 128: batch 16, checkpointed, glibc defaults on huge pages
      huge_pages bench cpu_dit_base_128_b16_train_checkpointed_huge_pages --task generation --model base --resolutions 128 --base-batch 16 --modes train --checkpoint-activations --rounds 1 --warmup 0 --system-malloc ;;
    *) echo "unknown part $part (cls cls-onednn compiled compiled-onednn normalized dit dit-compiled dit-compiled64 dit-compiled-large dit128 dit-base64 dit-base128 dit-checkpointed dit128-checkpointed dit128-checkpointed-b16 dit-base64-compiled-checkpointed dit128-compiled-checkpointed-b16 dit-compiled-base128 dit-base64-both dit-compiled128 dit128-checkpointed-huge dit-base128-checkpointed-b16-huge)" >&2; exit 2 ;;
  esac
done
