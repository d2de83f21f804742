"""Run configuration: flat dataclasses, recipes as YAML files, every value overridable from the command line.

`EngineConfig` holds what every task's run needs (schedule, optimiser, precision, EMA, checkpoints, logging);
each task subclasses it with its own data, model and loss values (`ClassificationConfig`, ...). A recipe file
(`configs/<name>.yaml`) states a whole recipe; command-line flags (`--epochs 5`, `--model-kwargs '{embed_dim:
64}'`) override single values. Values on the command line are parsed as YAML, so lists, numbers, booleans and
`null` are written the way they are in the files. `--model-kwargs` adds its keys to the recipe's mapping (a
key it names replaces the recipe's value); every other flag replaces the recipe's value whole.

Fields marked `free` can change between a run and its resumption without changing what the run computes
(logging, workers, where checkpoints go). Every other field defines the run: `resume_differences` lists the
ones a resumption would change, and the engine refuses to resume unless each is named in `resume_override`.

Every value is checked when a config is made (from a recipe, flags, `from_dict` or the constructor), before
anything is written: against its field's type, and against the rule declared with the field (`setting(300,
ge=1)`: bounds, choices, list lengths). A bad value stops with `<key> must be ..., got ...`. The type rules:

- int: an int, an integral float (`100.0`) or a string holding one (`"1e2"`, which YAML 1.1 reads as a string);
  not a bool, not 1.5;
- float: an int, a float or a numeric string (`"1e-3"`), finite; not a bool;
- bool: only true or false (YAML's yes/no/on/off are booleans too); not 0, 1 or "maybe";
- str: only a string, never a converted number (`run_name: 010` is 8 in YAML: quote it). On the command line a
  string field takes the flag's text as typed (`--run-name 010`), so quotes are only needed in files;
- list[X]: a list (or tuple) whose elements are X; `| None` adds null; dict[str, Any]: a mapping with string keys.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import math
import types
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, TypeVar, Union, get_args, get_origin, get_type_hints

import yaml

from ..models.compilation import COMPILE_SCOPES
from .loggers import TRACKERS

__all__ = ["EngineConfig", "Rule", "setting", "free", "is_free", "check_value", "field_checks", "load_config",
           "add_config_arguments", "config_from_args", "list_recipes", "resume_differences", "RESUME_OVERRIDE_ALL"]

C = TypeVar("C", bound="EngineConfig")
RESUME_OVERRIDE_ALL = "all"
_COMMA_LISTS = ("resume_override", "logger")  # list fields that also take "a,b" (what a flag gives)


#################################################################################
#                       Fields: what each value must be                          #
#################################################################################


@dataclass(frozen=True)
class Rule:
    """What a config value must be besides its type; for a list, what each element must be, and its length."""

    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    choices: tuple[Any, ...] | None = None
    length: int | None = None  # lists: exactly this many elements
    nonempty: bool = False  # lists: at least one element
    increasing: bool = False  # lists: each element >= the one before

    def admits(self, x: Any) -> bool:
        """Whether a scalar already of the field's type is within the bounds and among the choices."""
        if self.choices is not None:
            return x in self.choices
        return ((self.ge is None or x >= self.ge) and (self.gt is None or x > self.gt)
                and (self.le is None or x <= self.le) and (self.lt is None or x < self.lt))

    def bounds(self) -> str:
        """The bounds in words: ' >= 1', ' in [0, 1)', or ''."""
        low = ("[", self.ge) if self.ge is not None else ("(", self.gt) if self.gt is not None else None
        high = ("]", self.le) if self.le is not None else (")", self.lt) if self.lt is not None else None
        if low and high:
            return f" in {low[0]}{_number(low[1])}, {_number(high[1])}{high[0]}"
        if low:
            return f" {'>=' if low[0] == '[' else '>'} {_number(low[1])}"
        if high:
            return f" {'<=' if high[0] == ']' else '<'} {_number(high[1])}"
        return ""


def _number(x: float) -> str:
    return str(x) if isinstance(x, int) else f"{x:g}"


NO_RULE = Rule()


def setting(default: Any = None, *, factory: Any = None, free: bool = False, **rule: Any) -> Any:
    """A config field with its rule, e.g. `epochs: int = setting(300, ge=1)` (keywords: those of `Rule`).

    A subclass that only changes a field's default (`epochs: int = 1`) keeps the rule of the base class.
    """
    metadata = {"free": free, "rule": Rule(**rule)}
    if factory is not None:
        return field(default_factory=factory, metadata=metadata)
    return field(default=default, metadata=metadata)


def free(default: Any = None, *, factory: Any = None, **rule: Any) -> Any:
    """A config field that may change when a run is resumed (it does not change what the run computes)."""
    return setting(default, factory=factory, free=True, **rule)


