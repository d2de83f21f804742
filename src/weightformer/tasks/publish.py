"""Publishing any task's model: a weights-only folder that rebuilds it without the training checkpoint or data.

`export_weights(RUN|CHECKPOINT, DIR)` (`weightformer export-weights`) writes, for every task of the registry:

- `model.safetensors`: the EMA weights by default (what the run evaluated as `val_ema_*`), else the trained ones;
- `config.json`: a "weightformer" section holding the task's name, the run's config and the checkpoint's extras
  (class names, category ids), which is everything `build_run_model` (loader.py) needs to build the model the
  way the task builds it; the classifier's folder is also timm's Hub layout (`save_pretrained`: architecture,
  model_args, pretrained_cfg, label_names), so timm's `local-dir:` and `hf-hub:` load it as before;
- `README.md`: a model card with the metrics the run logged for those weights (metrics.jsonl, or the checkpoint).

`from_pretrained(DIR)` (also `weightformer.from_pretrained`) rebuilds the model from such a folder, or from the
classifier's timm and release layouts (models/hub.py); `load_pretrained` returns it with its config and extras.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from safetensors.torch import save_file

from ..engine.checkpoint import CheckpointDir
from ..engine.config import EngineConfig
from ..engine.distributed import resolve_device
from ..models import hub
from ..models.checkpoint import HUB_FILENAME, load_checkpoint, read_state_dict
from ..models.weightformer import WeightFormer
from .loader import RunModel, build_run_model, load_run_model
from .registry import TaskSpec, get_task

__all__ = ["SECTION", "Exported", "resolve_checkpoint", "export_weights", "load_pretrained", "from_pretrained"]

SECTION = "weightformer"  # config.json's key for what rebuilds the model (timm ignores it)
FORMAT_VERSION = 1
CONFIG_FILENAME = hub.CONFIG_FILENAME
CARD_FILENAME = "README.md"
# The Hub's pipeline tag of each task's model card (none fits class-conditional generation or the probes).
_PIPELINE_TAGS = {"classification": "image-classification", "segmentation": "image-segmentation",
                  "detection": "object-detection"}


@dataclass
class Exported:
    """What `export_weights` wrote, and from which checkpoint."""

    folder: Path
    checkpoint: Path
    chosen: str  # why this checkpoint, in words ("best.pth: the run's best validation checkpoint")
    task: TaskSpec
    ema: bool  # whether model.safetensors holds the EMA weights
    step: int
    epoch: int
    metrics: dict[str, float] = field(default_factory=dict)
    metrics_from: str = ""  # where the metrics were read, in words

    def to_dict(self) -> dict[str, Any]:
        return {"folder": str(self.folder), "checkpoint": str(self.checkpoint), "chosen": self.chosen,
                "task": self.task.name, "weights": "ema" if self.ema else "trained", "step": self.step,
                "epoch": self.epoch, "metrics": self.metrics, "metrics_from": self.metrics_from}


def resolve_checkpoint(source: str | Path) -> tuple[Path, str]:
    """(checkpoint file, why it was chosen) for a checkpoint file or a run folder: its best.pth (the best
    validation value so far), or its latest checkpoint when it has none (no evaluation yet)."""
    path = Path(source)
    if not path.is_dir():
        return path, "the checkpoint given"
    if (path / CONFIG_FILENAME).is_file():
        raise ValueError(f"{path} is an exported folder already (it has {CONFIG_FILENAME}): load it with "
                         "weightformer.from_pretrained, or export a run folder or a training checkpoint.")
    checkpoints = CheckpointDir(path / "checkpoints")
    if checkpoints.best.is_file():
        return checkpoints.best, "best.pth, the run's best validation checkpoint"
    latest = checkpoints.latest()
    if latest is None:
        raise FileNotFoundError(f"{path} is not a run folder: it has no checkpoints/best.pth or last.pth.")
    return latest, f"{latest.name}, the run's latest checkpoint (it has no best.pth: no evaluation yet)"


def _numbers(values: dict[str, Any]) -> dict[str, float]:
    return {k: v for k, v in values.items() if isinstance(v, int | float) and not isinstance(v, bool)}


def _epoch_lines(log: Path, step: int) -> list[dict[str, Any]]:
    """The end-of-epoch lines of a metrics.jsonl logged up to `step`, in file order."""
    lines = []
    for text in log.read_text().splitlines():
        try:
            line = json.loads(text)
        except json.JSONDecodeError:  # a line cut short by a crash
            continue
        if isinstance(line, dict) and line.get("kind") == "epoch" and line.get("step", 0) <= step:
            lines.append(line)
    return lines


def run_metrics(checkpoint: Path, state: dict[str, Any], spec: TaskSpec) -> tuple[dict[str, float], str]:
    """(metrics, where from): the run's epoch line logged when `checkpoint` was written (the last one before it
    for a mid-epoch checkpoint), from the metrics.jsonl of its run folder; else the checkpoint's best value."""
    step, log = int(state.get("step", 0)), checkpoint.resolve().parent.parent / "metrics.jsonl"
    lines = _epoch_lines(log, step) if checkpoint.resolve().parent.name == "checkpoints" and log.is_file() else []
    if lines:
        # The last line of that step: a run resumed from an earlier checkpoint logs its steps again.
        exact = [line for line in lines if line["step"] == step]
        line = (exact or lines)[-1]
        when = "" if exact else ", the last evaluation before this checkpoint"
        metrics = _numbers({k: v for k, v in line.items() if k not in ("kind", "step", "time")})
        return metrics, f"{log}: epoch {line.get('epoch')}, step {line['step']}{when}"
    best = state.get("best")
    name = f"best_{getattr(spec.task_class, 'best_metric', 'loss')}"
    return ({name: best} if isinstance(best, int | float) else {}), "the checkpoint (no metrics.jsonl beside it)"


