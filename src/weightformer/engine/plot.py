"""Loss and accuracy curves of a run, drawn from its metrics.jsonl."""

from __future__ import annotations

import json
from pathlib import Path

__all__ = ["read_metrics", "plot_run"]


def read_metrics(run_dir: str | Path) -> list[dict]:
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"No metrics at {path}: is {run_dir} a training run folder?")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def plot_run(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Draw training loss (per log interval and per epoch) and validation top-1 / top-5 to a PNG; return its path.

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
        for key in ("val_top1", "val_top5", "val_ema_top1"):
            points = [(r["epoch"], r[key]) for r in epochs if key in r]
            if points:
                ax_acc.plot(*zip(*points, strict=True), "o-", label=key.removeprefix("val_"))
    ax_loss.set(xlabel="epoch", ylabel="loss", title="loss")
    ax_acc.set(xlabel="epoch", ylabel="accuracy (%)", title="validation accuracy")
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
