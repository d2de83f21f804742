"""The task commands, derived from the task registry: `weightformer COMMAND VERB` for every task and verb.

`train` is the same for every task: its recipe flag and one flag per config value come from the task's config
class, and it runs the task on the engine. A task's other verbs are `Verb`s in its package's `cli` module
(`VERBS`, by name), which may also say how a finished run is summed up (`summarise(result) -> list[str]`).
A task's `shortcuts` are also top-level commands (`weightformer eval` is `weightformer classify eval`).
"""

from __future__ import annotations

import argparse
import functools
from typing import Any

from ..tasks.registry import TaskSpec, add_config_arguments, config_from_args, list_recipes, tasks
from .options import Verb

__all__ = ["add_task_commands"]


def add_task_commands(subparsers: argparse._SubParsersAction) -> None:
    """One command per registered task, with its verbs; then the shortcuts."""
    shortcuts = []
    for spec in tasks():
        verbs = task_verbs(spec)
        if not spec.verbs:  # one command, no verbs
            _add_verb(subparsers, spec.command, spec.cli_module().COMMAND, help=spec.help)
            continue
        parser = subparsers.add_parser(spec.command, help=spec.help, description=spec.help)
        commands = parser.add_subparsers(dest="verb", metavar="VERB", required=True)
        for name, verb in verbs.items():
            _add_verb(commands, name, verb)
        shortcuts += [(name, spec, verbs[name]) for name in spec.shortcuts]
    for name, spec, verb in shortcuts:
        _add_verb(subparsers, name, verb, help=f"{verb.help} (= {spec.command} {name})")


def task_verbs(spec: TaskSpec) -> dict[str, Verb]:
    """{verb: Verb} of a task, in its declared order."""
    module = spec.cli_module()
    defined = getattr(module, "VERBS", {})
    return {name: train_verb(spec) if name == "train" else defined[name] for name in spec.verbs}


def _add_verb(commands: argparse._SubParsersAction, name: str, verb: Verb, help: str | None = None) -> None:
    parser = commands.add_parser(name, help=help or verb.help, description=verb.description or verb.help)
    verb.arguments(parser)
    parser.set_defaults(func=verb.run)


def train_verb(spec: TaskSpec) -> Verb:
    recipes = ", ".join(list_recipes(spec)) or "none bundled"
    where = f"configs/{spec.recipes}/" if spec.recipes else "configs/"
    return Verb(
        help=f"train or resume a {spec.kind} run (default recipe: {spec.default_recipe or 'the config defaults'})",
        description=f"Train a {spec.kind} model on the training engine with a recipe ({where}: {recipes}; or a "
        f".yaml path); every config value is also a flag. Data parallel: torchrun --nproc_per_node=N -m "
        f"weightformer {spec.command} train .... SIGTERM or SIGUSR1 write a checkpoint and end the run (exit 0); "
        "--resume auto continues it.",
        arguments=functools.partial(add_config_arguments, task=spec),
        run=functools.partial(_run_train, spec=spec),
    )


def _run_train(args: argparse.Namespace, spec: TaskSpec) -> int:
    from ..engine.distributed import is_primary_process

    result = spec.run_training(config_from_args(args, spec))
    if is_primary_process():
        for line in summarise(spec, result):
            print(line)
    return 0


def summarise(spec: TaskSpec, result: dict[str, Any]) -> list[str]:
    """The lines that end a run: the task's own (its cli module's `summarise`), else its best metric."""
    if result.get("preempted"):
        return [f"Preempted at step {result['step']}: run {result['run_dir']}; continue with --resume auto."]
    own = getattr(spec.cli_module(), "summarise", None)
    if own is not None:
        return own(result)
    metric = spec.task_class.best_metric
    if f"val_{metric}" not in result:
        return [f"Done: run {result['run_dir']}"]
    return [f"Done: val {metric} {result[f'val_{metric}']:.4g}, best {result[f'best_{metric}']:.4g}, "
            f"run {result['run_dir']}"]
