"""Data parallelism on CPU: two gloo processes train in lock-step and only rank 0 writes."""

from __future__ import annotations

import os
import socket
import time

import pytest
import torch
import torch.multiprocessing as mp

from train_helpers import tiny_config, tiny_dataset


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


_SETTINGS = dict(epochs=2, base_batch_size=6, lr=None, base_lr=1e-3, min_lr=1e-5, drop_path=0.0, model_ema=True,
                 model_ema_decay=0.8)


def _worker(rank: int, world_size: int, port: int, data_dir, out_dir) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world_size), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    from weightformer.tasks.classification import train

    result = train(tiny_config(data_dir, out_dir / "runs", batch_size=3, **_SETTINGS))
    torch.save({"model": result["model"].state_dict(), "ema": result["ema_model"].state_dict()},
               out_dir / f"rank{rank}.pt")


def test_two_gloo_processes_match_one_process_with_the_same_global_batch(tmp_path):
    from weightformer.tasks.classification import train

    data = tiny_dataset(tmp_path / "data")
    mp.start_processes(_worker, args=(2, _free_port(), data, tmp_path), nprocs=2, start_method="spawn")
    rank0, rank1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    for part in ("model", "ema"):  # bit-identical across ranks, EMA included
        for key in rank0[part]:
            assert torch.equal(rank0[part][key], rank1[part][key]), (part, key)
    checkpoint = torch.load(tmp_path / "runs" / "synthetic" / "checkpoints" / "last.pth", weights_only=True)
    for key in rank0["model"]:
        assert torch.equal(checkpoint["model"][key], rank0["model"][key]), key
    # 36 images over 2 processes, 3 per process: 6 global steps per epoch; lr scaled by the global batch 6.
    assert checkpoint["step"] == 12 and len(checkpoint["rng"]) == 2
    assert checkpoint["optimizer"]["param_groups"][0]["initial_lr"] == pytest.approx(1e-3)
    assert len(list((tmp_path / "runs").iterdir())) == 1  # one run folder, written by rank 0 only

    # One process with the same global batch sees the same samples in the same steps: the same model and EMA,
    # up to the order of floating-point sums (DDP averages two half-batch gradients).
    single = train(tiny_config(data, tmp_path / "single", batch_size=6, **_SETTINGS))
    for part, module in (("model", single["model"]), ("ema", single["ema_model"])):
        moved = 0.0
        for key, value in module.state_dict().items():
            torch.testing.assert_close(rank0[part][key], value, rtol=1e-4, atol=1e-5, msg=f"{part} {key}")
            moved = max(moved, (value - checkpoint["model"][key]).abs().max().item() if part == "ema" else 0.0)
        if part == "ema":
            assert moved > 0  # the EMA is its own average, not a copy of the final weights


def _worker_one_image_per_rank(rank: int, world_size: int, port: int, data_dir, out_dir) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world_size), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    from weightformer.tasks.classification import train

    result = train(tiny_config(data_dir, out_dir / "runs", epochs=1, batch_size=1))
    torch.save(result["model"].state_dict(), out_dir / f"rank{rank}.pt")


def test_an_unreadable_image_on_one_rank_skips_the_step_on_all(tmp_path):
    # One image per rank and step: the step that meets the unreadable file has an empty batch on one rank only.
    # Unless both ranks skip it together, their gradient all-reduces fall out of step and the run hangs.
    data = tiny_dataset(tmp_path / "data")
    sorted((data / "train").rglob("*.png"))[5].write_bytes(b"not an image")
    context = mp.start_processes(_worker_one_image_per_rank, args=(2, _free_port(), data, tmp_path), nprocs=2,
                                 start_method="spawn", join=False)
    deadline = time.time() + 180
    while not context.join(timeout=5):
        if time.time() > deadline:
            for process in context.processes:
                process.kill()
            pytest.fail("the two processes did not finish: their steps fell out of lock-step")
    rank0, rank1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    for key in rank0:
        assert torch.equal(rank0[key], rank1[key]), key
    checkpoint = torch.load(tmp_path / "runs" / "synthetic" / "checkpoints" / "last.pth", weights_only=True)
    assert checkpoint["counts"]["skipped_samples"] == 1  # summed over the ranks, whichever rank met the file
