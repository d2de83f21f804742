"""The task registry: every task is declared once, here, and the rest derives from its declaration.

A task is a package under `weightformer/tasks/` that exports its config class (an `EngineConfig` subclass) and
its `Task` subclass, plus one `register(TaskSpec(...))` line at the bottom of this file. From that line come:

- the command line: `weightformer COMMAND train` (with `--config RECIPE` and one flag per config value), and
  `weightformer COMMAND VERB` for each further verb, which the package's `cli` module defines (`VERBS`);
- recipes: `load_config(task, recipe, **overrides)`, `add_config_arguments`, `config_from_args`, read from
  `weightformer/configs/<recipes>/`;
- checkpoints: a checkpoint saves its task's `name` under the key "task", and `load_run_model` (loader.py) finds
  the spec by it to rebuild the config and the model.

Packages are imported by name, when first needed, so that declaring a task costs nothing.
"""

from __future__ import annotations

import argparse
import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..engine import config as engine_config
from ..engine.config import EngineConfig

__all__ = ["TaskSpec", "CONFIG_ROOT", "register", "unregister", "tasks", "get_task", "load_config",
           "list_recipes", "add_config_arguments", "config_from_args"]

# The recipes ship inside the package (the repository's top-level configs/ links here), so an installed
# `weightformer` finds them too.
CONFIG_ROOT = Path(__file__).resolve().parents[1] / "configs"


@dataclass(frozen=True)
class TaskSpec:
    """What the CLI, the recipe lookup and the checkpoint loader need to know about one task."""

    name: str  # Task.name: the "task" key of its checkpoints
    command: str  # `weightformer COMMAND ...`
    package: str  # the module exporting `config` and `task` (and holding `cli` when it has verbs besides train)
    config: str  # its EngineConfig subclass, by name in `package`
    task: str  # its Task subclass, by name in `package`
    help: str  # its line in `weightformer --help`
    title: str = ""  # how messages name its checkpoints ("not a WeightFormer-DiT one"); default: `name`
    recipes: str | None = None  # folder of its recipes under weightformer/configs/ ("" the top level); None: none
    default_recipe: str | None = None
    # "train" is the same for every task; the others come from `<package>.cli.VERBS`. No verbs at all: the
    # command is one parser, `<package>.cli.COMMAND` (the probe suite).
    verbs: tuple[str, ...] = ("train",)
    shortcuts: tuple[str, ...] = ()  # verbs also reachable as `weightformer VERB` (the classifier's)
    # A function of `package`, (config, checkpoint extras) -> the bare model, for models that depend on the data
    # (a class count, latent channels); None: `task(config).build_model()`.
    checkpoint_model: str | None = None
    train: str | None = None  # a function of `package` that trains a config; None: the engine's fit(task(config))

    def _attribute(self, name: str) -> Any:
        return getattr(importlib.import_module(self.package), name)

    @property
    def config_class(self) -> type[EngineConfig]:
        return self._attribute(self.config)

    @property
    def task_class(self) -> type:
        return self._attribute(self.task)

    @property
    def recipe_dir(self) -> Path:
        """Its recipes' folder; for a task without recipes, one that does not exist (only .yaml paths work)."""
        return CONFIG_ROOT / ("-" if self.recipes is None else self.recipes)

    @property
    def kind(self) -> str:
        return self.title or self.name

    def cli_module(self) -> Any | None:
        """`<package>.cli`, which defines the verbs besides train; None when the package has none."""
        name = f"{self.package}.cli"
        try:
            return importlib.import_module(name)
        except ModuleNotFoundError as error:
            if error.name != name:  # the module exists, something it imports does not
                raise
            return None

    def build_checkpoint_model(self, cfg: EngineConfig, extras: dict[str, Any]) -> Any:
        """The bare model (fresh weights, on the CPU) that a checkpoint of this task with `cfg` holds."""
        if self.checkpoint_model is not None:
            return self._attribute(self.checkpoint_model)(cfg, extras)
        return self.task_class(cfg).build_model()

    def run_training(self, cfg: EngineConfig) -> dict[str, Any]:
        """Train (or resume) the run `cfg` describes; its final metrics, run folder and model."""
        if self.train is not None:
            return self._attribute(self.train)(cfg)
        from ..engine.loop import fit

        return fit(self.task_class(cfg))


