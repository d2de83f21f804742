"""Run configuration: flat dataclasses, recipes as YAML files, every value overridable from the command line.

`EngineConfig` holds what every task's run needs (schedule, optimiser, precision, EMA, checkpoints, logging);
each task subclasses it with its own data, model and loss values (`ClassificationConfig`, ...). A recipe file
(`configs/<name>.yaml`) states a whole recipe; command-line flags (`--epochs 5`, `--model-kwargs '{embed_dim:
64}'`) override single values. Values on the command line are parsed as YAML, so lists, numbers, booleans and
`null` are written the way they are in the files.

Fields marked `free` can change between a run and its resumption without changing what the run computes
(logging, workers, where checkpoints go). Every other field defines the run: `resume_differences` lists the
ones a resumption would change, and the engine refuses to resume unless each is named in `resume_override`.
"""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, TypeVar

import yaml

__all__ = ["EngineConfig", "free", "is_free", "load_config", "add_config_arguments", "config_from_args",
           "list_recipes", "resume_differences", "RESUME_OVERRIDE_ALL"]

C = TypeVar("C", bound="EngineConfig")
RESUME_OVERRIDE_ALL = "all"


def free(default: Any = None, *, factory: Any = None) -> Any:
    """A config field that may change when a run is resumed (it does not change what the run computes)."""
    if factory is not None:
        return field(default_factory=factory, metadata={"free": True})
    return field(default=default, metadata={"free": True})


def is_free(f: dataclasses.Field) -> bool:
    return bool(f.metadata.get("free"))


@dataclass
class EngineConfig:
    """Everything the engine needs to run a task: saved, resolved, with every checkpoint."""

    # -- run --------------------------------------------------------------------------------------------------
    recipe: str = free("custom")  # name of the recipe these values came from; the default run name
    output_dir: str = free("runs")
    run_name: str | None = free(None)  # default: the recipe name, with -2, -3, ... appended when taken
    resume: str | None = free(None)  # "auto" (latest checkpoint of run_name) or a checkpoint path
    # Config keys (or "all") whose new values a resumed run may take; world_size counts as a key.
    resume_override: list[str] = free(factory=list)
    seed: int = 0
    deterministic: bool = free(False)  # deterministic algorithms; with workers=0 on CPU a run is bit-reproducible
    device: str = free("auto")  # "auto", "cpu", "cuda"
    threads: int = free(0)  # CPU only: torch's intra-op threads; 0: the cores left over by the data workers (>= 1)
    compile: bool = free(False)  # torch.compile the model for training
    compile_backend: str = free("inductor")  # torch.compile's backend ("inductor", "aot_eager", ...)
    workers: int = free(8)
    pin_memory: bool = free(True)

    # -- optimisation -----------------------------------------------------------------------------------------
    epochs: int = 300
    warmup_epochs: float = 20
    batch_size: int = 256  # per process; the global batch is batch_size x world size x accum_steps
    accum_steps: int = 1  # micro-batches of batch_size accumulated into one optimiser step
    lr: float | None = None  # absolute peak lr; None: base_lr scaled by global batch / base_batch_size
    base_lr: float = 5e-4
    base_batch_size: int = 512
    warmup_lr: float = 5e-7
    min_lr: float = 5e-6
    sched: str = "cosine"  # "cosine" (to min_lr), "constant" (after the warm-up) or "multistep"
    decay_milestones: list[float] = field(default_factory=list)  # multistep: epochs where lr is x decay_rate
    decay_rate: float = 0.1
    opt: str = "adamw"
    opt_eps: float = 1e-8
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    weight_decay: float = 0.05  # not on 1-D parameters (norms, biases): timm's filter_bias_and_bn
    clip_grad: float | None = 5.0
    layer_decay: float | None = None  # layer-wise lr decay (fine-tuning): lr x decay^(depth - layer)
    amp: bool = True  # mixed precision (autocast), on any device
    amp_dtype: str = "float16"  # "float16" (with a grad scaler) or "bfloat16"
    model_ema: bool = False
    model_ema_decay: float = 0.9998
    grad_checkpointing: bool = free(False)  # recompute activations in the backward pass (timm's convention)

    # -- bookkeeping ------------------------------------------------------------------------------------------
    log_interval: int = free(50)  # steps between metrics lines
    eval_interval: int = free(1)  # epochs between evaluations (the last epoch is always evaluated)
    checkpoint_interval: int = free(0)  # steps between mid-epoch checkpoints; 0: only at the end of each epoch
    keep_checkpoints: int = free(2)  # numbered checkpoints kept besides last.pth and best.pth
    progress: bool = free(True)  # a progress bar per epoch (rank 0)
    tensorboard: bool = free(True)  # also log to TensorBoard when it is installed

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls: type[C], values: dict[str, Any]) -> C:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"Unknown config keys: {', '.join(unknown)}. Known keys: {', '.join(sorted(known))}.")
        values = dict(values)
        # YAML 1.1 reads "1e-3" (no dot) as a string: accept it wherever a float is expected.
        float_keys = {f.name for f in fields(cls) if "float" in str(f.type)}
        for key, value in values.items():
            if key in float_keys and isinstance(value, str):
                try:
                    values[key] = float(value)
                except ValueError as error:
                    raise ValueError(f"Config key {key} must be a number, got {value!r}.") from error
        if isinstance(values.get("resume_override"), str):  # --resume-override epochs,lr
            values["resume_override"] = [k.strip() for k in values["resume_override"].split(",") if k.strip()]
        return cls(**values)