def is_free(f: dataclasses.Field) -> bool:
    return bool(f.metadata.get("free"))


class _Invalid(Exception):
    """A value does not fit its field: `check_value` turns it into a ValueError naming the key."""


def check_value(key: str, value: Any, tp: Any, rule: Rule = NO_RULE) -> Any:
    """`value` as the field `key` of type `tp` holds it ("1e2" -> 100 for an int), or a ValueError saying why not."""
    try:
        return _coerce(value, tp, rule)
    except _Invalid:
        # YAML reads `run_name: 010` as 8 and `split: yes` as true: the fix is quotes, say so.
        quote = " (quote it to make it a string)" if _admits_str(tp) and rule.choices is None and isinstance(
            value, int | float) else ""
        raise ValueError(f"{key} must be {_describe(tp, rule)}, got {value!r}{quote}") from None


def _coerce(value: Any, tp: Any, rule: Rule) -> Any:
    if tp is Any:
        return value
    origin, args = get_origin(tp), get_args(tp)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for option in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, option, rule)
            except _Invalid:
                pass
        raise _Invalid
    if origin is list:
        return _coerce_list(value, args[0], rule)
    if origin is dict:
        if not isinstance(value, dict):
            raise _Invalid
        return {_coerce(k, args[0], NO_RULE): _coerce(v, args[1], NO_RULE) for k, v in value.items()}
    if tp not in _SCALARS:
        raise TypeError(f"Config fields of type {tp} are not supported (use int, float, bool, str, list, dict).")
    value = _SCALARS[tp](value)
    if not rule.admits(value):
        raise _Invalid
    return value


def _coerce_list(value: Any, item_type: Any, rule: Rule) -> list[Any]:
    if not isinstance(value, list | tuple):  # a tuple from Python code; YAML and checkpoints give lists
        raise _Invalid
    items = [_coerce(item, item_type, rule) for item in value]
    if (rule.length is not None and len(items) != rule.length) or (rule.nonempty and not items):
        raise _Invalid
    if rule.increasing and any(b < a for a, b in zip(items, items[1:], strict=False)):
        raise _Invalid
    return items


def _as_int(value: Any) -> int:
    if isinstance(value, str):  # YAML 1.1 reads 1e2 (no dot) as a string
        value = _as_float(value)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _Invalid
    if isinstance(value, float) and not value.is_integer():  # (also refuses inf and nan)
        raise _Invalid
    return int(value)


def _as_float(value: Any) -> float:
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise _Invalid from None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise _Invalid
    return value  # an int stays one (as YAML wrote it, and as saved configs hold it)


def _as_bool(value: Any) -> bool:
    if not isinstance(value, bool):  # not 0 / 1, not "maybe"
        raise _Invalid
    return value


def _as_str(value: Any) -> str:
    if not isinstance(value, str):  # a number YAML parsed may not be the text that was written (010 is 8)
        raise _Invalid
    return value


_SCALARS = {int: _as_int, float: _as_float, bool: _as_bool, str: _as_str}
_NOUNS = {int: ("an integer", "integers"), float: ("a number", "numbers"), bool: ("true or false", "booleans"),
          str: ("a string", "strings")}


def _describe(tp: Any, rule: Rule, plural: bool = False) -> str:
    """What a field of type `tp` with `rule` takes, in words: "a list of 2 numbers in [0, 1)"."""
    if tp is Any:
        return "any value"
    origin, args = get_origin(tp), get_args(tp)
    if origin in (Union, types.UnionType):
        text = " or ".join(_describe(a, rule, plural) for a in args if a is not type(None))
        return f"null or {text}" if type(None) in args else text
    if origin is list:
        count = f"{rule.length} " if rule.length is not None else ""
        order = " in increasing order" if rule.increasing else ""
        return f"{'a non-empty' if rule.nonempty else 'a'} list of {count}{_describe(args[0], rule, True)}{order}"
    if origin is dict:
        return "a mapping {name: value}"
    if rule.choices is not None:
        *rest, last = [str(c) for c in rule.choices]
        text = f"{', '.join(rest)} or {last}" if rest else last
        return f"values among {text}" if plural else text
    return _NOUNS[tp][plural] + rule.bounds()


def _admits_str(tp: Any) -> bool:
    return tp is str or str in get_args(tp)