_TASKS: dict[str, TaskSpec] = {}


def register(spec: TaskSpec) -> TaskSpec:
    """Add a task; its name (checkpoints) and command (CLI) must be new."""
    for other in _TASKS.values():
        if spec.name == other.name or spec.command == other.command:
            raise ValueError(f"Task {spec.name!r} (command {spec.command!r}) clashes with {other.name!r} "
                             f"(command {other.command!r}).")
    _TASKS[spec.name] = spec
    return spec


def unregister(name: str) -> None:
    _TASKS.pop(name, None)


def tasks() -> list[TaskSpec]:
    """The registered tasks, in registration order."""
    return list(_TASKS.values())


def get_task(name: str | TaskSpec) -> TaskSpec:
    """The task registered under `name` (a checkpoint's "task" key); a one-line ValueError for any other."""
    if isinstance(name, TaskSpec):
        return name
    if name not in _TASKS:
        raise ValueError(f"Unknown task {name!r}; known tasks: {', '.join(_TASKS)}.")
    return _TASKS[name]


#################################################################################
#                        Recipes and config flags, per task                     #
#################################################################################


def list_recipes(task: str | TaskSpec) -> list[str]:
    """Names of the recipes a task ships in configs/."""
    return engine_config.list_recipes(get_task(task).recipe_dir)


def load_config(task: str | TaskSpec, recipe: str | Path | None = None, **overrides: Any) -> EngineConfig:
    """The task's config: its dataclass defaults, updated by a recipe (a bundled name or a .yaml path; default:
    the task's default recipe), updated by `overrides`."""
    spec = get_task(task)
    return engine_config.load_config(spec.config_class, spec.recipe_dir,
                                     recipe or spec.default_recipe, **overrides)


def add_config_arguments(parser: argparse.ArgumentParser, task: str | TaskSpec) -> None:
    """`--config NAME|PATH` plus one `--<key>` flag per config value of the task (values parsed as YAML)."""
    spec = get_task(task)
    engine_config.add_config_arguments(parser, spec.config_class, spec.recipe_dir,
                                       spec.default_recipe)


def config_from_args(args: argparse.Namespace, task: str | TaskSpec) -> EngineConfig:
    spec = get_task(task)
    return engine_config.config_from_args(args, spec.config_class, spec.recipe_dir)


#################################################################################
#                                  The tasks                                    #
#################################################################################

register(TaskSpec(
    "classification", "classify", "weightformer.tasks.classification", "ClassificationConfig",
    "ClassificationTask", help="image classification: train, evaluate or apply a WeightFormer (or any timm model)",
    recipes="", default_recipe="synthetic", verbs=("train", "eval", "predict"),
    shortcuts=("train", "eval", "predict"), checkpoint_model="checkpoint_model"))
register(TaskSpec(
    "segmentation", "segment", "weightformer.tasks.segmentation", "SegmentationConfig", "SegmentationTask",
    help="semantic segmentation: train, evaluate or apply UperNet on WeightFormer", recipes="segmentation",
    default_recipe="synthetic", verbs=("train", "eval", "predict")))
register(TaskSpec(
    "detection", "detect", "weightformer.tasks.detection", "DetectionConfig", "DetectionTask",
    help="detection and instance segmentation: train, evaluate or apply Mask R-CNN on WeightFormer",
    recipes="detection", default_recipe="synthetic", verbs=("train", "eval", "predict"),
    checkpoint_model="checkpoint_model"))
register(TaskSpec(
    "generation", "dit", "weightformer.tasks.generation", "GenerationConfig", "GenerationTask",
    help="WeightFormer-DiT: class-conditional generation", title="WeightFormer-DiT", recipes="generation",
    default_recipe="synthetic", verbs=("train", "extract", "sample", "fid"), checkpoint_model="checkpoint_model",
    train="train"))
register(TaskSpec(
    "probe", "probe", "weightformer.tasks.probes", "ProbeConfig", "ProbeTask",
    help="long-range probes: generated tasks only a relation between distant regions solves", verbs=()))
