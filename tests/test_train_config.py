"""Recipes, command-line overrides, parameter groups and the learning-rate schedule."""

from __future__ import annotations

import math

import pytest
import torch

import weightformer
from weightformer.cli.main import build_parser
from weightformer.engine import build_optimizer, build_scheduler, peak_lr
from weightformer.tasks import config_from_args, list_recipes, load_config


def test_release_recipes_follow_spec_section_6():
    assert {"tiny", "small", "base", "synthetic"} <= set(list_recipes("classification"))
    recipes = [("tiny", "weightformer_tiny", 0.0, 224), ("small", "weightformer_small", 0.2, 224),
               ("base", "weightformer_base", 0.2, 448)]
    for name, model, drop_path, size in recipes:
        cfg = load_config("classification", name)
        assert (cfg.model, cfg.drop_path, cfg.img_size) == (model, drop_path, size)
        assert (cfg.epochs, cfg.warmup_epochs, cfg.warmup_lr, cfg.min_lr) == (300, 20, 5e-7, 5e-6)
        assert (cfg.weight_decay, cfg.clip_grad, cfg.smoothing, cfg.mixup, cfg.cutmix) == (0.05, 5.0, 0.1, 0.8, 1.0)
        assert cfg.auto_augment == "rand-m9-mstd0.5-inc1" and cfg.reprob == 0.25
        # 8 processes x 256 = 2048 images per step: 5e-4 per 512 scales to 2e-3.
        assert peak_lr(cfg, world_size=8) == pytest.approx(2e-3)


def test_command_line_overrides_parse_as_yaml():
    args = build_parser().parse_args(
        ["train", "--config", "tiny", "--epochs", "5", "--betas", "[0.9, 0.95]", "--lr", "1e-3", "--clip-grad", "null",
         "--model-kwargs", "{embed_dim: 64}", "--amp", "false"]
    )
    cfg = config_from_args(args, "classification")
    assert cfg.epochs == 5 and cfg.betas == [0.9, 0.95] and cfg.lr == 1e-3 and cfg.clip_grad is None
    assert cfg.model_kwargs == {"embed_dim": 64} and cfg.amp is False
    assert cfg.model == "weightformer_tiny" and cfg.warmup_epochs == 20  # untouched values come from the recipe


def test_unknown_keys_and_recipes_are_rejected(tmp_path):
    with pytest.raises(ValueError, match="Unknown config keys: epoch"):
        load_config("classification", "tiny", epoch=3)
    with pytest.raises(ValueError, match="Unknown recipe"):
        load_config("classification", "huge")
    bad = tmp_path / "bad.yaml"
    bad.write_text("warmup_epoch: 3\n")
    with pytest.raises(ValueError, match="warmup_epoch"):
        load_config("classification", bad)


def test_no_weight_decay_on_norms_and_biases():
    model = weightformer.create_model("weightformer_tiny", embed_dim=32, depth=3, num_classes=5)
    optimizer = build_optimizer(model, load_config("classification", "tiny"), lr=1e-3)
    decay = {id(p) for g in optimizer.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    no_decay = {id(p) for g in optimizer.param_groups if g["weight_decay"] == 0 for p in g["params"]}
    assert {g["weight_decay"] for g in optimizer.param_groups} == {0.0, 0.05}
    for name, p in model.named_parameters():
        expected = no_decay if p.ndim <= 1 else decay
        assert id(p) in expected, name
    # The dynamic layers' predictor bases are matrices and do get decay; their biases do not.
    names = {id(p): n for n, p in model.named_parameters()}
    assert any("predictor" in names[i] for i in decay) and any(names[i].endswith("bias") for i in no_decay)


def test_layer_decay_scales_the_lr_per_block_and_the_schedule_keeps_the_scales():
    model = weightformer.create_model("weightformer_tiny", embed_dim=32, depth=3, num_classes=5)
    cfg = load_config("classification", "tiny", layer_decay=0.5, epochs=2, warmup_epochs=0)
    optimizer = build_optimizer(model, cfg, lr=1e-3)
    names = {id(p): n for n, p in model.named_parameters()}
    scale = {names[id(p)]: g["lr_scale"] for g in optimizer.param_groups for p in g["params"]}
    assert scale["head.weight"] == 1.0 and scale["blocks.2.norm2.weight"] == 0.5
    assert scale["patch_embed.proj.weight"] == 0.5**4
    scheduler = build_scheduler(optimizer, cfg, steps_per_epoch=5)
    scheduler.step_update(num_updates=0)
    lrs = {names[id(g["params"][0])]: g["lr"] for g in optimizer.param_groups}
    assert lrs["patch_embed.proj.weight"] == pytest.approx(1e-3 * 0.5**4)


def test_schedule_warms_up_per_step_then_cosine_to_min_lr():
    cfg = load_config("classification", "tiny", epochs=10, warmup_epochs=2)
    model = torch.nn.Linear(4, 4)
    steps = 7  # per epoch
    optimizer = build_optimizer(model, cfg, lr=2e-3)
    scheduler = build_scheduler(optimizer, cfg, steps)
    warmup, total = 2 * steps, 10 * steps
    assert optimizer.param_groups[0]["lr"] == pytest.approx(5e-7)  # step 0: the warm-up's start
    lr = [scheduler._get_lr(t)[0] for t in range(total + 1)]
    assert lr[0] == pytest.approx(5e-7)
    assert lr[warmup // 2] == pytest.approx(5e-7 + (2e-3 - 5e-7) / 2)  # linear in steps, not epochs
    # At the end of warm-up the cosine (over the whole run, as in timm and DeiT) takes over.
    cosine = 5e-6 + 0.5 * (2e-3 - 5e-6) * (1 + math.cos(math.pi * warmup / total))
    assert lr[warmup] == pytest.approx(cosine)
    assert lr[warmup - 1] == pytest.approx(5e-7 + (2e-3 - 5e-7) * (warmup - 1) / warmup)  # ramps to the peak
    assert all(a > b for a, b in zip(lr[warmup:], lr[warmup + 1 :], strict=False))  # then only decreases
    assert lr[total] == pytest.approx(5e-6)


def test_model_kwargs_flag_adds_to_the_recipes_mapping_and_other_flags_replace():
    args = build_parser().parse_args(
        ["train", "--config", "synthetic", "--model-kwargs", "{linear_predictor: normalized, depth: 3}",
         "--synthetic", "{}"]
    )
    cfg = config_from_args(args, "classification")
    # the recipe's width and patch stay, depth is replaced, the predictor is added
    assert cfg.model_kwargs == {"embed_dim": 64, "depth": 3, "patch_size": 4, "linear_predictor": "normalized"}
    assert cfg.synthetic == {}  # an empty mapping turns the embedded dataset off, as before
    # Python callers state whole values
    assert load_config("classification", "synthetic", model_kwargs={"depth": 3}).model_kwargs == {"depth": 3}
