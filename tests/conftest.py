"""Fixtures shared by several test modules."""

from __future__ import annotations

import pytest
import torch

from gen_helpers import write_dit_checkpoint
from train_helpers import tiny_config, tiny_dataset


@pytest.fixture(scope="module")
def one_thread():
    """For modules of tiny tensors: one intra-op thread is several times faster than two on a shared CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def dit_checkpoint(tmp_path_factory):
    """A tiny WeightFormer-DiT training checkpoint (see `gen_helpers.write_dit_checkpoint`), one per module."""
    return write_dit_checkpoint(tmp_path_factory.mktemp("dit") / "dit.pth")


@pytest.fixture(scope="module")
def judge_classifier(tmp_path_factory):
    """(dataset folder, checkpoint) of a tiny classifier trained one epoch: the feature space of the FID tests."""
    from weightformer.tasks.classification import train

    root = tmp_path_factory.mktemp("cls")
    data = tiny_dataset(root / "data")
    run = train(tiny_config(data, root / "runs", epochs=1, batch_size=9))
    return data, run["run_dir"] / "checkpoints" / "last.pth"
