"""Training configuration: one flat dataclass, recipes as YAML files, every value overridable from the CLI.

The dataclass defaults are the release's ImageNet recipe (SPEC §6) for WeightFormer-T; a recipe file
(`configs/<name>.yaml`) states a whole recipe, and command-line flags (`--epochs 5`, `--model-kwargs
'{embed_dim: 64}'`) override single values. Values on the command line are parsed as YAML, so lists, numbers,
booleans and `null` are written the way they are in the files.
"""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

__all__ = ["TrainConfig", "CONFIG_DIR", "DEFAULT_RECIPE", "list_recipes", "load_config", "add_config_arguments",
           "config_from_args"]

# The recipes ship inside the package (the repository's top-level configs/ links here), so an installed
# `weightformer train` finds them too.
CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"
DEFAULT_RECIPE = "synthetic"


@dataclass
class TrainConfig:
    """Everything a training run depends on. Saved, resolved, with every checkpoint."""

    # -- run --------------------------------------------------------------------------------------------------
    recipe: str = "custom"  # name of the recipe these values came from; the default run name
    output_dir: str = "runs"
    run_name: str | None = None  # default: the recipe name, with -2, -3, ... appended when taken
    resume: str | None = None  # "auto" (latest checkpoint of run_name) or a checkpoint path
    seed: int = 0
    deterministic: bool = False  # deterministic algorithms; with workers=0 on CPU a run is bit-reproducible
    device: str = "auto"  # "auto", "cpu", "cuda"
    threads: int = 0  # CPU only: torch's intra-op threads; 0: the cores left over by the data workers (>= 1)

    # -- data -------------------------------------------------------------------------------------------------
    data_dir: str | None = None  # ImageNet layout: <data_dir>/<train_split>/<class>/*; "synthetic": built-in
    train_split: str = "train"
    val_split: str = "val"
    synthetic: dict[str, Any] = field(default_factory=dict)  # make_synthetic_dataset arguments (root, seed, ...)
    workers: int = 8
    pin_memory: bool = True

    # -- model ------------------------------------------------------------------------------------------------
    model: str = "weightformer_tiny"
    model_kwargs: dict[str, Any] = field(default_factory=dict)  # constructor overrides (embed_dim, depth, ...)
    img_size: int = 224
    drop_path: float = 0.0
    initial_checkpoint: str | None = None  # start from these weights (e.g. the release's, to fine-tune)

    # -- optimisation -----------------------------------------------------------------------------------------
    epochs: int = 300
    warmup_epochs: float = 20
    batch_size: int = 256  # per process; the global batch is batch_size x world size
    lr: float | None = None  # absolute peak lr; None: base_lr scaled by global batch / base_batch_size
    base_lr: float = 5e-4
    base_batch_size: int = 512
    warmup_lr: float = 5e-7
    min_lr: float = 5e-6
    opt: str = "adamw"
    opt_eps: float = 1e-8
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    weight_decay: float = 0.05  # not on 1-D parameters (norms, biases): timm's filter_bias_and_bn
    clip_grad: float | None = 5.0
    amp: bool = True  # mixed precision (autocast) when on a GPU
    amp_dtype: str = "float16"  # "float16" (with a grad scaler) or "bfloat16"
    model_ema: bool = False
    model_ema_decay: float = 0.9998

    # -- augmentation -----------------------------------------------------------------------------------------
    auto_augment: str | None = "rand-m9-mstd0.5-inc1"
    color_jitter: float = 0.4
    reprob: float = 0.25
    remode: str = "pixel"
    recount: int = 1
    hflip: float = 0.5
    scale: list[float] = field(default_factory=lambda: [0.08, 1.0])
    interpolation: str = "bicubic"
    crop_pct: float = 224 / 256  # evaluation: resize to size / crop_pct, centre crop
    mixup: float = 0.8
    cutmix: float = 1.0
    mixup_prob: float = 1.0
    mixup_switch_prob: float = 0.5
    mixup_mode: str = "batch"
    smoothing: float = 0.1

    # -- bookkeeping ------------------------------------------------------------------------------------------
    log_interval: int = 50  # steps between metrics lines
    eval_interval: int = 1  # epochs between evaluations (the last epoch is always evaluated)
    checkpoint_interval: int = 0  # steps between mid-epoch checkpoints; 0: only at the end of each epoch
    keep_checkpoints: int = 2  # numbered checkpoints kept besides last.pth and best.pth
    progress: bool = True  # a progress bar per epoch (rank 0)
    tensorboard: bool = True  # also log to TensorBoard when it is installed

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"Unknown config keys: {', '.join(unknown)}. Known keys: {', '.join(sorted(known))}.")
        # YAML 1.1 reads "1e-3" (no dot) as a string: accept it wherever a float is expected.
        float_keys = {f.name for f in fields(cls) if "float" in str(f.type)}
        for key, value in values.items():
            if key in float_keys and isinstance(value, str):
                try:
                    values[key] = float(value)
                except ValueError as error:
                    raise ValueError(f"Config key {key} must be a number, got {value!r}.") from error
        return cls(**values)


def list_recipes() -> list[str]:
    """Names of the recipes shipped in configs/."""
    return sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))


def _recipe_path(name_or_path: str | Path) -> Path:
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml"):
        if not path.is_file():
            raise FileNotFoundError(f"No config file at {path}.")
        return path
    bundled = CONFIG_DIR / f"{name_or_path}.yaml"
    if not bundled.is_file():
        raise ValueError(f"Unknown recipe {name_or_path!r}: pass a .yaml path or one of {', '.join(list_recipes())}.")
    return bundled


def load_config(name_or_path: str | Path | None = DEFAULT_RECIPE, **overrides: Any) -> TrainConfig:
    """The dataclass defaults, updated by a recipe file (a bundled name or a path), updated by `overrides`."""
    values: dict[str, Any] = {}
    if name_or_path is not None:
        path = _recipe_path(name_or_path)
        values = yaml.safe_load(path.read_text()) or {}
        if not isinstance(values, dict):
            raise ValueError(f"{path} must hold a mapping of config keys to values.")
        values.setdefault("recipe", path.stem)
    values.update(overrides)
    return TrainConfig.from_dict(values)


def _parse_value(text: str) -> Any:
    return yaml.safe_load(text)


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """`--config NAME|PATH` plus one `--<key>` flag per config value (values parsed as YAML)."""
    parser.add_argument(
        "--config", "-c", default=DEFAULT_RECIPE,
        help=f"recipe: a bundled name ({', '.join(list_recipes())}) or a .yaml path (default: %(default)s)",
    )
    group = parser.add_argument_group("config overrides (values are YAML: 5, 1e-3, true, null, [0.9, 0.99])")
    for f in fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        group.add_argument(flag, dest=f"override_{f.name}", type=_parse_value, default=argparse.SUPPRESS,
                           metavar="V")


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    overrides = {k.removeprefix("override_"): v for k, v in vars(args).items() if k.startswith("override_")}
    return load_config(args.config, **overrides)
