"""Gradient accumulation: k micro-batches of b make the same optimiser step as one batch of k x b, on one process
and on two (DDP synchronising only the last micro-batch), and a stopped run resumes on a step boundary exactly."""

from __future__ import annotations

import json
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp
from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook
from torch.nn.parallel import DistributedDataParallel

from engine_helpers import NumbersTask, numbers_config
from weightformer.engine import EpochSampler, fit

# AdamW without decay, float64: the update depends on the gradient alone, so any difference in it shows.
ADAMW = dict(opt="adamw", lr=0.05, min_lr=0.005, weight_decay=0.0, clip_grad=1.0)


class Float64Numbers(NumbersTask):
    """The numbers task in float64, counting the gradient all-reduces DDP runs (one per bucket per sync)."""

    def __init__(self, cfg) -> None:
        super().__init__(cfg)
        self.all_reduces = 0
        self.hooked = False

    def build_model(self) -> torch.nn.Module:
        return super().build_model().double()

    def training_loss(self, model, batch):
        if isinstance(model, DistributedDataParallel) and not self.hooked:
            def counting_allreduce(state, bucket):
                self.all_reduces += 1
                return allreduce_hook(None, bucket)

            model.register_comm_hook(None, counting_allreduce)
            self.hooked = True
        indices, x, y = batch
        return super().training_loss(model, (indices, x.double(), y.double()))

    def validation_step(self, model, batch, metrics) -> None:
        indices, x, y = batch
        super().validation_step(model, (indices, x.double(), y.double()), metrics)


def _fit(cfg):
    task = Float64Numbers(cfg)
    return fit(task), task


def _weights(result) -> list[torch.Tensor]:
    return [p.detach().clone() for p in result["model"].parameters()]


def test_accumulated_micro_batches_make_the_step_of_one_large_batch(tmp_path):
    whole, _ = _fit(numbers_config(tmp_path / "a", batch_size=6, **ADAMW))
    accumulated, task = _fit(numbers_config(tmp_path / "b", batch_size=2, accum_steps=3, **ADAMW))
    assert whole["step"] == accumulated["step"] == 8  # 24 samples / 6 per step, 2 epochs: optimiser steps
    assert [len(s) for s in task.seen] == [2] * 24  # micro-batches of 2
    flat = [i for step in task.seen for i in step]
    order = EpochSampler(24, shuffle=True, seed=0)
    order.set_epoch(0)
    assert flat[:24] == [i for i, _ in order]  # the same samples, in the same order
    for a, b in zip(_weights(whole), _weights(accumulated), strict=True):
        torch.testing.assert_close(b, a, rtol=1e-6, atol=1e-12)
    assert not torch.equal(_weights(whole)[0], _weights(_fit(numbers_config(tmp_path / "c", batch_size=2,
                                                                            **ADAMW))[0])[0])  # batch 2: not the same
    assert accumulated["train_loss"] == pytest.approx(whole["train_loss"], rel=1e-9)
    steps = [json.loads(line)["step"] for line in (accumulated["run_dir"] / "metrics.jsonl").read_text().splitlines()
             if json.loads(line)["kind"] == "train"]
    assert steps == list(range(1, 9))  # logged per optimiser step (log_interval 1)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _two(rank: int, port: int, out) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    report = {}
    for name, batch, accum in (("whole", 6, 1), ("accumulated", 2, 3)):
        result, task = _fit(numbers_config(out / name, batch_size=batch, accum_steps=accum, **ADAMW))
        report[name] = {"weights": [w.tolist() for w in _weights(result)], "step": result["step"],
                        "all_reduces": task.all_reduces, "seen": task.seen}
    (out / f"rank{rank}.json").write_text(json.dumps(report))


def test_accumulation_on_two_processes_synchronises_once_per_step(tmp_path):
    single, _ = _fit(numbers_config(tmp_path / "single", batch_size=12, **ADAMW))  # the global batch, one process
    mp.start_processes(_two, args=(_free_port(), tmp_path), nprocs=2, start_method="spawn")
    for rank in (0, 1):
        report = json.loads((tmp_path / f"rank{rank}.json").read_text())
        whole, accumulated = report["whole"], report["accumulated"]
        assert whole["step"] == accumulated["step"] == 4  # 24 / (2 x 6) per epoch, 2 epochs
        assert whole["all_reduces"] == 4
        assert accumulated["all_reduces"] == 4  # no_sync on the first two micro-batches of each step
        assert sum(whole["seen"], []) == sum(accumulated["seen"], [])  # each rank: the same samples, same order
        for a, b, c in zip(_weights(single), whole["weights"], accumulated["weights"], strict=True):
            torch.testing.assert_close(torch.tensor(b, dtype=torch.float64), a, rtol=1e-6, atol=1e-12)
            torch.testing.assert_close(torch.tensor(c, dtype=torch.float64), a, rtol=1e-6, atol=1e-12)


def test_a_stopped_accumulating_run_resumes_on_a_step_boundary_exactly(tmp_path):
    reference, _ = _fit(numbers_config(tmp_path / "ref", batch_size=2, accum_steps=3, **ADAMW))
    # The signal arrives during micro-batch 8 (0-based 7), the second of step 3: step 3 finishes, then the run stops.
    stopped, first = _fit(numbers_config(tmp_path / "run", batch_size=2, accum_steps=3, signal_at_step=7, **ADAMW))
    assert stopped["preempted"] and stopped["step"] == 3
    last = torch.load(stopped["run_dir"] / "checkpoints" / "last.pth", weights_only=True)
    assert (last["epoch"], last["samples_in_epoch"], last["step"]) == (0, 18, 3)
    assert len(first.seen) == 9  # three whole steps of three micro-batches
    resumed, second = _fit(numbers_config(tmp_path / "run", batch_size=2, accum_steps=3, resume="auto", **ADAMW))
    assert resumed["step"] == 8
    assert sum(first.seen + second.seen, []) == sum(_fit(numbers_config(
        tmp_path / "again", batch_size=2, accum_steps=3, **ADAMW))[1].seen, [])
    for a, b in zip(_weights(reference), _weights(resumed), strict=True):
        assert torch.equal(a, b)
