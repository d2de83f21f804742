"""Loss and validation curves of a run (any task), drawn from its metrics.jsonl."""

from __future__ import annotations

import json
from pathlib import Path

__all__ = ["read_metrics", "plot_run"]


def read_metrics(run_dir: str | Path) -> list[dict]:
    """The records of <run_dir>/metrics.jsonl. A last line cut short (a run killed mid-write) is left out."""
    run_dir = Path(run_dir)
    if run_dir.is_file():
        raise ValueError(f"{run_dir} is a file: pass a training run folder (it holds metrics.jsonl).")
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"No metrics at {path}: is {run_dir} a training run folder?")
    try:
        lines = [line for line in path.read_text().splitlines() if line.strip()]
    except UnicodeDecodeError:
        raise ValueError(f"{path} is not a text file of JSON lines.") from None
    records = []
    for number, line in enumerate(lines, start=1):
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            if number == len(lines) and records:
                continue  # the run was killed while writing its last line
            raise ValueError(f"{path} line {number} is not a JSON record: {line[:60]!r}.") from None
        if not isinstance(record, dict) or "kind" not in record or "step" not in record:
            raise ValueError(f"{path} line {number} is not a metrics record (it needs kind and step).")
        records.append(record)
    if not records:
        raise ValueError(f"{path} holds no metrics yet: the run has not logged a step.")
    return records


def _quality_metrics(epochs: list[dict]) -> list[str]:
    """The validation metrics a task reports about quality: not its loss, counts or speed."""
    keys = {k for r in epochs for k in r if k.startswith("val_")}
    return sorted(k for k in keys if not any(w in k for w in ("loss", "images", "samples", "per_second")))


def plot_run(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Draw the training loss (per log interval and per epoch) and the task's validation metrics (top-1 / top-5
    for classification) to a PNG; return its path.

    A resumed run may have logged some steps twice (after its last checkpoint, before the crash); the later
    record of a step wins.
    """
    import matplotlib

    matplotlib.use("Agg")  # files only, no display needed
    import matplotlib.pyplot as plt

    records = read_metrics(run_dir)
    by_kind: dict[str, dict[int, dict]] = {"train": {}, "epoch": {}}
    for record in records:
        by_kind.setdefault(record["kind"], {})[record["step"]] = record
    train = [by_kind["train"][s] for s in sorted(by_kind["train"])]
    epochs = [by_kind["epoch"][s] for s in sorted(by_kind["epoch"])]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 4))
    if train:
        ax_loss.plot([r["epoch"] for r in train], [r["loss"] for r in train], lw=1, alpha=0.6, label="train (interval)")
    if epochs:
        ax_loss.plot([r["epoch"] for r in epochs], [r["train_loss"] for r in epochs], "o-", label="train (epoch)")
        if any("val_loss" in r for r in epochs):
            ax_loss.plot([r["epoch"] for r in epochs if "val_loss" in r],
                         [r["val_loss"] for r in epochs if "val_loss" in r], "s-", label="val")
        for key in _quality_metrics(epochs):
            points = [(r["epoch"], r[key]) for r in epochs if key in r]
            ax_acc.plot(*zip(*points, strict=True), "o-", label=key.removeprefix("val_"))
    ax_loss.set(xlabel="epoch", ylabel="loss", title="loss")
    ax_acc.set(xlabel="epoch", title="validation metrics")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend()
    fig.suptitle(Path(run_dir).resolve().name)
    fig.tight_layout()
    out = Path(out) if out is not None else Path(run_dir) / "curves.png"
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
