"""Activation (gradient) checkpointing for any task's model, through timm's `set_grad_checkpointing` convention.

A model with checkpointing on keeps only each block's input during the forward pass and recomputes the block's
activations in the backward pass: less activation memory for about one more forward pass of compute. The blocks
run under `torch.utils.checkpoint.checkpoint(..., use_reentrant=False)`, which restores the RNG state before
recomputing, so drop-path and dropout masks are the same both times and so are the gradients.
"""

from __future__ import annotations

import torch.nn as nn

__all__ = ["set_grad_checkpointing", "grad_checkpointing_modules"]


def grad_checkpointing_modules(model: nn.Module) -> list[nn.Module]:
    """The outermost modules of `model` (itself included) that have a `set_grad_checkpointing` method.

    Outermost, because a module's own method already covers what it contains (a Detector's covers its pyramid's
    backbone), and calling the inner ones as well could undo a wrapper's choice.
    """
    if callable(getattr(model, "set_grad_checkpointing", None)):
        return [model]
    return [found for child in model.children() for found in grad_checkpointing_modules(child)]


def set_grad_checkpointing(model: nn.Module, enable: bool = True) -> None:
    """Turn activation checkpointing on (or off) in every part of `model` that supports it.

    Works for every task's model: the classifier, WeightFormer-DiT and its attention baseline, the dense
    backbones and the Mask R-CNN / UperNet networks built on them, timm models (which have the method natively),
    and any module that contains one of these (a torchvision detector around a pyramid, a compiled model).
    Raises a one-line ValueError when nothing in `model` supports it.
    """
    modules = grad_checkpointing_modules(model)
    if not modules:
        raise ValueError(f"{type(model).__name__} does not support gradient checkpointing: neither it nor any of its "
                         "submodules has a set_grad_checkpointing method (timm's convention).")
    for module in modules:
        module.set_grad_checkpointing(enable)