def resume_differences(saved: dict[str, Any], current: EngineConfig, saved_world_size: int,
                       world_size: int) -> dict[str, tuple[Any, Any]]:
    """{key: (saved value, current value)} for every run-defining value a resumption would change.

    Free fields (logging, workers, paths) are not compared, nor keys the saved config does not have (written by
    an older version). The number of processes counts as the key `world_size`.
    """
    differences = {}
    for f in fields(current):
        if is_free(f) or f.name not in saved:
            continue
        old, new = saved[f.name], getattr(current, f.name)
        if old != new:
            differences[f.name] = (old, new)
    if saved_world_size != world_size:
        differences["world_size"] = (saved_world_size, world_size)
    return differences


def list_recipes(config_dir: Path) -> list[str]:
    """Names of the recipes in `config_dir` (its *.yaml files)."""
    return sorted(p.stem for p in config_dir.glob("*.yaml"))


def _recipe_path(name_or_path: str | Path, config_dir: Path) -> Path:
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml"):
        if not path.is_file():
            raise FileNotFoundError(f"No config file at {path}.")
        return path
    bundled = config_dir / f"{name_or_path}.yaml"
    if not bundled.is_file():
        raise ValueError(f"Unknown recipe {name_or_path!r}: pass a .yaml path or one of "
                         f"{', '.join(list_recipes(config_dir))}.")
    return bundled


def _read_recipe(path: Path) -> dict[str, Any]:
    try:
        values = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        where = getattr(error, "problem_mark", None)
        line = f" (line {where.line + 1})" if where is not None else ""
        raise ValueError(f"{path} is not valid YAML{line}: {getattr(error, 'problem', error)}.") from None
    except UnicodeDecodeError:
        raise ValueError(f"{path} is not a text file: a recipe is a YAML mapping of config keys.") from None
    if values is None:
        raise ValueError(f"{path} is empty: a recipe is a YAML mapping of config keys to values.")
    if not isinstance(values, dict):
        raise ValueError(f"{path} must hold a mapping of config keys to values, not a {type(values).__name__}.")
    return values


def load_config(config_class: type[C], config_dir: Path, name_or_path: str | Path | None, **overrides: Any) -> C:
    """`config_class`'s defaults, updated by a recipe (a name in `config_dir` or a path), updated by `overrides`."""
    values: dict[str, Any] = {}
    if name_or_path is not None:
        path = _recipe_path(name_or_path, config_dir)
        values = _read_recipe(path)
        values.setdefault("recipe", path.stem)
    values.update(overrides)
    return config_class.from_dict(values)


def _parse_value(text: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text  # not YAML: keep the text (from_dict checks its type)


def add_config_arguments(parser: argparse.ArgumentParser, config_class: type[EngineConfig], config_dir: Path,
                         default_recipe: str) -> None:
    """`--config NAME|PATH` plus one `--<key>` flag per config value (values parsed as YAML)."""
    parser.add_argument(
        "--config", "-c", default=default_recipe,
        help=f"recipe: a bundled name ({', '.join(list_recipes(config_dir))}) or a .yaml path (default: %(default)s)",
    )
    group = parser.add_argument_group("config overrides (values are YAML: 5, 1e-3, true, null, [0.9, 0.99])")
    for f in fields(config_class):
        flag = "--" + f.name.replace("_", "-")
        group.add_argument(flag, dest=f"override_{f.name}", type=_parse_value, default=argparse.SUPPRESS,
                           metavar="V")


def config_from_args(args: argparse.Namespace, config_class: type[C], config_dir: Path) -> C:
    overrides = {k.removeprefix("override_"): v for k, v in vars(args).items() if k.startswith("override_")}
    return load_config(config_class, config_dir, args.config, **overrides)
