"""Fixtures shared by several test modules."""

from __future__ import annotations

import pytest
import torch

from gen_helpers import write_dit_checkpoint


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