@functools.cache
def field_checks(cls: type) -> dict[str, tuple[Any, Rule]]:
    """{field name: (type, rule)} of a config class, rules inherited by fields that only change a default."""
    hints = get_type_hints(cls)
    rules: dict[str, Rule] = {}
    for klass in reversed(cls.__mro__):
        declared = klass.__dict__.get("__dataclass_fields__", {})
        for name in klass.__dict__.get("__annotations__", {}):
            rule = declared[name].metadata.get("rule") if name in declared else None
            if rule is not None or name not in rules:
                rules[name] = rule or NO_RULE
    return {f.name: (hints[f.name], rules[f.name]) for f in fields(cls)}


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
    seed: int = setting(0, ge=0, lt=2**32)  # numpy's seeds are 32-bit and not negative
    deterministic: bool = free(False)  # deterministic algorithms; with workers=0 on CPU a run is bit-reproducible
    device: str = free("auto", choices=("auto", "cpu", "cuda"))
    threads: int = free(0, ge=0)  # CPU only: torch's intra-op threads; 0: the cores left over by the data workers
    # CPU only: keep freed memory in the process for reuse (kernels.reuse_freed_cpu_memory), no page faults on
    # large activations every step; False: the C library's malloc defaults (less resident memory where the heap
    # fragments: grad_checkpointing at large activations, see kernels/allocator.py). Either way, starting the run
    # with GLIBC_TUNABLES=glibc.malloc.hugetlb=1 puts malloc's memory on huge pages (kernels.huge_pages): fewer faults
    reuse_cpu_memory: bool = free(True)
    compile: bool = free(False)  # torch.compile the model for training
    compile_backend: str = free("inductor")  # torch.compile's backend ("inductor", "aot_eager", ...)
    # What compile compiles: "model" (one graph, torch.compile(model)), "blocks" (each block on its own,
    # models.compile_blocks: keeps grad_checkpointing's memory saving), "auto" (blocks with grad_checkpointing)
    compile_scope: str = free("auto", choices=COMPILE_SCOPES)
    workers: int = free(8, ge=0)
    pin_memory: bool = free(True)

    # -- optimisation -----------------------------------------------------------------------------------------
    epochs: int = setting(300, ge=1)
    warmup_epochs: float = setting(20, ge=0)
    batch_size: int = setting(256, ge=1)  # per process; the global batch is batch_size x world size x accum_steps
    accum_steps: int = setting(1, ge=1)  # micro-batches of batch_size accumulated into one optimiser step
    lr: float | None = setting(None, gt=0)  # absolute peak lr; None: base_lr x global batch / base_batch_size
    base_lr: float = setting(5e-4, gt=0)
    base_batch_size: int = setting(512, ge=1)
    warmup_lr: float = setting(5e-7, ge=0)
    min_lr: float = setting(5e-6, ge=0)
    # "cosine" (to min_lr), "constant" (after the warm-up) or "multistep" (lr x decay_rate at each milestone)
    sched: str = setting("cosine", choices=("cosine", "constant", "multistep"))
    decay_milestones: list[float] = setting(factory=list, ge=0, increasing=True)  # multistep: epochs, in order
    decay_rate: float = setting(0.1, gt=0)
    opt: str = "adamw"  # any timm optimizer name
    opt_eps: float = setting(1e-8, ge=0)
    betas: list[float] = setting(factory=lambda: [0.9, 0.999], length=2, ge=0, lt=1)  # Adam's (beta1, beta2)
    weight_decay: float = setting(0.05, ge=0)  # not on 1-D parameters (norms, biases): timm's filter_bias_and_bn
    clip_grad: float | None = setting(5.0, ge=0)  # max gradient norm; 0 or None: no clipping
    # Layer-wise lr decay (fine-tuning): lr x decay^(depth - layer); None: off.
    layer_decay: float | None = setting(None, gt=0, le=1)
    amp: bool = True  # mixed precision (autocast), on any device
    amp_dtype: str = setting("float16", choices=("float16", "bfloat16"))  # float16 comes with a grad scaler
    model_ema: bool = False
    model_ema_decay: float = setting(0.9998, ge=0, lt=1)
    grad_checkpointing: bool = free(False)  # recompute activations in the backward pass (timm's convention)

    # -- bookkeeping ------------------------------------------------------------------------------------------
    log_interval: int = free(50, ge=1)  # steps between metrics lines
    eval_interval: int = free(1, ge=1)  # epochs between evaluations (the last epoch is always evaluated)
    checkpoint_interval: int = free(0, ge=0)  # steps between mid-epoch checkpoints; 0: only at each epoch's end
    keep_checkpoints: int = free(2, ge=0)  # numbered checkpoints kept besides last.pth and best.pth
    progress: bool = free(True)  # a progress bar per epoch (rank 0)
    tensorboard: bool = free(True)  # also log to TensorBoard when it is installed
    # Experiment trackers besides metrics.jsonl and TensorBoard (loggers.py): --logger wandb,mlflow
    logger: list[str] = free(factory=list, choices=tuple(TRACKERS))
    tracker_project: str = free("weightformer")  # the W&B project and the MLflow experiment
    wandb_mode: str = free("offline", choices=("offline", "online"))  # offline: upload later with `wandb sync`
    mlflow_uri: str | None = free(None)  # MLflow's tracking URI; None: file:<run folder>/mlruns

    def __post_init__(self) -> None:
        """Check every value against its field's type and rule, converting where the meaning is exact ("1e2" ->
        100 for an int). Subclasses that define __post_init__ call this one."""
        for name, (tp, rule) in field_checks(type(self)).items():
            setattr(self, name, check_value(name, getattr(self, name), tp, rule))
        if self.sched == "multistep" and not self.decay_milestones:
            raise ValueError("decay_milestones must list the epochs where lr is x decay_rate (sched is multistep), "
                             "got []")
        keys = {f.name for f in fields(self)} | {RESUME_OVERRIDE_ALL, "world_size"}
        unknown = [k for k in self.resume_override if k not in keys]
        if unknown:  # a misspelt key would otherwise let nothing through, silently
            raise ValueError(f"resume_override must list config keys, world_size or {RESUME_OVERRIDE_ALL}, got "
                             f"{', '.join(unknown)}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls: type[C], values: dict[str, Any]) -> C:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"Unknown config keys: {', '.join(unknown)}. Known keys: {', '.join(sorted(known))}.")
        values = dict(values)  # (types and ranges are checked by __post_init__)
        for key in _COMMA_LISTS:  # --resume-override epochs,lr, --logger wandb,mlflow
            if isinstance(values.get(key), str):
                values[key] = [k.strip() for k in values[key].split(",") if k.strip()]
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


def load_config(config_class: type[C], config_dir: Path, name_or_path: str | Path | None,
                merged: tuple[str, ...] = (), **overrides: Any) -> C:
    """`config_class`'s defaults, updated by a recipe (a name in `config_dir` or a path), updated by `overrides`.

    An override replaces the recipe's value, except for the mapping fields named in `merged`: their keys update
    the recipe's mapping one by one (what the command line does for `--model-kwargs`).
    """
    values: dict[str, Any] = {}
    if name_or_path is not None:
        path = _recipe_path(name_or_path, config_dir)
        values = _read_recipe(path)
        values.setdefault("recipe", path.stem)
    for key in merged:
        if isinstance(values.get(key), dict) and isinstance(overrides.get(key), dict):
            overrides[key] = {**values[key], **overrides[key]}
    values.update(overrides)
    return config_class.from_dict(values)


def _parse_value(text: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text  # not YAML: keep the text (the config checks its type)


def _parse_text(text: str) -> str:
    """A string field's flag: the text as typed (YAML would make `--run-name 010` the number 8), unquoted."""
    parsed = _parse_value(text) if text[:1] in ("'", '"') else None
    return parsed if isinstance(parsed, str) else text


def _parse_text_or_null(text: str) -> str | None:
    return None if _parse_value(text) is None else _parse_text(text)


def _flag_parser(tp: Any) -> Any:
    if tp is str:
        return _parse_text
    if set(get_args(tp)) == {str, type(None)}:
        return _parse_text_or_null
    return _parse_value


def add_config_arguments(parser: argparse.ArgumentParser, config_class: type[EngineConfig], config_dir: Path,
                         default_recipe: str) -> None:
    """`--config NAME|PATH` plus one `--<key>` flag per config value (values parsed as YAML, strings as typed)."""
    parser.add_argument(
        "--config", "-c", default=default_recipe,
        help=f"recipe: a bundled name ({', '.join(list_recipes(config_dir))}) or a .yaml path (default: %(default)s)",
    )
    group = parser.add_argument_group("config overrides (values are YAML: 5, 1e-3, true, null, [0.9, 0.99])")
    for name, (tp, rule) in field_checks(config_class).items():
        flag = "--" + name.replace("_", "-")
        group.add_argument(flag, dest=f"override_{name}", type=_flag_parser(tp), default=argparse.SUPPRESS,
                           metavar="V", help=_describe(tp, rule).replace("%", "%%"))


# Flags that add to the recipe's mapping rather than replace it: `--model-kwargs "{linear_predictor: agent}"` keeps
# the recipe's sizes. (`--synthetic {}` still replaces: it turns the embedded dataset off.)
MERGED_FLAGS = ("model_kwargs",)


def config_from_args(args: argparse.Namespace, config_class: type[C], config_dir: Path) -> C:
    overrides = {k.removeprefix("override_"): v for k, v in vars(args).items() if k.startswith("override_")}
    return load_config(config_class, config_dir, args.config, merged=MERGED_FLAGS, **overrides)
