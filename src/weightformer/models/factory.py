"""`create_model` and `list_models`: the WeightFormer registry (classifiers on top of timm's, and WeightFormer-DiT)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import timm
import torch.nn as nn

from .checkpoint import load_checkpoint, read_state_dict
from .dit import DIT_MODELS, WeightFormerDiT, load_dit_checkpoint
from .weightformer import MODEL_CONFIGS, WeightFormer, checkpoint_filter_fn

__all__ = ["create_model", "create_model_from_checkpoint", "list_models"]

_KINDS = ("classifier", "dit", "all")


def list_models(kind: str = "classifier") -> list[str]:
    """Names of the WeightFormer variants.

    kind: "classifier" (the default: ["weightformer_base", "weightformer_small", "weightformer_tiny"]), "dit"
    (the WeightFormer-DiT generators, e.g. "weightformer_dit_s_2") or "all".
    """
    if kind not in _KINDS:
        raise ValueError(f"kind must be one of {', '.join(_KINDS)}; got {kind!r}.")
    names = [] if kind == "dit" else sorted(MODEL_CONFIGS)
    return names + ([] if kind == "classifier" else sorted(DIT_MODELS))


def create_model(
    name: str, pretrained: bool = False, checkpoint_path: str | Path | None = None, **kwargs: Any
) -> nn.Module:
    """Build a WeightFormer variant, or any other timm model (a baseline), by name.

    Args:
        name: one of `list_models("all")` (an optional ".in1k" tag is accepted for the classifiers). The
            WeightFormer-DiT names build a `WeightFormerDiT` (kwargs: input_size, in_channels, hidden_size,
            depth, num_classes, learn_sigma, class_dropout_prob, ...; `use_ema=False` loads a training
            checkpoint's "model" weights instead of its "ema" ones). No DiT weights are published on the Hub.
            Any other timm name (deit_tiny_patch16_224, convnext_tiny, ...) builds timm's model, so baselines
            train and evaluate through the same engine and recipes; `img_size` reaches it only if it takes one.
        pretrained: load the released ImageNet-1K weights from the Hugging Face Hub
            (RuizeHe/weightformer-{t,s,b}), through huggingface_hub's cache (timm's own weights for the others).
        checkpoint_path: load weights from a file instead: the release's .pth (state dict under "model"),
            the Hub's .safetensors, or a checkpoint written by this package.
        **kwargs: constructor overrides (num_classes, drop_path_rate, dynamic_blocks, ...).
    """
    if name in DIT_MODELS:
        return _create_dit(name, pretrained, checkpoint_path, **kwargs)
    if pretrained and checkpoint_path is not None:
        raise ValueError("Pass either pretrained=True or checkpoint_path, not both.")
    if name.split(".")[0] in MODEL_CONFIGS:
        model = timm.create_model(name, pretrained=pretrained, **kwargs)
    else:
        model = _create_timm(name, pretrained, **kwargs)
    if checkpoint_path is not None:
        load_checkpoint(model, checkpoint_path)
    return model


def _create_timm(name: str, pretrained: bool, **kwargs: Any) -> nn.Module:
    """A timm model that is not ours. ViT / DeiT take `img_size` (their position embeddings are sized for it);
    convolutional networks take any size and no such argument, so it is left out for them."""
    if not timm.is_model(name):
        raise ValueError(f"Unknown model {name!r}: neither a WeightFormer ({', '.join(list_models('all'))}) nor a "
                         "timm model.")
    try:
        try:
            return timm.create_model(name, pretrained=pretrained, **kwargs)
        except TypeError as error:
            if "img_size" not in kwargs or "'img_size'" not in str(error):
                raise
        return timm.create_model(name, pretrained=pretrained, **{k: v for k, v in kwargs.items() if k != "img_size"})
    except AssertionError as error:  # timm checks its arguments with asserts (e.g. width divisible by heads)
        raise ValueError(f"timm's {name} does not take {kwargs}: {error}.") from None


def _create_dit(
    name: str, pretrained: bool, checkpoint_path: str | Path | None, use_ema: bool = True, **kwargs: Any
) -> WeightFormerDiT:
    if pretrained:
        raise ValueError(f"No pretrained weights are published for {name}; pass checkpoint_path instead.")
    model = DIT_MODELS[name](**kwargs)
    if checkpoint_path is not None:
        load_dit_checkpoint(model, checkpoint_path, use_ema=use_ema)
    return model


def create_model_from_checkpoint(name: str, checkpoint_path: str | Path, state: dict[str, Any] | None = None,
                                 **kwargs: Any) -> WeightFormer:
    """Build `name` shaped like the checkpoint at `checkpoint_path` and load it.

    The class count is read from the checkpoint's head; a training checkpoint of this package also says which
    constructor overrides and input size it was trained with ("config": model_kwargs, img_size). Explicit
    `kwargs` win over both. `state`: the file's contents when the caller has read it already.
    """
    if name.split(".")[0] not in MODEL_CONFIGS:
        raise ValueError(f"Unknown model {name!r}; available: {', '.join(list_models())}.")
    state = read_state_dict(checkpoint_path) if state is None else state
    config = state.get("config") if isinstance(state.get("config"), dict) else {}
    found: dict[str, Any] = dict(config.get("model_kwargs") or {})
    if config.get("img_size"):
        found["img_size"] = config["img_size"]
    head = checkpoint_filter_fn(state).get("head.weight")
    found["num_classes"] = head.shape[0] if head is not None else 0
    model = timm.create_model(name, **{**found, **kwargs})
    load_checkpoint(model, state, origin=checkpoint_path)
    return model
