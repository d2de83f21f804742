"""Resident memory of one WeightFormer-DiT training step with freed CPU memory kept for reuse and without.

`weightformer.kernels.reuse_freed_cpu_memory()` keeps freed blocks in glibc's heap instead of returning them, so
steps stop page-faulting their activations in. A heap cannot move live blocks, though, and where a step's
allocations do not fit its earlier holes the heap grows past the tensors' own peak. This script measures that:
each case runs in a fresh process (the heap starts empty), builds the model and AdamW, runs one training step
(forward, MSE, backward, AdamW) and reports

- **resident**: the process's peak resident memory (`ru_maxrss`) during the step, beyond what it had before it;
- **tensors**: the peak of the tensor bytes the step allocates beyond what was allocated before it, from the
  allocations and frees PyTorch reports to torch.profiler (a second step, profiled; the same as the bench's
  memory column, so it includes the gradients, which are freed between steps);
- **seconds** and **page faults** of the first two steps (the first one also grows the heap from empty);
- **resident after two steps**, where the heap is still growing in the second one.

resident / tensors is the heap's overhead. --huge-pages on (or both) runs the cases with glibc's tunable
`glibc.malloc.hugetlb=1` (`weightformer.kernels.with_huge_pages`): malloc's memory on 2 MiB transparent huge pages,
which cuts the page faults 512-fold where the kernel finds free 2 MiB ranges. With --compile the model trains
through torch.compile (the first, unprofiled step compiles it, so its resident column includes the compiler's own
memory): the tensors column then shows how much of activation checkpointing's saving survives compilation;
--compile-scope blocks compiles each block on its own (`models.compile_blocks`) instead of the whole model.
It prints a table and writes OUT.json:

    python benchmarks/cpu_heap_fragmentation.py --latents 64 128 --batch 8 --out benchmarks/cpu_heap_fragmentation
    python benchmarks/cpu_heap_fragmentation.py --latents 32 --batch 8 --compile \
        --out benchmarks/cpu_heap_fragmentation_compiled
    python benchmarks/cpu_heap_fragmentation.py --latents 32 --batch 8 --compile --compile-scope blocks \
        --out benchmarks/cpu_heap_fragmentation_compiled_blocks
    python benchmarks/cpu_heap_fragmentation.py --latents 128 --batch 8 --checkpointing on --huge-pages both \
        --out /tmp/heap_huge_pages  (not run at full size yet)
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

import torch

from weightformer.analysis.bench import describe_environment, environment, load_average
from weightformer.kernels import with_huge_pages

CASE = r"""
import json, resource, sys, time
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

def timed_step():
    faults, start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt, time.perf_counter()
    step()
    return time.perf_counter() - start, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults

before = resident_mib()
first = timed_step()
resident = resident_mib() - before
second = timed_step()
print(json.dumps(dict(resident_mib=resident, resident_mib_two_steps=resident_mib() - before,
                      seconds=[first[0], second[0]], minor_faults=[first[1], second[1]],
                      tensors_mib=_peak_memory_mb(step, "cpu"), huge_pages=kernels.huge_pages()["in_effect"])))
"""


def _run_case(args: argparse.Namespace, latent: int, checkpointed: bool, reuse: bool, huge: bool) -> dict:
    """One case in a fresh process: its measurements as a row, printed."""
    argv_case = [args.model, latent, args.batch, int(checkpointed), int(reuse), args.threads, int(args.compile),
                 args.compile_scope]
    done = subprocess.run([sys.executable, "-c", CASE, *map(str, argv_case)], capture_output=True, text=True,
                          env=with_huge_pages(enabled=huge))
    if done.returncode:
        raise SystemExit(f"case {argv_case} failed:\n{done.stderr[-2000:]}")
    measured = json.loads(done.stdout.strip().splitlines()[-1])
    if measured["huge_pages"] != huge:
        raise SystemExit(f"case {argv_case}: malloc on huge pages {measured['huge_pages']}, asked {huge} "
                         "(the kernel's THP mode, or glibc older than 2.35)")
    row = dict(latent=latent, checkpointed=checkpointed, reuse_freed_memory=reuse, **measured,
               overhead=measured["resident_mib"] / measured["tensors_mib"])
    seconds = ", ".join(f"{s:.1f}" for s in row["seconds"])
    faults = ", ".join(f"{f:,}" for f in row["minor_faults"])
    print(f"{latent:>6} {str(checkpointed):>12} {'reused' if reuse else 'glibc':>7} {'yes' if huge else 'no':>5} "
          f"{row['resident_mib']:>12.0f} {row['tensors_mib']:>11.0f} {row['overhead']:>7.2f}x "
          f"{row['resident_mib_two_steps']:>11.0f} {seconds:>13} {faults:>19}", flush=True)
    return row


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="weightformer_dit_s_2")
    parser.add_argument("--latents", type=int, nargs="+", default=[64, 128])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--compile", action="store_true", help="train through torch.compile (the first step compiles)")
    parser.add_argument("--compile-scope", choices=["model", "blocks"], default="model",
                        help="with --compile: the whole model as one graph, or each block on its own")
    parser.add_argument("--checkpointing", choices=["both", "on", "off"], default="both",
                        help="cases with activation checkpointing, without, or both (default)")
    parser.add_argument("--huge-pages", choices=["off", "on", "both"], default="off",
                        help="run the cases with malloc on transparent huge pages (glibc.malloc.hugetlb=1)")
    parser.add_argument("--out", default=None, help="write OUT.json")
    args = parser.parse_args(argv)
    if sys.platform != "linux":
        parser.error("glibc's malloc settings are Linux-only")
    load_at_start = load_average()
    rows = []
    header = (f"{'latent':>6} {'checkpointed':>12} {'memory':>7} {'huge':>5} {'resident MiB':>12} {'tensors MiB':>11} "
              f"{'overhead':>8} {'2 steps MiB':>11} {'s/step 1, 2':>13} {'faults 1, 2':>19}")
    how = f", compiled ({'whole model' if args.compile_scope == 'model' else 'block by block'})" if args.compile else ""
    print(f"{args.model}, one training step{how}, batch {args.batch}, {args.threads} threads\n{header}")
    checkpointing = {"both": (False, True), "on": (True,), "off": (False,)}[args.checkpointing]
    huge_pages = {"both": (False, True), "on": (True,), "off": (False,)}[args.huge_pages]
    for latent in args.latents:
        for checkpointed in checkpointing:
            for huge in huge_pages:
                for reuse in (True, False):
                    rows.append(_run_case(args, latent, checkpointed, reuse, huge))
    torch.set_num_threads(args.threads)  # what the cases used, for the record
    env = environment("cpu", load_at_start)
    del env["cpu_memory_reused"]  # each row says which malloc settings its process had
    del env["huge_pages"]["in_effect"], env["huge_pages"]["malloc_hugetlb"]  # the kernel's THP mode stays
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
