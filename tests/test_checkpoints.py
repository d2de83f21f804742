"""The release's checkpoints (README "Released checkpoints") load exactly; timm sees the models with their
metadata; nothing downloads."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import timm
import torch
from safetensors.torch import save_file

import weightformer
from reference import release_forward_ref, release_state_dict
from weightformer import CheckpointMismatchError, WeightFormer, checkpoint_filter_fn, load_checkpoint


def _model_for(width: int, depth: int, num_classes: int = 1000, dtype=torch.float32) -> WeightFormer:
    return WeightFormer(embed_dim=width, depth=depth, num_classes=num_classes).to(dtype).eval()


@pytest.mark.parametrize("size", [(64, 96), (96, 64), (128, 128)])
def test_release_state_dict_gives_the_reference_logits(size):
    # Small release-format network in float64, even token grids (4x6, 6x4, 8x8), against the functional
    # reference written from the paper's architecture with the release's own key names.
    sd = release_state_dict(width=32, depth=5, num_classes=10, dtype=torch.float64, seed=1)
    model = load_checkpoint(_model_for(32, 5, 10, torch.float64), sd)
    images = torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(model(images), release_forward_ref(sd, images), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("size", [(80, 80), (112, 80), (208, 208)])
def test_floor_pooling_option_gives_the_reference_code_on_odd_grids(size):
    # Odd token grids (5x5, 7x5, 13x13): odd_grid_pooling="floor" drops the last row/column from the dynamic
    # linear's statistics as the reference code does, and matches it exactly; the default (ceil) does not.
    sd = release_state_dict(width=32, depth=5, num_classes=10, dtype=torch.float64, seed=4)
    floor = load_checkpoint(
        WeightFormer(embed_dim=32, depth=5, num_classes=10, odd_grid_pooling="floor").double().eval(), sd
    )
    ceil = load_checkpoint(_model_for(32, 5, 10, torch.float64), sd)
    images = torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    expected = release_forward_ref(sd, images)
    with torch.no_grad():
        torch.testing.assert_close(floor(images), expected, rtol=1e-9, atol=1e-9)
        assert not torch.allclose(ceil(images), expected, rtol=1e-6, atol=1e-6)


def test_release_tiny_at_224_gives_the_reference_logits():
    sd = release_state_dict(width=192, depth=17, dtype=torch.float64, seed=3)
    model = weightformer.create_model("weightformer_tiny").double().eval()
    load_checkpoint(model, sd)
    images = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(model(images), release_forward_ref(sd, images), rtol=1e-9, atol=1e-9)


def test_release_pth_and_hub_safetensors_files_load_identically(tmp_path):
    sd = release_state_dict(width=32, depth=5, num_classes=10, seed=5)
    torch.save({"model": sd, "epoch": 299}, tmp_path / "wfm.pth")
    save_file(sd, str(tmp_path / "model.safetensors"))
    small = dict(embed_dim=32, depth=5, num_classes=10)
    from_pth = weightformer.create_model("weightformer_tiny", checkpoint_path=tmp_path / "wfm.pth", **small).eval()
    from_st = weightformer.create_model("weightformer_tiny", checkpoint_path=tmp_path / "model.safetensors", **small)
    images = torch.randn(2, 3, 64, 80)
    with torch.no_grad():
        logits = from_pth(images)
        torch.testing.assert_close(from_st.eval()(images), logits, rtol=0, atol=0)
    # The translated W0 is the release's input-major matrix transposed to nn.Linear's layout.
    torch.testing.assert_close(from_pth.blocks[1].mlp.fc1.weight, sd["blocks.1.linear1.w"].t())
    # Our own state dicts (and DDP-wrapped ones) round-trip through the same loader.
    ours = {"module." + k: v for k, v in from_pth.state_dict().items()}
    reloaded = load_checkpoint(_model_for(32, 5, 10), {"state_dict": ours})
    with torch.no_grad():
        torch.testing.assert_close(reloaded(images), logits, rtol=0, atol=0)


def test_every_release_key_has_a_home():
    sd = release_state_dict(width=32, depth=5)
    translated = checkpoint_filter_fn(sd)
    assert set(translated) == set(_model_for(32, 5).state_dict())


def test_wrong_architecture_names_the_mismatched_keys(tmp_path):
    torch.save({"model": release_state_dict(width=32, depth=5)}, tmp_path / "narrow.pth")
    model = _model_for(48, 5)
    before = model.head.weight.clone()
    with pytest.raises(CheckpointMismatchError, match=r"wrong shape: patch_embed\.proj\.weight: checkpoint \(32"):
        load_checkpoint(model, tmp_path / "narrow.pth")
    assert torch.equal(model.head.weight, before)  # nothing loaded
    shallow = release_state_dict(width=32, depth=4)
    with pytest.raises(CheckpointMismatchError, match=r"missing: blocks\.4\.norm1\.weight"):
        load_checkpoint(_model_for(32, 5), shallow)
    with pytest.raises(CheckpointMismatchError, match=r"unexpected: blocks\.4\."):
        load_checkpoint(_model_for(32, 4), release_state_dict(width=32, depth=5))


def test_checkpoints_are_read_weights_only(tmp_path):
    torch.save({"model": release_state_dict(width=32, depth=2), "evil": _NotATensor()}, tmp_path / "x.pth")
    with pytest.raises(ValueError, match="holds pickled Python objects .*_NotATensor.*weights_only"):
        load_checkpoint(_model_for(32, 2), tmp_path / "x.pth")
    with pytest.raises(FileNotFoundError, match="No checkpoint file"):
        load_checkpoint(_model_for(32, 2), tmp_path / "missing.pth")


class _NotATensor:
    pass


def test_pretrained_resolves_through_the_hub_cache_offline(tmp_path):
    # Lay out huggingface_hub's cache as a download would have, then ask for pretrained=True with the network
    # off: the weights must come from the cache under the release's repo id.
    sd = release_state_dict(width=192, depth=17, seed=7)
    snapshot = tmp_path / "hub" / "models--RuizeHe--weightformer-t" / "snapshots" / ("a" * 40)
    snapshot.mkdir(parents=True)
    save_file(sd, str(snapshot / "model.safetensors"))
    refs = tmp_path / "hub" / "models--RuizeHe--weightformer-t" / "refs"
    refs.mkdir()
    (refs / "main").write_text("a" * 40)
    script = (
        "import torch, weightformer\n"
        "m = weightformer.create_model('weightformer_tiny', pretrained=True)\n"
        "print(float(m.head.bias.double().sum()))\n"
    )
    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert float(out.stdout.strip().splitlines()[-1]) == pytest.approx(float(sd["head.bias"].double().sum()))


def test_normalized_variants_are_the_release_networks_with_the_normalized_predictor():
    from weightformer.layers.dynamic_linear import LINEAR_PREDICTORS

    torch.manual_seed(0)
    named = weightformer.create_model("weightformer_tiny_normalized", num_classes=7, img_size=64).eval()
    torch.manual_seed(0)
    by_kwarg = weightformer.create_model("weightformer_tiny", num_classes=7, img_size=64,
                                         linear_predictor="normalized").eval()
    release = weightformer.create_model("weightformer_tiny", num_classes=7, img_size=64)
    assert named.dynamic_indices == release.dynamic_indices == (1, 4, 7, 10, 13, 16)
    for i, block in enumerate(named.blocks):
        fc1 = block.mlp.fc1
        if i in named.dynamic_indices:
            assert type(fc1.predictor) is LINEAR_PREDICTORS["normalized"]
            assert type(block.token_mixer.predictor) is type(release.blocks[i].token_mixer.predictor)
        else:
            assert type(fc1) is torch.nn.Linear
    # Same construction, same init: the registry entry is the kwarg and nothing else.
    assert named.state_dict().keys() == by_kwarg.state_dict().keys()
    pairs = zip(named.state_dict().values(), by_kwarg.state_dict().values(), strict=True)
    assert all(torch.equal(a, b) for a, b in pairs)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(named(x), by_kwarg(x))
    cfg = timm.create_model("weightformer_small_normalized").pretrained_cfg
    assert cfg["tag"] == "untrained" and cfg.get("hf_hub_id") is None and cfg["input_size"] == (3, 224, 224)
    assert timm.create_model("weightformer_base_normalized").img_size == (448, 448)
    with pytest.raises(ValueError, match="No pretrained weights exist for weightformer_tiny_normalized"):
        weightformer.create_model("weightformer_tiny_normalized", pretrained=True)


def test_timm_sees_the_models_with_release_metadata():
    assert {"weightformer_tiny", "weightformer_small", "weightformer_base"} <= set(timm.list_models("weightformer*"))
    released = ["weightformer_base", "weightformer_small", "weightformer_tiny"]
    assert weightformer.list_models() == sorted(released + [f"{name}_normalized" for name in released])
    model = timm.create_model("weightformer_base", num_classes=5)
    assert isinstance(model, WeightFormer) and model.num_classes == 5
    cfg = model.pretrained_cfg
    assert cfg["hf_hub_id"] == "RuizeHe/weightformer-b"
    assert cfg["input_size"] == (3, 448, 448) and cfg["interpolation"] == "bicubic"
    assert cfg["mean"] == (0.485, 0.456, 0.406) and cfg["std"] == (0.229, 0.224, 0.225)
    assert cfg["pool_size"] == (28, 28) and cfg["crop_mode"] == "squash"


def test_timm_features_only():
    model = timm.create_model("weightformer_tiny", features_only=True, out_indices=(2, 9, 16)).eval()
    assert model.feature_info.channels() == [192, 192, 192]
    assert model.feature_info.reduction() == [16, 16, 16]
    with torch.no_grad():
        features = model(torch.randn(1, 3, 96, 128))
    assert [f.shape for f in features] == [(1, 192, 6, 8)] * 3


def test_timm_fx_feature_extraction_gives_the_blocks_outputs_channels_last():
    torch.manual_seed(0)
    fx = timm.create_model("weightformer_tiny", features_only=True, feature_cls="fx", out_indices=(2, 9, 16)).eval()
    model = timm.create_model("weightformer_tiny").eval()
    model.load_state_dict(fx.graph_module.state_dict(), strict=False)
    assert fx.output_fmt == "NHWC"  # as forward_features declares with model.output_fmt
    images = torch.randn(1, 3, 96, 128)
    with torch.no_grad():
        features = fx(images)
        expected = model.forward_intermediates(images, indices=[2, 9, 16], output_fmt="NHWC", intermediates_only=True)
    for got, want in zip(features, expected, strict=True):
        torch.testing.assert_close(got, want)


def test_our_checkpoints_from_before_dynamic_linear_was_an_nn_linear_still_load():
    torch.manual_seed(0)
    model = _model_for(32, 5, 10)
    old = {k.replace("mlp.fc1.weight", "mlp.fc1.static_weight") if k.startswith("blocks.1.") else k: v
           for k, v in model.state_dict().items()}
    assert "blocks.1.mlp.fc1.static_weight" in old
    torch.manual_seed(1)
    loaded = load_checkpoint(_model_for(32, 5, 10), {"model": old})
    torch.testing.assert_close(loaded.blocks[1].mlp.fc1.weight, model.blocks[1].mlp.fc1.weight)
