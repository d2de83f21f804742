"""The probe suite: every model on every task, knob value and seed, with the same budget; a table, JSON, a plot.

    from weightformer.tasks.probes import SuiteConfig, run_suite, format_table
    results = run_suite(SuiteConfig(models=["static", "weightformer", "vit"], out="probes"))
    print(format_table(results))

Each run trains on the engine (`train_probe`) for `steps` steps of `batch_size` fresh images and is scored on a
fixed validation split of the task (the same images for every model and seed). Runs are independent: each
goes to a fresh worker process, `jobs` at a time, with `threads` threads each (`jobs=0`: all in this process,
for quick checks). Results are written to
<out>/probes.json after each run, so an interrupted suite keeps what it finished and `resume` skips it.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import threading
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from ... import kernels
from ...analysis.bench import environment, load_average
from .data import PROBE_TASKS, Knobs, static_receptive_field
from .models import DEFAULT_SIZES, build_probe_model
from .published import NO_DISTANCE
from .task import ProbeConfig, train_probe

__all__ = ["SuiteConfig", "run_suite", "model_cost", "format_table", "summarise", "plot_suite", "PeakMemory",
           "DEFAULT_MODELS"]

DEFAULT_MODELS = ["static", "weightformer", "weightformer:linear=query_pool,conv=query_pool", "vit"]


@dataclass
class SuiteConfig:
    """What the suite runs: the product of tasks x resolutions x distances x models x seeds."""

    tasks: list[str] = field(default_factory=lambda: ["same_different"])
    models: list[str] = field(default_factory=lambda: list(DEFAULT_MODELS))
    seeds: list[int] = field(default_factory=lambda: [0])
    resolutions: list[int] = field(default_factory=lambda: [32])
    distances: list[float] = field(default_factory=lambda: [1.0])
    size: float = 1 / 8
    distractors: int = 0
    colours: int = 2
    item_size: int = 4  # psvrt
    contour_length: int = 6  # pathfinder
    sizes: dict[str, Any] = field(default_factory=lambda: dict(DEFAULT_SIZES))  # width, depth, patch of every spec
    steps: int = 1500
    batch_size: int = 32
    lr: float = 1e-3
    val_images: int = 512
    threads: int = 1
    jobs: int = 1
    device: str = "cpu"
    out: str = "probes"
    resume: bool = False

    def check(self) -> None:
        unknown = [t for t in self.tasks if t not in PROBE_TASKS]
        if unknown:
            raise ValueError(f"Unknown probe task(s) {', '.join(unknown)}; choose from {', '.join(PROBE_TASKS)}.")
        for spec in self.models:  # build each once, so that a bad spec stops the suite before any run
            build_probe_model(spec, num_classes=2, img_size=self.resolutions[0], defaults=self.sizes)
        ignored = [t for t in self.tasks if t in NO_DISTANCE]
        if ignored and len(self.distances) > 1:
            raise ValueError(f"{', '.join(ignored)} place their parts at random (as in their papers) and have no "
                             "distance knob; give one --distance, or run them apart from the distance sweep.")
        for task, resolution, distance in itertools.product(self.tasks, self.resolutions, self.distances):
            Knobs(resolution, distance, self.size, self.distractors, self.colours, self.item_size,
                  self.contour_length).check(task)
        if not self.models or not self.seeds or self.steps < 1 or self.jobs < 0 or self.threads < 1:
            raise ValueError("Need at least one model and one seed, steps and threads >= 1 and jobs >= 0.")

    def runs(self) -> list[dict[str, Any]]:
        """The runs' keys, in order: task, resolution, distance, model, seed."""
        grid = itertools.product(self.tasks, self.resolutions, self.distances, self.models, self.seeds)
        return [dict(task=t, resolution=r, distance=d, model=m, seed=s) for t, r, d, m, s in grid]


#################################################################################
#                                 One run                                       #
#################################################################################


class PeakMemory:
    """Peak memory of the code inside the block, in MiB.

    CUDA: torch.cuda.max_memory_allocated (tensors). CPU: the largest resident set size (RSS, /proc/self/statm)
    sampled every 10 ms, minus the RSS on entry, after handing the memory malloc holds free back to the OS
    (`kernels.release_freed_cpu_memory`), so that runs in one process do not reuse each other's pages. None where
    /proc is missing.
    """

    def __init__(self, device: str) -> None:
        self.device, self.peak_mb, self.kind = device, None, "cuda max_memory_allocated"
        if device == "cpu":
            self.kind = "cpu peak RSS increase (sampled)"

    @staticmethod
    def _rss() -> int | None:
        try:
            with open("/proc/self/statm") as f:
                return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError, IndexError):
            return None

    def _sample(self) -> None:
        while not self._stop.wait(0.01):
            rss = self._rss()
            if rss is not None:
                self._peak = max(self._peak, rss)

    def __enter__(self) -> PeakMemory:
        if self.device != "cpu":
            torch.cuda.reset_peak_memory_stats()
            self._base = torch.cuda.memory_allocated()
            return self
        # Memory malloc kept from earlier work (all of it where `kernels.reuse_freed_cpu_memory` is on, as in
        # CPU training) goes back to the OS first, so that this block's allocations show as RSS growth.
        kernels.release_freed_cpu_memory()
        self._base = self._rss()
        self._peak = self._base or 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        if self._base is not None:
            self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.device != "cpu":
            self.peak_mb = (torch.cuda.max_memory_allocated() - self._base) / 2**20
        elif self._base is not None:
            self._stop.set()
            self._thread.join()
            self.peak_mb = (self._peak - self._base) / 2**20


