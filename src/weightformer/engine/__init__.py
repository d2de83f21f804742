"""The training engine: one loop (DDP, precision, accumulation, EMA, checkpoints, resumption, logging, signals,
evaluation) for every task.

    from weightformer.engine import Engine
    from weightformer.tasks import load_config
    from weightformer.tasks.classification import ClassificationTask
    result = Engine(ClassificationTask(load_config("classification", "synthetic", epochs=2))).fit()
"""

from .config import EngineConfig, free, resume_differences
from .data import Collated, EpochSampler, StreamDataset, Unreadable, make_loader, warn_skipped
from .distributed import Dist, all_reduce_sum
from .evaluation import evaluate
from .loop import Engine, fit
from .metrics import Mean, Metric
from .optim import build_optimizer, build_scheduler, peak_lr
from .run import Position, resolve_run_dir
from .task import Datasets, Task

__all__ = [
    "Engine",
    "fit",
    "Task",
    "evaluate",
    "Metric",
    "Mean",
    "Position",
    "Datasets",
    "EngineConfig",
    "free",
    "resume_differences",
    "resolve_run_dir",
    "Collated",
    "Unreadable",
    "EpochSampler",
    "StreamDataset",
    "make_loader",
    "warn_skipped",
    "Dist",
    "all_reduce_sum",
    "build_optimizer",
    "build_scheduler",
    "peak_lr",
]
