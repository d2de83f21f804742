"""`weightformer dit sample`: files in ADM's layout, the same samples for a seed whatever the number of
processes (2 gloo processes against 1), every scheduler, and one-line refusals of bad input."""

from __future__ import annotations

import os
import socket

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from gen_helpers import read_npz, write_dit_checkpoint
from weightformer.cli.main import main
from weightformer.diffusion import create_diffusion
from weightformer.tasks import load_run_model
from weightformer.tasks.generation.sample import (
    batch_seed,
    guided_channels,
    make_sampler,
    sample_labels,
    sample_to_files,
)


def test_sample_writes_an_adm_npz_and_a_grid_and_a_seed_fixes_the_samples(dit_checkpoint, tmp_path, one_thread):
    argv = ["dit", "sample", str(dit_checkpoint), "--num-samples", "7", "--steps", "3", "--batch-size", "3",
            "--cfg-scale", "2", "--seed", "5"]
    assert main([*argv, "-o", str(tmp_path / "a")]) == 0
    assert main([*argv, "-o", str(tmp_path / "b")]) == 0
    images, labels = read_npz(tmp_path / "a" / "samples.npz")
    assert images.shape == (7, 8, 8, 3) and images.dtype == np.uint8
    assert labels.tolist() == [0, 1, 2, 0, 1, 2, 0]
    assert np.array_equal(images, read_npz(tmp_path / "b" / "samples.npz")[0])  # the same seed, the same samples
    assert images.std() > 5  # not a constant picture
    main([*argv[:-1], "6", "-o", str(tmp_path / "c")])
    assert not np.array_equal(images, read_npz(tmp_path / "c" / "samples.npz")[0])
    from PIL import Image

    with Image.open(tmp_path / "a" / "samples.png") as grid:  # 3 rows (classes) x 3 samples, 2 px padding
        assert grid.size == (3 * 10 + 2, 3 * 10 + 2)


@pytest.mark.parametrize("scheduler", ["ddim", "dpm++"])
def test_diffusers_schedulers_sample_the_chosen_classes(dit_checkpoint, tmp_path, scheduler, one_thread):
    result = sample_to_files(dit_checkpoint, tmp_path, 4, scheduler, steps=4, cfg_scale=3.0, classes=[2, 1])
    images, labels = read_npz(result["npz"])
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


def _sample_on_two(rank: int, port: int, dit_checkpoint, out) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    sample_to_files(dit_checkpoint, out, 10, "ddpm", steps=3, cfg_scale=2.0, seed=1, batch_size=3, device="cpu",
                    shard_batches=1)


def test_two_processes_draw_the_samples_of_one(dit_checkpoint, tmp_path, one_thread):
    """Two processes, each writing two one-batch shards, against one process writing one shard of four batches:
    the shard size does not change the samples either."""
    sample_to_files(dit_checkpoint, tmp_path / "one", 10, "ddpm", steps=3, cfg_scale=2.0, seed=1, batch_size=3)
    mp.start_processes(_sample_on_two, args=(_free_port(), dit_checkpoint, tmp_path / "two"), nprocs=2,
                       start_method="spawn")
    one, two = read_npz(tmp_path / "one" / "samples.npz"), read_npz(tmp_path / "two" / "samples.npz")
    assert np.array_equal(one[0], two[0]) and np.array_equal(one[1], two[1])
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == ["samples.npz", "samples.png"]  # shards gone


def test_the_ema_weights_are_loaded_by_default(dit_checkpoint):
    run = load_run_model(dit_checkpoint, "generation")
    model, state = run.model, torch.load(dit_checkpoint, weights_only=True)
    assert run.extras["class_names"] == ["c0", "c1", "c2"] and run.config.image_size == 8 and run.ema
    for name, value in model.state_dict().items():
        assert torch.equal(value, state["ema"][f"module.{name}"])


def _reference_guided_sampling(model, labels, size, scale, channels, seed, steps=2):
    """DiT's sample.py written out: the noise twice, labels then "no class"; at each step the first half of the
    batch goes through both ways, eps is guided on the first `channels` channels and the conditional prediction
    kept on the others."""
    generator = torch.Generator().manual_seed(seed)
    z = torch.randn(len(labels), model.in_channels, size, size, generator=generator)
    null = torch.full_like(labels, model.num_classes)

    def guided(x, t, y):
        half = x[: len(x) // 2]
        cond, uncond = model(torch.cat([half, half]), t, y).chunk(2)  # (N, 2C, H, W) each: eps, variance values
        mixed = cond.clone()
        mixed[:, :channels] = uncond[:, :channels] + scale * (cond[:, :channels] - uncond[:, :channels])
        return torch.cat([mixed, mixed])

    diffusion = create_diffusion(str(steps))
    with torch.no_grad():
        out = diffusion.p_sample_loop(guided, (2 * len(labels), *z.shape[1:]), noise=torch.cat([z, z]),
                                      model_kwargs=dict(y=torch.cat([labels, null])), generator=generator)
    return out[: len(labels)]


def test_sampling_guides_the_first_3_channels_by_default_as_the_release(tmp_path, one_thread):
    model = load_run_model(write_dit_checkpoint(tmp_path / "latent.pth", image_size=6, vae="ema"), "generation").model
    assert model.in_channels == 4
    labels, scale = torch.tensor([0, 2, 1]), 4.0
    drawn = {guided: make_sampler("ddpm", 2, guided)(model, labels, 6, scale, torch.Generator().manual_seed(3))
             for guided in (3, "all")}
    default = make_sampler("ddpm", 2)(model, labels, 6, scale, torch.Generator().manual_seed(3))
    torch.testing.assert_close(default, _reference_guided_sampling(model, labels, 6, scale, 3, seed=3))
    torch.testing.assert_close(drawn[3], default)
    torch.testing.assert_close(drawn["all"], _reference_guided_sampling(model, labels, 6, scale, 4, seed=3))
    assert (drawn["all"] - default).abs().max() > 1e-3  # guiding the 4th channel changes the samples
    assert guided_channels("all", 4) == 4 and guided_channels(2, 4) == 2
    for bad in (0, 5, "some", True):
        with pytest.raises(ValueError, match=r"guided_channels must be a number of channels from 1 to 4"):
            guided_channels(bad, 4)
