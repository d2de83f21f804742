"""The three GEMMs of a linear layer's training step, on torch.matmul (MKL on x86) and on oneDNN, one thread.

For WeightFormer-T/S's MLP shapes at 224² (batch 16: 3,136 tokens) times x W^T (forward), grad W (input
gradient) and grad^T x (weight gradient) both ways and prints GMAC/s, with the largest relative difference of
each oneDNN result from torch.matmul's. The numbers behind `weightformer.kernels.linear`'s choice of oneDNN for
all three in CPU training (the weight gradient as oneDNN's inner-product backward, `_onednn_weight_grad`).
Writes the table as JSON too.

    python benchmarks/gemm_libraries.py [--threads 1] [--out benchmarks/gemm_libraries.json]
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from weightformer.analysis.bench import environment
from weightformer.kernels.mlp import _onednn_gemm, _onednn_weight_grad


def best_ms(fn, repeats: int) -> float:
    fn()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best * 1e3


def _cases(x: torch.Tensor, w: torch.Tensor, g: torch.Tensor) -> dict:
    """Each product as (torch.matmul, oneDNN) callables: x (N, C), weight w (D, C), output gradient g (N, D)."""
    return {  # the oneDNN side: the calls kernels.linear's training backward makes
        "forward x W^T": (lambda: x @ w.t(), lambda: _onednn_gemm(x, w, None)),
        "input gradient grad W": (lambda: g @ w, lambda: _onednn_gemm(g, w.t(), None)),
        "weight gradient grad^T x": (lambda: g.t() @ x, lambda: _onednn_weight_grad(g, x, w, False)[0]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per case; the best is reported")
    parser.add_argument("--out", default="benchmarks/gemm_libraries.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    for width in (192, 384):  # WeightFormer-T, -S: fc1 is (3136 x C) x (C x 4C)
        n, c, d = 3136, width, 4 * width
        gen = torch.Generator().manual_seed(0)
        x, w, g = (torch.randn(*s, generator=gen) for s in ((n, c), (d, c), (n, d)))
        cases = _cases(x, w, g)
        gmac = n * c * d / 1e9
        for name, (matmul, dnn) in cases.items():
            ref = matmul()
            diff = ((dnn() - ref).abs().max() / ref.abs().max()).item()
            t_matmul, t_dnn = best_ms(matmul, args.repeats), best_ms(dnn, args.repeats)
            rows.append(dict(width=width, product=name, matmul_gmac_s=gmac / t_matmul * 1e3,
                             onednn_gmac_s=gmac / t_dnn * 1e3, max_rel_diff=diff))
    print(f"{'C':>4}  {'product':26s} {'torch.matmul':>14s} {'oneDNN':>10s}  max rel diff")
    for r in rows:
        print(f"{r['width']:>4}  {r['product']:26s} {r['matmul_gmac_s']:9.1f} GMAC/s {r['onednn_gmac_s']:6.1f} "
              f"GMAC/s  {r['max_rel_diff']:.1e}")
    with open(args.out, "w") as f:
        json.dump(dict(threads=args.threads, environment=environment("cpu"), rows=rows), f, indent=1)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
