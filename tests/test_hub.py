"""Hub-style folders (config.json + model.safetensors): ours in timm's layout, and the release's own; offline."""
from __future__ import annotations

import json

import pytest
import timm
import torch
from safetensors.torch import save_file

from reference import release_forward_ref, release_state_dict
from weightformer import WeightFormer, create_model, from_pretrained, save_pretrained


def _images(height: int = 64, width: int = 96) -> torch.Tensor:
    return torch.randn(2, 3, height, width, generator=torch.Generator().manual_seed(7))


def _trained_like_model() -> WeightFormer:
    # What `weightformer train` builds for the embedded dataset: a small non-default network, 9 classes.
    torch.manual_seed(0)
    model = create_model(
        "weightformer_tiny", num_classes=9, embed_dim=64, depth=6, patch_size=4, img_size=32,
        dynamic_blocks=[1, 4], linear_predictor="nonlinear", odd_grid_pooling="floor",
    )
    with torch.no_grad():  # move away from the initialisation, so that a rebuilt model cannot pass by chance
        for param in model.parameters():
            param.add_(0.01 * torch.randn_like(param))
    return model.eval()


def test_our_models_round_trip_through_a_hub_folder(tmp_path):
    model = _trained_like_model()
    folder = save_pretrained(model, tmp_path / "wfm")
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors"]
    config = json.loads((folder / "config.json").read_text())
    assert config["architecture"] == "weightformer_tiny" and config["num_classes"] == 9
    assert config["model_args"]["dynamic_blocks"] == [1, 4] and config["model_args"]["patch_size"] == 4
    assert config["pretrained_cfg"]["input_size"] == [3, 32, 32] and config["pretrained_cfg"]["crop_mode"] == "squash"
    images = _images(32, 48)
    with torch.no_grad():
        expected = model(images)
        for loaded in (from_pretrained(folder), timm.create_model(f"local-dir:{folder}", pretrained=True)):
            loaded.eval()
            assert loaded.dynamic_indices == (1, 4) and loaded.patch_size == 4
            torch.testing.assert_close(loaded(images), expected, rtol=0, atol=0)


@pytest.mark.parametrize("predictor", ["agent", "normalized"])
def test_models_with_the_output_predictors_round_trip_too(tmp_path, predictor):
    torch.manual_seed(0)
    model = create_model("weightformer_tiny", num_classes=3, embed_dim=16, depth=3, patch_size=4, img_size=32,
                         linear_predictor=predictor).eval()
    folder = save_pretrained(model, tmp_path / "wfm")
    assert json.loads((folder / "config.json").read_text())["model_args"]["linear_predictor"] == predictor
    images = _images(20, 28)
    with torch.no_grad():
        torch.testing.assert_close(from_pretrained(folder).eval()(images), model(images), rtol=0, atol=0)


def test_a_model_built_without_the_registry_saves_too(tmp_path):
    torch.manual_seed(1)
    model = WeightFormer(embed_dim=32, depth=4, num_classes=3, img_size=64).eval()
    loaded = from_pretrained(save_pretrained(model, tmp_path / "plain")).eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(_images()), model(_images()), rtol=0, atol=0)


def _release_folder(tmp_path, **overrides):
    # The release's Hub layout (PyTorchModelHubMixin): its constructor arguments and its own key names.
    config = dict(img_size=224, patch_size=16, in_chans=3, num_classes=10, embed_dim=32, depth=5, mlp_ratio=4.0,
                  qkv_bias=True, representation_size=None, distilled=False, drop_rate=0.0, attn_drop_rate=0.0,
                  drop_path_rate=0.1)
    config.update(overrides)
    folder = tmp_path / "release"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(config))
    state = release_state_dict(width=32, depth=5, num_classes=10, dtype=torch.float64, seed=6)
    save_file({k: v.float() for k, v in state.items()}, str(folder / "model.safetensors"))
    return folder, state


def test_the_release_hub_layout_loads_and_gives_the_reference_logits(tmp_path):
    folder, state = _release_folder(tmp_path)
    model = from_pretrained(folder).double().eval()
    assert model.embed_dim == 32 and len(model.blocks) == 5 and model.num_classes == 10
    images = _images().double()
    with torch.no_grad():
        torch.testing.assert_close(model(images), release_forward_ref(state, images), rtol=1e-5, atol=1e-5)


def test_release_options_we_do_not_have_are_refused(tmp_path):
    folder, _ = _release_folder(tmp_path, distilled=True)
    with pytest.raises(ValueError, match="distilled"):
        from_pretrained(folder)


def test_missing_hub_files_are_named(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="config.json"):
        from_pretrained(tmp_path / "empty")
