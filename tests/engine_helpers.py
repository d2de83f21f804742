"""A minimal task for the engine's tests: integer samples, a linear model, and a record of what it trained on.

Sample i is the vector x_i = (sin i, cos i, i / N) with target 2 * x_i.sum(); the model is one Linear layer.
Steps take microseconds, so the tests can look at the engine alone: positions, resumption, signals, counters.
"""

from __future__ import annotations

import math
import os
import signal
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn
from torch.utils.data import Dataset

from weightformer.engine import Datasets, EngineConfig, Mean, Task, Unreadable, free


class NumberDataset(Dataset):
    def __init__(self, n: int, unreadable: tuple[int, ...] = ()) -> None:
        self.n, self.unreadable = n, set(unreadable)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, item: tuple[int, int] | int) -> Any:
        index = item[0] if isinstance(item, tuple) else item
        if index in self.unreadable:
            return Unreadable(f"sample {index} (made unreadable by the test)")
        x = torch.tensor([math.sin(index), math.cos(index), index / self.n])
        return index, x, 2 * x.sum(dim=0, keepdim=True)


@dataclass
class NumbersConfig(EngineConfig):
    samples: int = 24
    val_samples: int = 10
    unreadable: list[int] = field(default_factory=list)  # training indices that come back Unreadable
    signal_at_step: int = free(-1)  # send the signal to this process while computing this step's loss (0-based)
    signal_name: str = free("SIGUSR1")


def numbers_config(output_dir, **overrides) -> NumbersConfig:
    values = dict(output_dir=str(output_dir), recipe="numbers", epochs=2, warmup_epochs=0, batch_size=3, lr=0.05,
                  min_lr=0.05, weight_decay=0.0, clip_grad=None, amp=False, workers=0, progress=False,
                  tensorboard=False, log_interval=1, opt="sgd")
    values.update(overrides)
    return NumbersConfig.from_dict(values)


class NumbersTask(Task):
    name = "numbers"

    def __init__(self, cfg: NumbersConfig) -> None:
        super().__init__(cfg)
        self.seen: list[list[int]] = []  # sample indices of every step this process trained on
        self.output_dtypes: list[torch.dtype] = []
        self.steps = 0

    def build_datasets(self, d) -> Datasets:
        if self.cfg.samples <= 0:
            raise FileNotFoundError(f"no samples here ({self.cfg.samples})")
        train = NumberDataset(self.cfg.samples, tuple(self.cfg.unreadable))
        return Datasets(train, NumberDataset(self.cfg.val_samples), f"{self.cfg.samples} numbers")

    def build_model(self) -> nn.Module:
        torch.manual_seed(0)
        return nn.Linear(3, 1)

    def collate(self, samples: list[Any], train: bool) -> tuple[Any, int]:
        indices = torch.tensor([i for i, _, _ in samples])
        return (indices, torch.stack([x for _, x, _ in samples]), torch.stack([y for _, _, y in samples])), len(samples)

    def training_loss(self, model: nn.Module, batch: Any) -> torch.Tensor:
        indices, x, y = batch
        if self.steps == self.cfg.signal_at_step:
            os.kill(os.getpid(), getattr(signal, self.cfg.signal_name))
        self.steps += 1
        self.seen.append(indices.tolist())
        out = model(x)
        self.output_dtypes.append(out.dtype)
        return (out.float() - y).pow(2).mean()

    def validation_metrics(self) -> dict[str, Mean]:
        return {"loss": Mean("loss")}

    def validation_step(self, model, batch, metrics) -> None:
        _, x, y = batch
        metrics["loss"].update((model(x) - y).pow(2).sum(dim=1))
