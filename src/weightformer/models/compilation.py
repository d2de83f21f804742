"""Compiling a model block by block (regional compilation), the way that keeps activation checkpointing's saving.

`torch.compile(model)` traces the whole forward into one graph and partitions its backward itself: with
activation checkpointing on, the compiled backward keeps much of what eager checkpointing frees
(WeightFormer-DiT-S/2's training step at latent 32, batch 8, peaks 3.8x lower checkpointed in eager mode but only
1.4x lower compiled; DiT-S/2 alike: benchmarks/GENERATION.md). `compile_blocks` compiles each block on its own
instead (`nn.Module.compile`, in place) and leaves the model's forward eager, so `torch.utils.checkpoint` still
wraps whole compiled blocks: the backward pass recomputes one block at a time and the saving is the eager one.
Blocks of one kind share their compiled code (WeightFormer-DiT's static and dynamic blocks make two graphs). What
stays eager is the little between the blocks: the embeddings, the final norm and the head.
"""

from __future__ import annotations

from typing import Any

import torch.nn as nn

__all__ = ["compile_blocks", "block_containers", "COMPILE_SCOPES", "resolve_compile_scope"]

COMPILE_SCOPES = ("auto", "model", "blocks")


def resolve_compile_scope(scope: str, grad_checkpointing: bool, has_blocks: bool = True) -> str:
    """"model" or "blocks" for a `compile_scope` of `COMPILE_SCOPES`: "auto" is "blocks" where checkpointing is on
    and the model has blocks (compiled as one graph, checkpointing would lose most of its saving), else "model"."""
    if scope == "auto":
        return "blocks" if grad_checkpointing and has_blocks else "model"
    return scope


def block_containers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The `blocks` containers (nn.ModuleList / nn.Sequential attributes named "blocks") of `model`, outermost
    first, with their qualified names: the sequences of blocks that activation checkpointing runs one by one in
    every model of this package (the classifier, WeightFormer-DiT and DiT, the dense backbones inside Mask R-CNN
    and UperNet) and in timm's ViT / DeiT."""
    found: list[tuple[str, nn.Module]] = []
    for name, module in model.named_modules():
        if name.rsplit(".", 1)[-1] != "blocks" or not isinstance(module, (nn.ModuleList, nn.Sequential)):
            continue
        if any(name.startswith(outer + ".") for outer, _ in found):
            continue  # inside a block already compiled
        found.append((name, module))
    return found


def compile_blocks(model: nn.Module, **compile_kwargs: Any) -> int:
    """Compile every block of `model` in place (`block.compile(**compile_kwargs)`, e.g. backend="aot_eager");
    return how many.

    The model's state dict, parameter names and attributes stay as they are (unlike `torch.compile(model)`, whose
    wrapper prefixes every name with "_orig_mod."), so checkpoints, EMA and DDP see the same module. Raises a
    one-line ValueError when `model` has no `blocks` container.
    """
    containers = block_containers(model)
    if not containers:
        raise ValueError(f"{type(model).__name__} has no blocks to compile: no nn.ModuleList or nn.Sequential named "
                         "'blocks' in it. Compile the whole model instead (torch.compile(model)).")
    count = 0
    for _, blocks in containers:
        for block in blocks:
            block.compile(**compile_kwargs)
            count += 1
    return count
