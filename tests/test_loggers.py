"""W&B and MLflow beside metrics.jsonl (`--logger wandb,mlflow`), offline: the same values at the same steps, the
config as hyperparameters, one tracker run across a preemption and its resumption; a missing package stops the
run in one line before anything is written."""

from __future__ import annotations

import json
import struct
import sys
import time

import pytest

from engine_helpers import NumbersTask, numbers_config
from weightformer.cli.main import main
from weightformer.engine import fit


def _preempted_then_resumed(tmp_path, logger: str, when_stopped=None):
    """A run stopped by SIGUSR1 in step 6 of 16, then resumed to the end; its folder and metrics.jsonl lines.
    when_stopped(run folder, tracker run id) looks at the tracker between the two."""
    stopped = fit(NumbersTask(numbers_config(tmp_path, logger=logger, signal_at_step=5, model_ema=True)))
    assert stopped["preempted"]
    ids = json.loads((stopped["run_dir"] / "loggers.json").read_text())
    if when_stopped is not None:
        when_stopped(stopped["run_dir"], ids[logger])
    # W&B names an offline run's folder by the second it started (offline-run-YYYYMMDD_HHMMSS-ID): a resumption
    # in the same second would write into the first session's folder, so the two sessions start a second apart.
    time.sleep(1.1)
    resumed = fit(NumbersTask(numbers_config(tmp_path, logger=logger, resume="auto", model_ema=True)))
    assert resumed["run_dir"] == stopped["run_dir"] and resumed["step"] == 16
    assert json.loads((resumed["run_dir"] / "loggers.json").read_text()) == ids  # the same tracker run
    lines = [json.loads(line) for line in (resumed["run_dir"] / "metrics.jsonl").read_text().splitlines()]
    return resumed["run_dir"], ids[logger], lines


def _expected(lines: list[dict], kind: str, key: str) -> dict[int, float]:
    return {line["step"]: line[key] for line in lines if line["kind"] == kind and line.get(key) is not None}


def test_mlflow_logs_every_metrics_line_and_the_config_into_one_run(tmp_path):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    def client_of(run_dir):
        return MlflowClient(tracking_uri=(run_dir / "mlruns").resolve().as_uri())

    def preempted(run_dir, run_id):
        assert client_of(run_dir).get_run(run_id).info.status == "KILLED"  # closed on preemption

    run_dir, run_id, lines = _preempted_then_resumed(tmp_path, "mlflow", preempted)
    client = client_of(run_dir)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "numbers"
    for kind, key in [("train", "loss"), ("train", "lr"), ("epoch", "val_loss"), ("epoch", "val_ema_loss"),
                      ("epoch", "train_loss")]:
        history = {m.step: m.value for m in client.get_metric_history(run_id, f"{kind}/{key}")}
        assert history == pytest.approx(_expected(lines, kind, key)), key
    assert sorted(_expected(lines, "train", "loss")) == list(range(1, 17))
    assert run.data.params["lr"] == "0.05" and run.data.params["opt"] == "sgd"
    assert run.data.params["logger"] == '["mlflow"]' and run.data.params["resume"] == "None"
    assert run.data.tags["resumed.resume"] == "auto"  # a params never changes; the resumption's value is a tag


def _wandb_records(path):
    """The records of an offline W&B run file (LevelDB's log format: 32 KiB blocks of checksummed chunks)."""
    from wandb.proto import wandb_internal_pb2

    data, block, pending = path.read_bytes(), 32768, b""
    assert data[:4] == b":W&B"
    pos = 7  # the file header: ident, magic, version
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # no room for a chunk header: the rest of the block is padding
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        pending, pos = pending + data[pos + 7:pos + 7 + length], pos + 7 + length
        if kind in (1, 4):  # a whole record, or the last chunk of one
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            pending = b""
            yield record


def _closed_wandb_records(path, timeout: float = 60.0) -> list:
    """The records of an offline W&B run once its file ends with the run's exit record: W&B's service process
    writes the file, and may still be flushing it when `finish()` has returned."""
    from google.protobuf.message import DecodeError

    deadline = time.monotonic() + timeout
    while True:
        try:
            records = list(_wandb_records(path))
            if records and records[-1].WhichOneof("record_type") == "exit":
                return records
        except DecodeError:  # a record still being written
            pass
        assert time.monotonic() < deadline, f"{path} has no exit record after {timeout} s"
        time.sleep(0.2)


def _wandb_rows(records, kind: str) -> list[dict]:
    """The history rows (kind "history") or config updates (kind "config") of an offline run, as dicts."""
    rows = []
    for record in records:
        if record.WhichOneof("record_type") == kind:
            items = record.history.item if kind == "history" else record.config.update
            rows.append({i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in items})
    return rows


def test_wandb_logs_offline_every_metrics_line_and_the_config_into_one_run(tmp_path):
    pytest.importorskip("wandb")
    run_dir, run_id, lines = _preempted_then_resumed(tmp_path, "wandb")
    files = sorted((run_dir / "wandb").glob(f"offline-run-*-{run_id}/run-{run_id}.wandb"))
    assert len(files) == 2  # the run and its resumption, one id: `wandb sync` uploads both to one W&B run
    records = [r for path in files for r in _closed_wandb_records(path)]
    history = _wandb_rows(records, "history")
    for kind, key in [("train", "loss"), ("train", "lr"), ("epoch", "val_loss"), ("epoch", "val_ema_loss")]:
        logged = {row["step"]: row[f"{kind}/{key}"] for row in history if f"{kind}/{key}" in row}
        assert logged == pytest.approx(_expected(lines, kind, key)), key
    config = {k: v for update in _wandb_rows(records, "config") for k, v in update.items()}
    assert config["lr"] == 0.05 and config["opt"] == "sgd" and config["logger"] == ["wandb"]
    assert config["resume"] == "auto"  # the resumption's values


def test_a_missing_tracker_package_stops_the_run_in_one_line_before_anything_is_written(tmp_path, monkeypatch,
                                                                                         capsys):
    monkeypatch.setitem(sys.modules, "wandb", None)  # what `import wandb` finds when it is not installed
    with pytest.raises(ModuleNotFoundError, match=r"--logger wandb needs the wandb package: pip install wandb"):
        fit(NumbersTask(numbers_config(tmp_path / "api", logger=["wandb"])))
    assert not (tmp_path / "api").exists()
    argv = ["train", "--data-dir", "synthetic", "--output-dir", str(tmp_path / "cli"), "--logger", "mlflow,wandb"]
    monkeypatch.setitem(sys.modules, "mlflow", None)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("weightformer train: error: --logger mlflow needs the mlflow-skinny package") and \
        err.count("\n") == 1
    assert not (tmp_path / "cli").exists()
    assert main(argv[:-1] + ["comet"]) == 2
    assert "logger must be a list of values among wandb or mlflow, got ['comet']" in capsys.readouterr().err
