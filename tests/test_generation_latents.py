"""Latent space: a tiny randomly initialised AutoencoderKL saved with save_pretrained goes through the same
loader as sd-vae-ft-ema; `dit extract` stores each image's latent and its mirror's; training on latents and
sampling decode through the VAE."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from gen_helpers import write_dit_checkpoint
from train_helpers import tiny_dataset
from weightformer.cli.main import main
from weightformer.tasks.generation.latents import VAE_SCALE, LatentDataset, load_vae

diffusers = pytest.importorskip("diffusers")

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def vae_dir(tmp_path_factory):
    torch.manual_seed(0)
    vae = diffusers.AutoencoderKL(in_channels=3, out_channels=3, block_out_channels=(8, 8), layers_per_block=1,
                                  down_block_types=("DownEncoderBlock2D",) * 2, norm_num_groups=4,
                                  up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=4)
    path = tmp_path_factory.mktemp("vae") / "tiny-vae"
    vae.save_pretrained(path)
    return path


def test_extract_stores_the_latents_of_images_and_their_mirrors(vae_dir, tmp_path, capsys):
    data = tiny_dataset(tmp_path / "data")  # 9 classes x (4 train, 2 val), 16 px
    out = tmp_path / "latents"
    assert main(["dit", "extract", str(data), "-o", str(out), "--vae", str(vae_dir), "--image-size", "16",
                 "--batch-size", "5"]) == 0
    meta = json.loads((out / "meta.json").read_text())
    assert meta["factor"] == 2 and meta["counts"]["train"] == {"images": 36, "skipped": 0}
    latents = np.load(out / "train.npy")
    assert latents.shape == (36, 2, 4, 8, 8) and latents.dtype == np.float16
    vae = load_vae(str(vae_dir))
    from PIL import Image

    first = sorted((data / "train").iterdir())[0]
    with Image.open(sorted(first.iterdir())[0]) as image:
        x = torch.from_numpy(np.array(image.convert("RGB"))).permute(2, 0, 1).float()[None] / 127.5 - 1
    with torch.no_grad():
        expected = torch.cat([vae.encode(x).latent_dist.mean, vae.encode(x.flip(-1)).latent_dist.mean]) * VAE_SCALE
    torch.testing.assert_close(torch.from_numpy(latents[0].astype(np.float32)), expected, atol=2e-3, rtol=1e-2)
    flips = {LatentDataset(out, "train", hflip=0.5)[(0, seed)][0].sum().item() for seed in range(20)}
    assert len(flips) == 2  # either the latent or its mirror's, decided by the item's seed

    runs = tmp_path / "runs"
    argv = ["dit", "train", "--latents-dir", str(out), "--output-dir", str(runs), "--model-kwargs",
            "{hidden_size: 16, depth: 2}", "--epochs", "1", "--batch-size", "12", "--workers", "0",
            "--progress", "false", "--tensorboard", "false", "--samples-per-class", "1", "--sample-steps", "2",
            "--judge-samples-per-class", "0"]
    assert main(argv) == 0
    state = torch.load(runs / "dit-synthetic" / "checkpoints" / "last.pth", weights_only=True)
    assert state["config"]["vae"] == str(vae_dir) and state["config"]["image_size"] == 16
    capsys.readouterr()
    assert main([*argv, "--resume", "auto"]) == 0  # the same flags: image_size and vae resolve as saved
    assert "Resumed from" in capsys.readouterr().out
    assert main(["dit", "sample", str(runs / "dit-synthetic" / "checkpoints" / "last.pth"), "--num-samples", "2",
                 "--steps", "2", "-o", str(tmp_path / "s")]) == 0
    with np.load(tmp_path / "s" / "samples.npz") as npz:
        assert npz["arr_0"].shape == (2, 16, 16, 3)  # decoded: 8x8 latents -> 16x16 pixels


def test_dit_sample_guides_the_first_3_channels_unless_told_all(vae_dir, tmp_path, capsys):
    # A 4-channel latent model: DiT's release guides channels 0..2 only, and so does `dit sample` by default.
    checkpoint = write_dit_checkpoint(tmp_path / "dit.pth", image_size=6, vae=str(vae_dir), vae_factor=2)
    argv = ["dit", "sample", str(checkpoint), "--num-samples", "3", "--steps", "2", "--cfg-scale", "4"]
    drawn = {}
    for name, flags in {"default": [], "3": ["--guided-channels", "3"], "all": ["--guided-channels", "all"]}.items():
        assert main([*argv, *flags, "--out", str(tmp_path / name)]) == 0
        with np.load(tmp_path / name / "samples.npz") as npz:
            drawn[name] = npz["arr_0"]
    assert drawn["default"].shape == (3, 12, 12, 3)  # 6x6 latents decoded
    assert np.array_equal(drawn["default"], drawn["3"]) and not np.array_equal(drawn["default"], drawn["all"])
    capsys.readouterr()
    assert main([*argv, "--guided-channels", "5", "--out", str(tmp_path / "x")]) == 2
    assert "guided_channels must be a number of channels from 1 to 4 (the model's input channels) or all, got 5" \
        in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_an_uncached_vae_is_named_with_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(ValueError, match=r"VAE stabilityai/sd-vae-ft-mse is not in the local Hugging Face cache.*"
                                         r"huggingface-cli download stabilityai/sd-vae-ft-mse"):
        load_vae("mse")
