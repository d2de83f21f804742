"""Was the `agent` predictor stuck on the probes because both of its softmaxes started uniform? (issue 19)

With the release's initialisation (truncated normal, std 0.02; the agent predictor's until commit 8001efc) the
agent queries score LayerNorm-ed tokens with logits of std ~0.02 sqrt(C): the softmax over the N tokens is
uniform, every agent is the mean token, and the softmax over the agents is uniform too, so the layer starts as
the release's diluted mean statistics. This script prints both softmaxes' entropies (over log N and log K: 1 =
uniform) at initialisation, for the predictor's own initialisation (std logit_std / sqrt(C)) and, with
--init-std S, for the agent queries and the read-out's query / key projections redrawn with std S; then, given
probe arguments after --, runs `weightformer probe` in this process with that initialisation (values and output
keep theirs). The runs' specs read `weightformer:linear=agent` either way: keep their --out folders apart.

    python benchmarks/agent_init.py --init-std 0.02 -- --tasks same_different_random --resolution 48 ...
"""

from __future__ import annotations

import argparse
import math
import sys

import numpy as np
import torch
from timm.layers import trunc_normal_

from weightformer.cli.main import main
from weightformer.layers.common import softmax_pool
from weightformer.layers.dynamic_linear import AgentPredictor
from weightformer.tasks.probes import suite as probe_suite
from weightformer.tasks.probes import task as probe_task
from weightformer.tasks.probes.data import Knobs
from weightformer.tasks.probes.models import build_probe_model
from weightformer.tasks.probes.published import draw_same_different_random


def reinitialise(model: torch.nn.Module, std: float) -> torch.nn.Module:
    """Redraw every agent layer's agent queries and read-out query / key projections with `std` (after the
    model's own initialisation, which sets every Linear to std 0.02); values and output keep theirs."""
    with torch.no_grad():
        for layer in model.modules():
            if isinstance(layer, AgentPredictor):
                for weight in (layer.agent_queries, layer.query_proj.weight, layer.key_proj.weight):
                    trunc_normal_(weight, std=std, a=-4 * std, b=4 * std)
    return model


def build_with(std: float | None):
    def build(*args, **kwargs) -> torch.nn.Module:
        model = build_probe_model(*args, **kwargs)
        return model if std is None else reinitialise(model, std)
    return build


def entropies(std: float | None, width: int = 48, depth: int = 4, patch: int = 4,
              resolution: int = 48) -> dict[str, float]:
    """Mean normalised entropies of the first agent layer's two softmaxes on 16 random-position images."""
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    knobs = Knobs(resolution=resolution, distance=0.0, size=0.125, colours=2)
    images = torch.tensor(np.stack([draw_same_different_random(i % 2, knobs, rng)[0] for i in range(16)])).float()
    if images.shape[-1] == 3:
        images = images.permute(0, 3, 1, 2)
    model = build_with(std)("weightformer:linear=agent", 2, resolution, dict(width=width, depth=depth, patch=patch))
    model.eval()
    layer = next(m for m in model.modules() if isinstance(m, AgentPredictor))
    seen: dict[str, float] = {}

    def hook(module: AgentPredictor, args: tuple[torch.Tensor], output: torch.Tensor) -> None:
        x = args[0]
        tokens = x.flatten(1, 2)
        pool = (tokens @ module.agent_queries.t()).softmax(dim=1)  # (B, N, K)
        keys = module.key_proj(softmax_pool(x, module.agent_queries))
        read = (module.query_proj(tokens) @ keys.transpose(1, 2) * module.scale).softmax(dim=-1)  # (B, N, K)
        seen["pool"] = (-(pool * pool.clamp_min(1e-12).log()).sum(1).mean() / math.log(pool.shape[1])).item()
        seen["read"] = (-(read * read.clamp_min(1e-12).log()).sum(-1).mean() / math.log(read.shape[-1])).item()

    layer.register_forward_hook(hook)
    with torch.no_grad():
        model(images)
    return seen


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--init-std", type=float, default=None, help="default: the predictor's own initialisation")
    parser.add_argument("probe_args", nargs=argparse.REMAINDER, help="after --: weightformer probe's arguments")
    args = parser.parse_args()
    for std in dict.fromkeys([None, 0.02, args.init_std]):
        e = entropies(std)
        name = "the predictor's own init" if std is None else f"init std {std}"
        print(f"{name}: softmax over tokens {e['pool']:.3f}, over agents {e['read']:.3f} (1 = uniform)")
    probe_args = [a for a in args.probe_args if a != "--"]
    if probe_args:
        probe_task.build_probe_model = probe_suite.build_probe_model = build_with(args.init_std)
        sys.exit(main(["probe", *probe_args, "--jobs", "0"]))