def _run_name(key: dict[str, Any]) -> str:
    model = "".join(c if c.isalnum() or c in "-_" else "_" for c in key["model"])
    return f"{key['task']}-r{key['resolution']}-d{key['distance']:g}-{model}-s{key['seed']}"


def run_one(key: dict[str, Any], cfg: SuiteConfig) -> dict[str, Any]:
    """Train and score one (task, resolution, distance, model, seed); its row of the results."""
    runs_dir = Path(cfg.out) / "runs"
    runs_dir.mkdir(parents=True, exist_ok=True)
    probe = ProbeConfig(
        probe=key["task"], model=key["model"], sizes=cfg.sizes, resolution=key["resolution"],
        distance=key["distance"], size=cfg.size, distractors=cfg.distractors, colours=cfg.colours,
        item_size=cfg.item_size, contour_length=cfg.contour_length, steps=cfg.steps, val_images=cfg.val_images,
        seed=key["seed"], batch_size=cfg.batch_size, lr=cfg.lr, threads=cfg.threads,
        device=cfg.device, output_dir=str(runs_dir), run_name=_run_name(key), recipe="probe")
    log_path = runs_dir / f"{_run_name(key)}.log"
    with open(log_path, "w") as log, contextlib.redirect_stdout(log), PeakMemory(cfg.device) as memory:
        result = train_probe(probe)
    n_params = sum(p.numel() for p in result["model"].parameters())
    return {
        **key, "size": cfg.size, "distractors": cfg.distractors, "colours": cfg.colours,
        "item_size": cfg.item_size, "contour_length": cfg.contour_length, "steps": cfg.steps,
        "batch_size": cfg.batch_size,
        "accuracy": result["val_top1"], "val_loss": result["val_loss"], "train_loss": result["train_loss"],
        "train_images_per_second": cfg.steps * cfg.batch_size / result["epoch_seconds"],
        "eval_images_per_second": result["val_images_per_second"], "peak_memory_mb": memory.peak_mb,
        "memory": memory.kind, "params": n_params, "run_dir": str(result["run_dir"]),
    }


#################################################################################
#                                  The suite                                    #
#################################################################################


