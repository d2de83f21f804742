"""Experiment trackers beside metrics.jsonl and TensorBoard: Weights & Biases and MLflow (`--logger wandb,mlflow`).

Both are optional packages (`pip install "weightformer[loggers]"`). They receive what metrics.jsonl receives,
as `<kind>/<key>` scalars at the run's optimiser step (`train/loss` every log_interval steps, `epoch/val_top1` at
each epoch's end: TensorBoard's names), and the resolved config as the run's hyperparameters. Rank 0 alone logs.

Nothing reaches the network unless asked to: W&B runs offline by default (`wandb_mode`, into
`<run>/wandb/offline-run-*`, uploaded later with `wandb sync`), with its system monitor off (it samples every
15 s and probes cloud metadata addresses), and MLflow writes a file store under the run folder
(`mlflow_uri`, default `file:<run>/mlruns`) with its usage telemetry off.

A resumed run continues the same W&B run id and MLflow run id: both are kept in `<run>/loggers.json`.
"""

from __future__ import annotations

import importlib
import json
import os
import time
from pathlib import Path
from typing import Any, Protocol

__all__ = ["TRACKERS", "IDS_FILENAME", "Tracker", "require_trackers", "open_trackers", "scalars"]

# --logger name -> (module imported, what to pip install)
TRACKERS = {"wandb": ("wandb", "wandb"), "mlflow": ("mlflow", "mlflow-skinny")}
IDS_FILENAME = "loggers.json"
# How a run ended (Tracker.close) in MLflow's words; W&B only tells preempted runs apart.
_MLFLOW_STATUS = {"finished": "FINISHED", "preempted": "KILLED", "failed": "FAILED"}
_MLFLOW_BATCH = 100  # MLflow takes at most 100 params per log_batch call
_MLFLOW_PARAM_LENGTH = 6000  # and param values of at most 6000 characters


class Tracker(Protocol):
    run_id: str

    def log(self, kind: str, step: int, values: dict[str, Any]) -> None: ...

    def close(self, status: str) -> None: ...


def _import(name: str) -> Any:
    """A tracker's module, or a one-line ModuleNotFoundError saying what to install."""
    # Set before the first import: mlflow's usage telemetry and wandb's error reports would reach the network.
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("WANDB_ERROR_REPORTING", "false")
    module, package = TRACKERS[name]
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as error:
        if error.name != module:  # installed, but something it imports is not
            raise ModuleNotFoundError(f"--logger {name}: importing {module} failed: {error}", name=error.name) from None
        raise ModuleNotFoundError(f"--logger {name} needs the {package} package: pip install {package} (or pip "
                                  "install 'weightformer[loggers]')", name=module) from None


def require_trackers(names: list[str]) -> None:
    """Import every tracker named, so that a missing package stops the run before anything is written."""
    for name in names:
        _import(name)


def scalars(kind: str, values: dict[str, Any]) -> dict[str, float]:
    """The numbers of one metrics line as `<kind>/<key>` (None, booleans and text are not plotted)."""
    return {f"{kind}/{k}": float(v) for k, v in values.items()
            if isinstance(v, int | float) and not isinstance(v, bool)}


class WandbTracker:
    """A W&B run in `<run>/wandb/`; the x-axis of every chart is the optimiser step (`step`).

    The step is logged as a value, not as W&B's own step: W&B drops lines whose step is not larger than the last
    one, and a run resumed from an earlier checkpoint (after a crash) logs some steps again."""

    def __init__(self, run_dir: Path, config: dict[str, Any], run_id: str | None) -> None:
        wandb = _import("wandb")
        offline = config["wandb_mode"] == "offline"
        quiet = dict(x_disable_stats=offline, x_disable_meta=offline, x_disable_machine_info=offline)
        known = getattr(wandb.Settings, "model_fields", quiet)  # (experimental names: only those this version has)
        settings = wandb.Settings(mode=config["wandb_mode"], console="off", silent=True, disable_git=offline,
                                  save_code=False, **{k: v for k, v in quiet.items() if k in known})
        self.run = wandb.init(project=config["tracker_project"], name=run_dir.name, dir=str(run_dir), id=run_id,
                              resume="allow" if run_id else None, settings=settings)
        self.run.config.update(config, allow_val_change=True)  # a resumption may change free values
        self.run_id = self.run.id
        self.run.define_metric("step")
        for kind in ("train", "epoch"):
            self.run.define_metric(f"{kind}/*", step_metric="step")

    def log(self, kind: str, step: int, values: dict[str, Any]) -> None:
        self.run.log({"step": step, **scalars(kind, values)})

    def close(self, status: str) -> None:
        if status == "preempted":
            self.run.mark_preempting()
        self.run.finish(exit_code=1 if status == "failed" else 0)