def _json_values(values: dict[str, Any]) -> dict[str, Any]:
    """The values that JSON holds as they are (class names, category ids, counters), without the others."""
    kept = {}
    for key, value in values.items():
        try:
            json.dumps(value)
        except (TypeError, ValueError):
            continue
        kept[key] = value
    return kept


def _plain_tensors(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A state dict safetensors can write: contiguous CPU tensors, none sharing memory with another."""
    seen, tensors = set(), {}
    for name, tensor in state.items():
        tensor = tensor.detach().cpu().contiguous()
        pointer = tensor.untyped_storage().data_ptr()
        tensors[name] = tensor.clone() if pointer in seen else tensor
        seen.add(pointer)
    return tensors


def _write_weights(model: nn.Module, folder: Path, section: dict[str, Any]) -> None:
    """model.safetensors and config.json: timm's Hub layout for a WeightFormer classifier, else the section alone
    (no "architecture" key, which timm would take for one of its classifiers)."""
    if isinstance(model, WeightFormer):
        names = section["extras"].get("class_names")
        hub.save_pretrained(model, folder, model_config={SECTION: section, **({"label_names": names} if names else {})})
        return
    save_file(_plain_tensors(model.state_dict()), str(folder / HUB_FILENAME), metadata={"format": "pt"})
    (folder / CONFIG_FILENAME).write_text(json.dumps({SECTION: section}, indent=2) + "\n")


def _output_folder(output: str | Path) -> Path:
    folder = Path(output)
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"{folder} is a file: -o names the folder to write config.json, {HUB_FILENAME} and "
                         f"{CARD_FILENAME} into.")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def export_weights(source: str | Path, output: str | Path, ema: bool = True) -> Exported:
    """Write the weights of a run folder or training checkpoint of any task to `output` (created if needed):
    model.safetensors (EMA weights by default; `ema=False`: the trained ones), config.json and README.md."""
    checkpoint, chosen = resolve_checkpoint(source)
    state = read_state_dict(checkpoint)
    run = load_run_model(checkpoint, ema=ema, state=state)
    metrics, metrics_from = run_metrics(checkpoint, state, run.task)
    exported = Exported(Path(output), checkpoint, chosen, run.task, run.ema, int(state.get("step", 0)),
                        int(state.get("epoch", 0)), metrics, metrics_from)
    section = {"format": FORMAT_VERSION, "task": run.task.name,
               "config": {k: v for k, v in state["config"].items() if k != "initial_checkpoint"},
               "extras": _json_values(run.extras), "weights": "ema" if run.ema else "trained",
               "source": {"checkpoint": str(checkpoint), "step": exported.step, "epoch": exported.epoch},
               "metrics": metrics}
    folder = _output_folder(output)  # only once everything has been read: a bad source leaves nothing
    _write_weights(run.model, folder, section)
    card = model_card(exported, run.config, isinstance(run.model, WeightFormer), run.extras.get("class_names"))
    (folder / CARD_FILENAME).write_text(card)
    return exported


#################################################################################
#                                 The model card                                #
#################################################################################


def _front_matter(spec: TaskSpec) -> list[str]:
    tags = ["weightformer", spec.name] + (["timm", "image-classification"] if spec.name == "classification" else [])
    pipeline = _PIPELINE_TAGS.get(spec.name)
    return ["---", "library_name: weightformer", "tags:", *[f"- {tag}" for tag in tags],
            *([f"pipeline_tag: {pipeline}"] if pipeline else []), "---", ""]


def _metric_table(metrics: dict[str, float]) -> list[str]:
    rows = [f"| {key} | {value:.6g} |" for key, value in metrics.items()]
    return ["| metric | value |", "| --- | --- |", *rows] if rows else ["(the run logged no metrics)"]


def model_card(exported: Exported, cfg: EngineConfig, timm_layout: bool = False,
               class_names: list[str] | None = None) -> str:
    """README.md of an exported folder: what the model is, which weights, the run's metrics, how to load it."""
    spec, weights = exported.task, "EMA" if exported.ema else "trained (not EMA)"
    network = ", ".join(f"{key} `{getattr(cfg, key)}`" for key in ("model", "backbone") if hasattr(cfg, key))
    classes = [f"- Classes ({len(class_names)}): " + ", ".join(map(str, class_names[:20]))
               + (", ..." if len(class_names) > 20 else "") + "."] if class_names else []
    lines = [
        *_front_matter(spec), f"# {exported.folder.name}", "",
        f"A {spec.kind} model trained with `weightformer {spec.command} train`" + (f": {network}." if network else "."),
        "",
        f"- Weights: the {weights} weights of `{exported.checkpoint}` ({exported.chosen}), epoch {exported.epoch}, "
        f"step {exported.step}.",
        f"- Recipe: `{cfg.recipe}`; the run's whole config is in config.json (\"{SECTION}\" → \"config\").",
        *classes, "",
        "## Metrics", "", f"From {exported.metrics_from}"
        + ("; the EMA weights were evaluated as `val_ema_*`." if exported.ema else "."), "",
        *_metric_table(exported.metrics), "",
        "## Use", "", "```python", "import weightformer", "",
        f'model = weightformer.from_pretrained("{exported.folder.name}")  # the folder, or its Hub repo id',
        "```", "",
    ]
    if timm_layout:
        lines[-1:-1] = ["timm reads this folder too: "
                        f'`timm.create_model("local-dir:{exported.folder.name}", pretrained=True)`.', ""]
    return "\n".join(lines)


#################################################################################
#                                   Loading                                     #
#################################################################################


def _read_config(folder: Path) -> dict[str, Any]:
    path = folder / CONFIG_FILENAME
    if not path.is_file():
        raise FileNotFoundError(f"{folder} has no {CONFIG_FILENAME}; a Hub folder holds {CONFIG_FILENAME} and "
                                f"{HUB_FILENAME} (write one with `weightformer export-weights`).")
    try:
        config = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{path} is not valid JSON ({error}).") from None
    if not isinstance(config, dict):
        raise ValueError(f"{path} holds a {type(config).__name__}, not a JSON object.")
    return config


def load_pretrained(source: str | Path, task: str | TaskSpec | None = None, device: str | torch.device = "cpu",
                    **overrides: Any) -> RunModel:
    """The model of a folder written by `export_weights` (or its Hub repo id), in eval mode on `device`, with
    its config and extras; no training checkpoint and no data needed.

    task: the task the caller expects; a folder of another task is refused in one line. overrides: run config
    values to change (`drop_path=0.1`, `model_kwargs={...}`), checked like the run's own.
    """
    folder = hub.resolve_folder(source)
    section = _read_config(folder).get(SECTION)
    if not isinstance(section, dict):
        raise ValueError(f"{folder}/{CONFIG_FILENAME} has no \"{SECTION}\" section: not written by "
                         "`weightformer export-weights` (a classifier's Hub folder loads with from_pretrained).")
    try:
        spec = get_task(section["task"])
    except (KeyError, ValueError) as error:
        raise ValueError(f"{folder}: {error}") from None
    expected = None if task is None else get_task(task)
    if expected is not None and spec != expected:
        raise ValueError(f"{folder} holds a {spec.kind} model, not a {expected.kind} one.")
    weights = folder / HUB_FILENAME
    if not weights.is_file():
        raise FileNotFoundError(f"{folder} has no {HUB_FILENAME}; a Hub folder holds {CONFIG_FILENAME} and it.")
    cfg, model = build_run_model(spec, {**section.get("config", {}), **overrides}, section.get("extras", {}))
    load_checkpoint(model, read_state_dict(weights), origin=weights, translate=False)
    return RunModel(model.to(resolve_device(device)).eval(), cfg, spec, section.get("extras", {}),
                    section.get("weights") == "ema")


def from_pretrained(source: str | Path, task: str | TaskSpec | None = None, device: str | torch.device = "cpu",
                    **kwargs: Any) -> nn.Module:
    """Any task's model, in eval mode, from a Hub-style folder (or repo id): one written by `export_weights`
    (kwargs: run config overrides), or a classifier in timm's or the release's layout (kwargs: constructor
    arguments). task: the task expected; a folder of another one is refused in one line."""
    folder = hub.resolve_folder(source)
    if SECTION in _read_config(folder):
        return load_pretrained(folder, task, device, **kwargs).model
    expected = None if task is None else get_task(task)
    if expected is not None and expected.name != "classification":
        raise ValueError(f"{folder} holds a classifier (timm's or the release's Hub layout), not a "
                         f"{expected.kind} model.")
    return hub.from_pretrained(folder, **kwargs).to(resolve_device(device)).eval()