def run_suite(cfg: SuiteConfig, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run every run of `cfg` (skipping those <out>/probes.json already holds, with `resume`); the results."""
    cfg.check()
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    json_path = out / "probes.json"
    rows: list[dict[str, Any]] = []
    known_cost: dict[str, Any] = {}
    if cfg.resume and json_path.is_file():
        previous = json.loads(json_path.read_text())
        rows, known_cost = previous.get("runs", []), previous.get("cost", {})
    done = {tuple(row[k] for k in ("task", "resolution", "distance", "model", "seed")) for row in rows}
    todo = [key for key in cfg.runs() if tuple(key.values()) not in done]
    load_at_start = load_average()
    results = {"config": asdict(cfg), "environment": environment(cfg.device, load_at_start), "runs": rows,
               "static_receptive_field_px": static_receptive_field(cfg.sizes["patch"], cfg.sizes["depth"])}
    total = len(rows) + len(todo)
    log(f"{len(todo)} run(s) to do ({len(rows)} already in {json_path}), {cfg.jobs} at a time.")

    def record(row: dict[str, Any]) -> None:
        rows.append(row)
        results["summary"] = summarise(rows)
        results["environment"] = environment(cfg.device, load_at_start)  # the load so far
        json_path.write_text(json.dumps(results, indent=2))
        log(f"[{len(rows)}/{total}] {_run_name(row)}: {row['accuracy']:.1f} % "
            f"({row['train_images_per_second']:.0f} train img/s)")

    if cfg.jobs == 0:  # in this process: no start-up cost, but memory figures can read low (see PeakMemory)
        for key in todo:
            record(run_one(key, cfg))
    else:  # a fresh process per run: clean threads and memory figures
        import multiprocessing

        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(cfg.jobs, mp_context=context, max_tasks_per_child=1) as pool:
            for future in as_completed([pool.submit(run_one, key, cfg) for key in todo]):
                record(future.result())
    results["summary"] = summarise(rows)
    # Costs of the specs of earlier invocations (resumed) are kept: the table covers every model it lists.
    results["cost"] = {**known_cost, **{spec: model_cost(spec, cfg.sizes, cfg.resolutions) for spec in cfg.models}}
    json_path.write_text(json.dumps(results, indent=2))
    return results


COST_RESOLUTIONS = (224, 1024)  # the cost of each spec's network at ImageNet size and at a high resolution


def model_cost(spec: str, sizes: dict[str, Any], resolutions: list[int]) -> dict[str, int]:
    """MACs per image of the network `spec` names (the suite's sizes: same width, depth and patch) at each probe
    resolution and at `COST_RESOLUTIONS`, counted on the meta device (attention's N² terms included)."""
    from ...analysis.flops import count_macs

    cost = {}
    for resolution in sorted({*resolutions, *COST_RESOLUTIONS}):
        model = build_probe_model(spec, num_classes=2, img_size=resolution, defaults=sizes)
        cost[str(resolution)] = count_macs(model, (3, resolution, resolution)).total
    return cost


#################################################################################
#                           Summary, table and plot                             #
#################################################################################

_GROUP = ("task", "resolution", "distance", "model")


def summarise(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (task, resolution, distance, model): accuracy mean, sample sd and the seeds' values."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(tuple(row[k] for k in _GROUP), []).append(row)
    summary = []
    for key, runs in groups.items():
        runs = sorted(runs, key=lambda r: r["seed"])
        accs = [r["accuracy"] for r in runs]
        mean = sum(accs) / len(accs)
        sd = (sum((a - mean) ** 2 for a in accs) / (len(accs) - 1)) ** 0.5 if len(accs) > 1 else None
        memories = [r["peak_memory_mb"] for r in runs if r["peak_memory_mb"] is not None]
        summary.append({
            **dict(zip(_GROUP, key, strict=True)), "accuracy_mean": mean, "accuracy_sd": sd, "seeds": len(runs),
            "accuracy_per_seed": accs, "params": runs[0]["params"],
            "train_images_per_second": sum(r["train_images_per_second"] for r in runs) / len(runs),
            "peak_memory_mb": max(memories) if memories else None,
        })
    return summary


def format_table(results: dict[str, Any]) -> str:
    """A Markdown table of the summary, grouped by task, resolution and distance."""
    cost = results.get("cost", {})
    lines = ["| task | res | dist | model | params | accuracy % | per seed | train img/s | peak MiB | "
             "GMACs 224² | GMACs 1024² |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    order = {m: i for i, m in enumerate(results.get("config", {}).get("models", []))}  # the command's order
    for row in sorted(results["summary"], key=lambda r: (r["task"], r["resolution"], r["distance"],
                                                          order.get(r["model"], len(order)), r["model"])):
        sd = f" ± {row['accuracy_sd']:.1f}" if row["accuracy_sd"] is not None else ""
        seeds = ", ".join(f"{a:.1f}" for a in row["accuracy_per_seed"])
        memory = f"{row['peak_memory_mb']:.0f}" if row["peak_memory_mb"] is not None else "n/a"
        distance = "–" if row["task"] in NO_DISTANCE else f"{row['distance']:g}"
        lines.append(f"| {row['task']} | {row['resolution']} | {distance} | `{row['model']}` | "
                     f"{row['params'] / 1e3:.0f} k | {row['accuracy_mean']:.1f}{sd} | {seeds} | "
                     f"{row['train_images_per_second']:.0f} | {memory} | "
                     + " | ".join(f"{cost[row['model']][str(r)] / 1e9:.2f}" if str(r) in cost.get(row["model"], {})
                                  else "n/a" for r in COST_RESOLUTIONS) + " |")
    return "\n".join(lines)


def plot_suite(results: dict[str, Any], path: str | Path) -> None:
    """Accuracy against distance (at the largest resolution) and against resolution (at the largest distance),
    one column per task, one line per model; chance (50 %) and the local ceiling (75 %) dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summary = results["summary"]
    tasks = sorted({r["task"] for r in summary})
    models = list(dict.fromkeys(r["model"] for r in summary))
    fig, axes = plt.subplots(2, len(tasks), figsize=(5 * len(tasks), 7), squeeze=False)
    for column, task in enumerate(tasks):
        rows = [r for r in summary if r["task"] == task]
        top_res, top_dist = max(r["resolution"] for r in rows), max(r["distance"] for r in rows)
        for ax, axis, fixed, value in ((axes[0, column], "distance", "resolution", top_res),
                                       (axes[1, column], "resolution", "distance", top_dist)):
            for model in models:
                points = sorted((r[axis], r["accuracy_mean"], r["accuracy_sd"] or 0.0) for r in rows
                                if r["model"] == model and r[fixed] == value)
                if points:
                    xs, ys, sds = zip(*points, strict=True)
                    ax.errorbar(xs, ys, yerr=sds, marker="o", capsize=3, label=model)
            ax.axhline(50, color="grey", linestyle=":", linewidth=1)
            ax.axhline(75, color="grey", linestyle="--", linewidth=1)
            ax.set_ylim(40, 102)
            ax.set_xlabel(axis + (" (fraction of the largest gap)" if axis == "distance" else " (px)"))
            ax.set_ylabel("validation accuracy (%)")
            ax.set_title(f"{task}, {fixed} {value:g}")
            ax.grid(alpha=0.3)
    axes[0, 0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
