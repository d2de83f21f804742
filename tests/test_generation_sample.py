"""`weightformer dit sample`: files in ADM's layout, the same samples for a seed whatever the number of
processes (2 gloo processes against 1), every scheduler, and one-line refusals of bad input."""

from __future__ import annotations

import os
import socket

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from gen_helpers import write_dit_checkpoint
from weightformer.cli.main import main
from weightformer.tasks import load_run_model
from weightformer.tasks.generation.sample import batch_seed, sample_labels, sample_to_files


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return write_dit_checkpoint(tmp_path_factory.mktemp("dit") / "dit.pth")


def _npz(path):
    with np.load(path) as npz:
        return npz["arr_0"], npz["arr_1"]


def test_sample_writes_an_adm_npz_and_a_grid_and_a_seed_fixes_the_samples(checkpoint, tmp_path, one_thread):
    argv = ["dit", "sample", str(checkpoint), "--num-samples", "7", "--steps", "3", "--batch-size", "3",
            "--cfg-scale", "2", "--seed", "5"]
    assert main([*argv, "-o", str(tmp_path / "a")]) == 0
    assert main([*argv, "-o", str(tmp_path / "b")]) == 0
    images, labels = _npz(tmp_path / "a" / "samples.npz")
    assert images.shape == (7, 8, 8, 3) and images.dtype == np.uint8
    assert labels.tolist() == [0, 1, 2, 0, 1, 2, 0]
    assert np.array_equal(images, _npz(tmp_path / "b" / "samples.npz")[0])  # the same seed, the same samples
    assert images.std() > 5  # not a constant picture
    main([*argv[:-1], "6", "-o", str(tmp_path / "c")])
    assert not np.array_equal(images, _npz(tmp_path / "c" / "samples.npz")[0])
    from PIL import Image

    with Image.open(tmp_path / "a" / "samples.png") as grid:  # 3 rows (classes) x 3 samples, 2 px padding
        assert grid.size == (3 * 10 + 2, 3 * 10 + 2)


@pytest.mark.parametrize("scheduler", ["ddim", "dpm++"])
def test_diffusers_schedulers_sample_the_chosen_classes(checkpoint, tmp_path, scheduler, one_thread):
    result = sample_to_files(checkpoint, tmp_path, 4, scheduler, steps=4, cfg_scale=3.0, classes=[2, 1])
    images, labels = _npz(result["npz"])
    assert images.shape == (4, 8, 8, 3) and labels.tolist() == [2, 1, 2, 1]


def test_labels_and_seeds():
    assert sample_labels(5, 4).tolist() == [0, 1, 2, 3, 0]
    with pytest.raises(ValueError, match=r"Class ids must lie in 0..3 \(the checkpoint has 4 classes\); got 4, -1"):
        sample_labels(5, 4, [1, 4, -1])
    seeds = {batch_seed(s, b) for s in range(3) for b in range(100)}
    assert len(seeds) == 300 and all(0 <= s < 2**63 for s in seeds)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _sample_on_two(rank: int, port: int, checkpoint, out) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    sample_to_files(checkpoint, out, 10, "ddpm", steps=3, cfg_scale=2.0, seed=1, batch_size=3, device="cpu")


def test_two_processes_draw_the_samples_of_one(checkpoint, tmp_path, one_thread):
    sample_to_files(checkpoint, tmp_path / "one", 10, "ddpm", steps=3, cfg_scale=2.0, seed=1, batch_size=3)
    mp.start_processes(_sample_on_two, args=(_free_port(), checkpoint, tmp_path / "two"), nprocs=2,
                       start_method="spawn")
    one, two = _npz(tmp_path / "one" / "samples.npz"), _npz(tmp_path / "two" / "samples.npz")
    assert np.array_equal(one[0], two[0]) and np.array_equal(one[1], two[1])
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == ["samples.npz", "samples.png"]  # shards gone


def test_the_ema_weights_are_loaded_by_default(checkpoint):
    run = load_run_model(checkpoint, "generation")
    model, state = run.model, torch.load(checkpoint, weights_only=True)
    assert run.extras["class_names"] == ["c0", "c1", "c2"] and run.config.image_size == 8 and run.ema
    for name, value in model.state_dict().items():
        assert torch.equal(value, state["ema"][f"module.{name}"])
