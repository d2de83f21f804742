"""Resident memory of one WeightFormer-DiT training step with freed CPU memory kept for reuse and without.

`weightformer.kernels.reuse_freed_cpu_memory()` keeps freed blocks in glibc's heap instead of returning them, so
steps stop page-faulting their activations in. A heap cannot move live blocks, though, and where a step's
allocations do not fit its earlier holes the heap grows past the tensors' own peak. This script measures that:
each case runs in a fresh process (the heap starts empty), builds the model and AdamW, runs one training step
(forward, MSE, backward, AdamW) and reports

- **resident**: the process's peak resident memory (`ru_maxrss`) during the step, beyond what it had before it;
- **tensors**: the peak of the tensor bytes the step allocates beyond what was allocated before it, from the
  allocations and frees PyTorch reports to torch.profiler (a second step, profiled; the same as the bench's
  memory column, so it includes the gradients, which are freed between steps).

resident / tensors is the heap's overhead. With --compile the model trains through torch.compile (the first,
unprofiled step compiles it, so its resident column includes the compiler's own memory): the tensors column then
shows how much of activation checkpointing's saving survives compilation; --compile-scope blocks compiles each
block on its own (`models.compile_blocks`) instead of the whole model. It prints a table and writes OUT.json:

    python benchmarks/cpu_heap_fragmentation.py --latents 64 128 --batch 8 --out benchmarks/cpu_heap_fragmentation
    python benchmarks/cpu_heap_fragmentation.py --latents 32 --batch 8 --compile \
        --out benchmarks/cpu_heap_fragmentation_compiled
    python benchmarks/cpu_heap_fragmentation.py --latents 32 --batch 8 --compile --compile-scope blocks \
        --out benchmarks/cpu_heap_fragmentation_compiled_blocks
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

import torch

from weightformer.analysis.bench import describe_environment, environment, load_average

CASE = r"""
import json, resource, sys
import torch
import torch.nn.functional as F
from weightformer import kernels
from weightformer.analysis.bench import _peak_memory_mb
from weightformer.models import compile_blocks, create_model, set_grad_checkpointing

model_name, latent, batch = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
checkpointed, reuse, compiled = sys.argv[4] == "1", sys.argv[5] == "1", sys.argv[7] == "1"
torch.set_num_threads(int(sys.argv[6]))
kernels.reuse_freed_cpu_memory(reuse)
torch.manual_seed(0)
model = create_model(model_name, input_size=latent, num_classes=1000)
if checkpointed:
    set_grad_checkpointing(model)
optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
forward = torch.compile(model) if compiled and sys.argv[8] == "model" else model
if compiled and sys.argv[8] == "blocks":
    compile_blocks(model)
x = torch.randn(batch, 4, latent, latent)
t, y = torch.randint(0, 1000, (batch,)), torch.randint(0, 1000, (batch,))

def step():
    F.mse_loss(forward(x, t, y)[:, :4], x).backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)

def resident_mib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux

before = resident_mib()
step()
resident = resident_mib() - before
print(json.dumps(dict(resident_mib=resident, tensors_mib=_peak_memory_mb(step, "cpu"))))
"""


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="weightformer_dit_s_2")
    parser.add_argument("--latents", type=int, nargs="+", default=[64, 128])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--compile", action="store_true", help="train through torch.compile (the first step compiles)")
    parser.add_argument("--compile-scope", choices=["model", "blocks"], default="model",
                        help="with --compile: the whole model as one graph, or each block on its own")
    parser.add_argument("--out", default=None, help="write OUT.json")
    args = parser.parse_args(argv)
    if sys.platform != "linux":
        parser.error("glibc's malloc settings are Linux-only")
    load_at_start = load_average()
    rows = []
    header = (f"{'latent':>6} {'checkpointed':>12} {'memory':>7} {'resident MiB':>12} {'tensors MiB':>11} "
              f"{'overhead':>8}")
    how = f", compiled ({'whole model' if args.compile_scope == 'model' else 'block by block'})" if args.compile else ""
    print(f"{args.model}, one training step{how}, batch {args.batch}, {args.threads} threads\n{header}")
    for latent in args.latents:
        for checkpointed in (False, True):
            for reuse in (True, False):
                argv_case = [args.model, latent, args.batch, int(checkpointed), int(reuse), args.threads,
                             int(args.compile), args.compile_scope]
                done = subprocess.run([sys.executable, "-c", CASE, *map(str, argv_case)], capture_output=True,
                                      text=True)
                if done.returncode:
                    raise SystemExit(f"case {argv_case} failed:\n{done.stderr[-2000:]}")
                measured = json.loads(done.stdout.strip().splitlines()[-1])
                row = dict(latent=latent, checkpointed=checkpointed, reuse_freed_memory=reuse, **measured,
                           overhead=measured["resident_mib"] / measured["tensors_mib"])
                rows.append(row)
                print(f"{latent:>6} {str(checkpointed):>12} {'reused' if reuse else 'glibc':>7} "
                      f"{row['resident_mib']:>12.0f} {row['tensors_mib']:>11.0f} {row['overhead']:>7.2f}x", flush=True)
    torch.set_num_threads(args.threads)  # what the cases used, for the record
    env = environment("cpu", load_at_start)
    del env["cpu_memory_reused"]  # each row says which malloc settings its process had
    print(describe_environment(env))
    result = dict(model=args.model, batch=args.batch, threads=args.threads, compiled=args.compile,
                  compile_scope=args.compile_scope if args.compile else None, environment=env,
                  rows=rows,
                  command=" ".join(["python benchmarks/cpu_heap_fragmentation.py", *(sys.argv[1:] if argv is None
                                                                                     else argv)]))
    if args.out:
        with open(args.out + ".json", "w") as f:
            json.dump(result, f, indent=1)
        print(f"wrote {args.out}.json")
    return result


if __name__ == "__main__":
    main()