class MlflowTracker:
    """An MLflow run in the experiment `tracker_project`, its config as params, its metrics at each step."""

    def __init__(self, run_dir: Path, config: dict[str, Any], run_id: str | None) -> None:
        uri = config["mlflow_uri"] or (run_dir / "mlruns").resolve().as_uri()
        if uri.startswith("file:"):  # MLflow 3 keeps the file store only on request
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        _import("mlflow")
        from mlflow.entities import Metric, Param
        from mlflow.exceptions import MlflowException
        from mlflow.tracking import MlflowClient

        self._metric, self.client = Metric, MlflowClient(tracking_uri=uri)
        try:
            self.run_id = self.client.get_run(run_id).info.run_id if run_id else None
        except MlflowException:  # another store (a new mlflow_uri), or the run was deleted: start a new one
            self.run_id = None
        if self.run_id is None:
            self.run_id = self._create(config["tracker_project"], run_dir.name)
        else:
            self.client.update_run(self.run_id, status="RUNNING")
        self._log_params(config, Param)

    def _create(self, experiment: str, name: str) -> str:
        found = self.client.get_experiment_by_name(experiment)
        experiment_id = found.experiment_id if found else self.client.create_experiment(experiment)
        return self.client.create_run(experiment_id, run_name=name).info.run_id

    def _log_params(self, config: dict[str, Any], param: type) -> None:
        """The config as params. MLflow's params never change: on resumption new keys are added and changed
        values (overrides, free fields) are set as `resumed.<key>` tags instead."""
        logged = self.client.get_run(self.run_id).data.params
        values = {k: (json.dumps(v) if isinstance(v, list | dict) else str(v))[:_MLFLOW_PARAM_LENGTH]
                  for k, v in config.items()}
        new = [param(k, v) for k, v in values.items() if k not in logged]
        for i in range(0, len(new), _MLFLOW_BATCH):
            self.client.log_batch(self.run_id, params=new[i:i + _MLFLOW_BATCH])
        for key, value in values.items():
            if key in logged and logged[key] != value:
                self.client.set_tag(self.run_id, f"resumed.{key}", value)

    def log(self, kind: str, step: int, values: dict[str, Any]) -> None:
        now = int(time.time() * 1000)
        metrics = [self._metric(k, v, now, step) for k, v in scalars(kind, values).items()]
        if metrics:
            self.client.log_batch(self.run_id, metrics=metrics)

    def close(self, status: str) -> None:
        self.client.set_terminated(self.run_id, _MLFLOW_STATUS[status])


_CLASSES = {"wandb": WandbTracker, "mlflow": MlflowTracker}


def open_trackers(names: list[str], run_dir: Path, config: dict[str, Any]) -> list[Tracker]:
    """Start (or, with ids in `<run>/loggers.json`, continue) each tracker named; record their run ids there."""
    path = run_dir / IDS_FILENAME
    ids = json.loads(path.read_text()) if path.is_file() else {}
    trackers = [_CLASSES[name](run_dir, config, ids.get(name)) for name in names]
    if trackers:
        ids.update({name: tracker.run_id for name, tracker in zip(names, trackers, strict=True)})
        path.write_text(json.dumps(ids, indent=2) + "\n")
    return trackers
