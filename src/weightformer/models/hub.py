"""Hugging Face Hub folders: `config.json` + `model.safetensors`, in timm's layout or the release's.

- timm's layout (what `save_pretrained` writes, through timm's own `save_for_hf`): config.json holds
  "architecture", "num_classes", "model_args" (the constructor arguments) and "pretrained_cfg" (the input size
  and evaluation transform). timm itself loads it: `timm.create_model("local-dir:FOLDER", pretrained=True)`, or
  `hf-hub:owner/name` once pushed.
- The release's layout (RuizeHe/weightformer-{t,s,b}, huggingface_hub's PyTorchModelHubMixin; the release's
  model/hub_models.py): config.json holds the reference code's constructor arguments (img_size, patch_size,
  in_chans, num_classes, embed_dim, depth, mlp_ratio, qkv_bias, representation_size, distilled, drop_rate,
  attn_drop_rate, drop_path_rate) and model.safetensors the release's key names, translated at load time.
"""

import json
from pathlib import Path
from typing import Any

import timm
import torch.nn as nn
from timm.models._hub import save_for_hf

from .checkpoint import HUB_FILENAME, load_checkpoint
from .weightformer import WeightFormer

__all__ = ["save_pretrained", "from_pretrained", "resolve_folder", "CONFIG_FILENAME"]

CONFIG_FILENAME = "config.json"

# The release's constructor arguments that mean something here, and those that must keep their default.
_RELEASE_ARGS = ("img_size", "patch_size", "in_chans", "num_classes", "embed_dim", "depth", "mlp_ratio",
                 "drop_rate", "drop_path_rate")
_RELEASE_UNSUPPORTED = {"representation_size": None, "distilled": False}


def _constructor_args(model: WeightFormer) -> dict[str, Any]:
    """The arguments that rebuild `model` (as JSON values), read from the model itself."""
    dynamic = [m.mlp.fc1 for m in model.blocks if m.dynamic]
    mixers = [m.token_mixer for m in model.blocks if m.dynamic]
    args = dict(
        img_size=list(model.img_size),
        patch_size=model.patch_size,
        in_chans=model.in_chans,
        num_classes=model.num_classes,
        global_pool=model.global_pool,
        embed_dim=model.embed_dim,
        depth=len(model.blocks),
        mlp_ratio=model.blocks[0].mlp.fc1.out_features / model.embed_dim,
        dynamic_blocks=list(model.dynamic_indices),
    )
    if dynamic:
        args["linear_predictor"] = dynamic[0].predictor_name
        args["odd_grid_pooling"] = "ceil" if dynamic[0].predictor.ceil_mode else "floor"
        args["conv_predictor"] = mixers[0].predictor_name
    return args


def save_pretrained(model: WeightFormer, folder: str | Path, model_config: dict[str, Any] | None = None) -> Path:
    """Write `model` to `folder` in timm's Hub layout (config.json + model.safetensors) and return the folder.

    model_config: further config.json keys, e.g. timm's `label_names` (one name per class) or the section of
    `weightformer export-weights` (tasks/publish.py); timm ignores keys it does not know.
    """
    if not isinstance(model, WeightFormer):
        raise TypeError(f"save_pretrained expects a WeightFormer, got {type(model).__name__}.")
    folder = Path(folder)
    if not hasattr(model, "pretrained_cfg"):  # built with WeightFormer(...), not through the registry
        model.pretrained_cfg = timm.models.get_pretrained_cfg("weightformer_small.in1k").to_dict()
        model.pretrained_cfg["architecture"] = "weightformer_small"
    folder.mkdir(parents=True, exist_ok=True)
    height, width = model.img_size
    save_for_hf(
        model,
        str(folder),
        model_config=model_config,
        model_args=_constructor_args(model),  # every argument: the architecture's defaults may differ
        safe_serialization=True,
        data_config={"input_size": (model.in_chans, height, width)},
    )
    return folder


def _release_architecture(args: dict[str, Any]) -> str:
    if args.get("embed_dim", 384) == 192:
        return "weightformer_tiny"
    return "weightformer_base" if args.get("img_size", 224) == 448 else "weightformer_small"


def _from_release_config(folder: Path, config: dict[str, Any], **kwargs: Any) -> WeightFormer:
    for key, default in _RELEASE_UNSUPPORTED.items():
        if config.get(key, default) != default:
            raise ValueError(f"{folder / CONFIG_FILENAME}: {key}={config[key]!r} is not supported by WeightFormer.")
    args = {key: config[key] for key in _RELEASE_ARGS if key in config}
    model = timm.create_model(_release_architecture(args), **{**args, **kwargs})
    return load_checkpoint(model, folder / HUB_FILENAME)


def resolve_folder(source: str | Path) -> Path:
    """A local folder, or a Hub repo id resolved through huggingface_hub's cache (network only if not cached)."""
    path = Path(source)
    if path.is_dir():
        return path
    if path.is_file():
        raise ValueError(f"{source} is a file, not a Hub folder (a folder with {CONFIG_FILENAME} and {HUB_FILENAME}).")
    if path.exists() or str(source).count("/") != 1:
        raise FileNotFoundError(f"No Hub folder at {source} (expected a folder with {CONFIG_FILENAME} and "
                                f"{HUB_FILENAME}, or a Hub repo id like RuizeHe/weightformer-t).")
    from huggingface_hub import hf_hub_download

    hf_hub_download(str(source), CONFIG_FILENAME)
    return Path(hf_hub_download(str(source), HUB_FILENAME)).parent


def from_pretrained(source: str | Path, **kwargs: Any) -> nn.Module:
    """Load a WeightFormer from a Hub-style folder (or repo id) in timm's layout or the release's.

    `kwargs` override constructor arguments (e.g. drop_path_rate for fine-tuning).
    """
    folder = resolve_folder(source)
    for name in (CONFIG_FILENAME, HUB_FILENAME):
        if not (folder / name).is_file():
            raise FileNotFoundError(f"{folder} has no {name}; a Hub folder holds {CONFIG_FILENAME} and {HUB_FILENAME}.")
    config = json.loads((folder / CONFIG_FILENAME).read_text())
    if "architecture" in config:  # timm's layout (ours)
        return timm.create_model(f"local-dir:{folder}", pretrained=True, **kwargs)
    return _from_release_config(folder, config, **kwargs)
