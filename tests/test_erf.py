"""Effective receptive fields: bounded and exactly zero outside the kernels' reach for a static network, global for
WeightFormer; the map and the area fractions against plain statements of their definitions; the command."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn as nn
from PIL import Image

from weightformer.analysis.erf import ModelSpec, area_fractions, build_model, erf_map, parse_model_spec
from weightformer.cli.main import main


def _images(count: int = 2, size: int = 256) -> torch.Tensor:
    return torch.randn(count, 3, size, size, generator=torch.Generator().manual_seed(size + count))


def test_static_network_gives_exactly_zero_outside_its_receptive_field_weightformer_does_not():
    # 256x256 -> a 16x16 token grid; central token (8, 8). Four static blocks with 3x3 convs reach 4 tokens
    # each way: tokens 4..12, pixels 64..207. The 16x16 patch embedding and the MLPs add nothing.
    images = _images()
    kwargs = dict(embed_dim=32, depth=4)
    static = erf_map(build_model(ModelSpec("weightformer_tiny", {**kwargs, "dynamic_blocks": "none"}), 256), images)
    inside = torch.zeros(256, 256, dtype=torch.bool)
    inside[64:208, 64:208] = True
    assert (static[~inside] == 0).all()
    assert (static[inside] > 0).float().mean() > 0.99
    dynamic = erf_map(build_model(ModelSpec("weightformer_tiny", kwargs), 256), images)  # block 1 dynamic
    assert dynamic[0, 0] > 0 and (dynamic > 0).all()
    assert area_fractions(dynamic)["0.99"] > area_fractions(static)["0.99"]


class _Identity(nn.Module):
    """forward_features(x) = x: the central token is the centre pixel's colour vector."""

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return x


def test_erf_map_is_the_summed_gradient_magnitude_of_the_central_token():
    images = _images(3, 9)
    expected = torch.zeros(9, 9, dtype=torch.float64)
    expected[4, 4] = (images[:, :, 4, 4] > 0).sum()  # d sum_c ReLU(x_c) / dx_c = 1 where x_c > 0
    torch.testing.assert_close(erf_map(_Identity(), images, batch_size=2), expected)


def test_area_fractions_count_the_fewest_pixels_holding_each_share():
    contribution = torch.tensor([[1.0, 4.0], [2.0, 3.0]])  # total 10: 4 -> 40 %, 4 + 3 -> 70 %, all -> 100 %
    assert area_fractions(contribution) == {"0.2": 0.25, "0.5": 0.5, "0.99": 1.0}


def test_model_specs_parse_options_and_checkpoints():
    spec = parse_model_spec("weightformer_tiny:dynamic_blocks=none,depth=4,mlp_ratio=2.5@w.pth")
    assert spec == ModelSpec("weightformer_tiny", {"dynamic_blocks": "none", "depth": 4, "mlp_ratio": 2.5}, "w.pth")
    with pytest.raises(ValueError, match="Unknown model"):
        parse_model_spec("no_such_model")


def test_erf_command_writes_png_and_json_for_several_models(tmp_path, capsys):
    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(2):
        Image.fromarray(rng.integers(0, 256, (120, 90, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    models = ["weightformer_tiny:embed_dim=32,depth=4", "weightformer_tiny:embed_dim=32,depth=4,dynamic_blocks=none",
              "deit_tiny_patch16_224:depth=2", "convnext_atto"]
    out = tmp_path / "erf"
    assert main(["erf", *models, "--sizes", "128", "--images", str(folder), "-o", str(out)]) == 0
    assert "convnext_atto" in capsys.readouterr().out
    report = json.loads((tmp_path / "erf.json").read_text())
    assert report["images"] == 2 and len(report["results"]) == 4
    for result in report["results"]:
        fractions = [result["area_fraction"][k] for k in ("0.2", "0.5", "0.99")]
        assert 0 < fractions[0] <= fractions[1] <= fractions[2] <= 1
    assert Image.open(tmp_path / "erf.png").size[0] > 400


def test_erf_command_errors_are_one_line(capsys, tmp_path):
    assert main(["erf", "no_such_model"]) == 2
    assert main(["erf", "weightformer_tiny", "--images", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all(line.startswith("weightformer erf: error: ") for line in err)


def test_given_weights_replace_the_random_ones(tmp_path):
    torch.manual_seed(5)
    source = build_model(ModelSpec("convnext_atto"), 128, seed=5)
    path = tmp_path / "convnext.pth"
    torch.save({"model": source.state_dict()}, path)
    spec = parse_model_spec(f"convnext_atto@{path}")
    loaded, random = build_model(spec, 128, seed=0), build_model(ModelSpec("convnext_atto"), 128, seed=0)
    images = _images(1, 128)
    torch.testing.assert_close(erf_map(loaded, images), erf_map(source, images))
    assert not torch.allclose(erf_map(random, images), erf_map(source, images))


def test_embedded_images_are_the_classification_default_scenes():
    from weightformer.analysis.erf import embedded_images

    images = embedded_images(3, 64)
    assert [im.size for im in images] == [(64, 64)] * 3 and images[0].mode == "RGB"
    assert embedded_images(3, 64)[1].tobytes() == images[1].tobytes()  # deterministic by seed
