"""Long-range probes: generated tasks that only a relation between distant image parts solves.

    weightformer probe --models static weightformer vit --resolution 64 96     # table, probes.json, probes.png

See data.py for the tasks and why a local model cannot exceed 75 % on them, published.py for the published
benchmarks (psvrt, pathfinder, same_different_random), models.py for the model specs, suite.py for the
runner, and benchmarks/PROBES.md for the recorded comparison.
"""

from .data import PROBE_TASKS, Knobs, ProbeDataset, render, static_receptive_field
from .models import build_probe_model, parse_model_spec
from .published import draw_pathfinder, draw_psvrt, draw_same_different_random  # registers the three tasks
from .suite import DEFAULT_MODELS, SuiteConfig, format_table, plot_suite, run_suite, summarise
from .task import ProbeConfig, ProbeTask, train_probe

__all__ = [
    "PROBE_TASKS", "Knobs", "ProbeDataset", "render", "static_receptive_field", "build_probe_model",
    "parse_model_spec", "DEFAULT_MODELS", "SuiteConfig", "run_suite", "format_table", "plot_suite", "summarise",
    "ProbeConfig", "ProbeTask", "train_probe", "draw_psvrt", "draw_pathfinder", "draw_same_different_random",
]
