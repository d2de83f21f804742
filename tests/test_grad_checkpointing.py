"""Activation checkpointing: the same loss and gradients with it as without, and the blocks really recomputed.

Every model runs in float64 on odd grids, in training mode with drop-path (and label dropout, Mask R-CNN's
proposal sampling, ...) so that the RNG replay of the recomputation is exercised: a recomputation that drew new
drop-path masks would give other gradients, which `test_the_gradient_test_notices_a_recomputation_without_rng_replay`
shows this comparison detects.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable

import pytest
import torch
import torch.nn as nn
from torch.utils.checkpoint import checkpoint

import weightformer.models.weightformer as wfm_module
from engine_helpers import NumbersTask, numbers_config
from weightformer.engine import fit
from weightformer.models import WeightFormer, WeightFormerDiT, create_model, set_grad_checkpointing
from weightformer.models.dense import create_dense_backbone

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: see conftest.py

Loss = Callable[[nn.Module], torch.Tensor]


def _loss_and_grads(model: nn.Module, loss_fn: Loss, enable: bool, seed: int = 0):
    """One forward and backward pass from the same RNG state, with checkpointing on or off."""
    set_grad_checkpointing(model, enable)
    model.zero_grad(set_to_none=True)
    torch.manual_seed(seed)
    loss = loss_fn(model)
    loss.backward()
    return loss.detach(), {n: None if p.grad is None else p.grad.clone() for n, p in model.named_parameters()}


def _assert_same_gradients(model: nn.Module, loss_fn: Loss) -> None:
    loss, grads = _loss_and_grads(model, loss_fn, enable=False)
    loss_ckpt, grads_ckpt = _loss_and_grads(model, loss_fn, enable=True)
    torch.testing.assert_close(loss_ckpt, loss, rtol=1e-6, atol=1e-9)
    in_blocks = [n for n, p in model.named_parameters() if p.requires_grad and ".blocks." in f".{n}"]
    assert in_blocks and all(grads[n] is not None for n in in_blocks)  # the checkpointed parameters all compared
    for name, grad in grads.items():
        if grad is None:
            assert grads_ckpt[name] is None, name
        else:
            torch.testing.assert_close(grads_ckpt[name], grad, rtol=1e-6, atol=1e-9, msg=name)


def _block_calls(model: nn.Module, blocks: nn.Module, loss_fn: Loss, enable: bool) -> list[int]:
    """How many times each block's forward started during one forward and backward pass.

    A pre-hook, since the recomputation stops as soon as it has rebuilt the last tensor the backward pass needs
    (torch.utils.checkpoint's early stop), before the block returns and its forward hooks would run.
    """
    calls = [0] * len(blocks)
    handles = [block.register_forward_pre_hook(functools.partial(_count, calls, i)) for i, block in enumerate(blocks)]
    try:
        _loss_and_grads(model, loss_fn, enable)
    finally:
        for handle in handles:
            handle.remove()
    return calls


def _count(calls: list[int], i: int, *_) -> None:
    calls[i] += 1


def _randomize(model: nn.Module, std: float = 0.2) -> nn.Module:
    # DiT zero-initialises its gates and output layer; random weights make every parameter's gradient non-zero.
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * std)
    return model


# -- the classifier ---------------------------------------------------------------------------------------------


def _classifier(**kwargs) -> WeightFormer:
    args = dict(embed_dim=24, depth=5, patch_size=8, num_classes=7, drop_path_rate=0.5, drop_rate=0.3)
    return WeightFormer(**{**args, **kwargs}).double().train()


def _classifier_loss(model: nn.Module) -> torch.Tensor:
    x = torch.randn(3, 3, 40, 56, generator=torch.Generator().manual_seed(2), dtype=torch.float64)  # 5x7 tokens
    return model(x).logsumexp(-1).sum()


@pytest.mark.parametrize("dynamic_blocks", ["sparse", "all"])
def test_classifier_gives_the_same_gradients_with_drop_path(dynamic_blocks):
    _assert_same_gradients(_classifier(dynamic_blocks=dynamic_blocks), _classifier_loss)


def test_the_gradient_test_notices_a_recomputation_without_rng_replay(monkeypatch):
    # Without restoring the RNG state, the recomputed blocks draw new drop-path masks: other gradients.
    model = _classifier()
    _, grads = _loss_and_grads(model, _classifier_loss, enable=False)
    monkeypatch.setattr(wfm_module, "checkpoint", functools.partial(checkpoint, preserve_rng_state=False))
    _, grads_ckpt = _loss_and_grads(model, _classifier_loss, enable=True)
    differs = [n for n, g in grads.items() if not torch.allclose(grads_ckpt[n], g, rtol=1e-6, atol=1e-9)]
    assert differs


def test_classifier_recomputes_every_block_in_the_backward_pass_only_when_enabled():
    model = _classifier()
    assert _block_calls(model, model.blocks, _classifier_loss, enable=False) == [1] * 5
    assert _block_calls(model, model.blocks, _classifier_loss, enable=True) == [2] * 5
    assert model.grad_checkpointing
    set_grad_checkpointing(model, False)
    assert not model.grad_checkpointing


def test_classifier_intermediates_are_checkpointed_too():
    model = _classifier()

    def loss(m: nn.Module) -> torch.Tensor:
        x = torch.randn(2, 3, 40, 56, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
        return sum(y.square().mean() for y in m.forward_intermediates(x, indices=[1, 4], intermediates_only=True))

    _assert_same_gradients(model, loss)
    assert _block_calls(model, model.blocks, loss, enable=True) == [2] * 5


def test_checkpointing_is_off_under_no_grad():
    model = _classifier().eval()
    model.set_grad_checkpointing(True)
    calls = [0] * 5
    for i, block in enumerate(model.blocks):
        block.register_forward_pre_hook(functools.partial(_count, calls, i))
    x = torch.randn(1, 3, 40, 40, dtype=torch.float64)
    with torch.no_grad():
        checkpointed = model(x)
    assert calls == [1] * 5
    set_grad_checkpointing(model, False)
    with torch.no_grad():
        torch.testing.assert_close(model(x), checkpointed, rtol=0, atol=0)


# -- WeightFormer-DiT and its attention baseline ----------------------------------------------------------------


def _dit_loss(model: nn.Module) -> torch.Tensor:
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(3, 4, 10, 14, generator=gen, dtype=torch.float64)  # a 5x7 token grid
    t = torch.tensor([1.0, 500.0, 999.0], dtype=torch.float64)
    y = torch.tensor([0, 3, 9])
    return model(x, t, y).square().mean()


@pytest.mark.parametrize("mixer", ["dwconv", "attention"])
def test_dit_gives_the_same_gradients_and_recomputes_its_blocks(mixer):
    # class_dropout_prob 0.5 in training: label dropout draws from the RNG before the blocks.
    model = WeightFormerDiT(input_size=10, patch_size=2, hidden_size=32, depth=4, num_classes=10, mixer=mixer,
                            class_dropout_prob=0.5, num_heads=2)
    model = _randomize(model.double().train())
    _assert_same_gradients(model, _dit_loss)
    assert _block_calls(model, model.blocks, _dit_loss, enable=False) == [1] * 4
    assert _block_calls(model, model.blocks, _dit_loss, enable=True) == [2] * 4


def test_registered_dit_variants_support_checkpointing():
    model = create_model("dit_attn_s_2", hidden_size=32, depth=1, num_heads=2, input_size=8, num_classes=4)
    set_grad_checkpointing(model)
    assert model.grad_checkpointing


# -- dense backbones, Mask R-CNN and UperNet --------------------------------------------------------------------


def _pyramid_loss(model: nn.Module) -> torch.Tensor:
    x = torch.randn(2, 3, 50, 75, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    maps = model(x)
    return sum(m.square().mean() * (i + 1) for i, m in enumerate(maps.values()))


@pytest.mark.parametrize("name, kwargs", [("weightformer_tiny", dict(embed_dim=16, depth=4)),
                                          ("deit_tiny_patch16_224", dict(embed_dim=16, depth=3, num_heads=2))])
def test_dense_backbone_gives_the_same_gradients_and_recomputes_its_blocks(name, kwargs):
    torch.manual_seed(0)
    model = create_dense_backbone(name, out_channels=8, drop_path_rate=0.5, **kwargs).double().train()
    _assert_same_gradients(model, _pyramid_loss)
    blocks = model.backbone.blocks
    assert _block_calls(model, blocks, _pyramid_loss, enable=False) == [1] * len(blocks)
    assert _block_calls(model, blocks, _pyramid_loss, enable=True) == [2] * len(blocks)


def _detector_loss(model: nn.Module) -> torch.Tensor:
    gen = torch.Generator().manual_seed(6)
    images = [torch.rand(3, 45, 61, generator=gen, dtype=torch.float64) for _ in range(2)]
    masks = torch.zeros(1, 45, 61, dtype=torch.uint8)
    masks[:, 5:30, 8:40] = 1
    targets = [dict(boxes=torch.tensor([[8.0, 5, 40, 30]], dtype=torch.float64), labels=torch.tensor([1]),
                    masks=masks)] * 2
    return sum(model(images, targets).values())


def test_mask_rcnn_gives_the_same_gradients_and_recomputes_the_backbone_blocks():
    pytest.importorskip("torchvision")
    from weightformer.models.detection import create_detector

    torch.manual_seed(0)
    model = create_detector("weightformer_tiny", num_classes=2, out_channels=8, min_size=48, max_size=64,
                            head_channels=8, box_fc=16, drop_path_rate=0.5, embed_dim=16, depth=3)
    model = model.double().train()
    _assert_same_gradients(model, _detector_loss)
    blocks = model.pyramid.backbone.blocks
    # torchvision's MaskRCNN itself has no set_grad_checkpointing: the function finds the pyramid inside it.
    assert _block_calls(model.rcnn, blocks, _detector_loss, enable=True) == [2] * 3
    assert model.pyramid.backbone.grad_checkpointing
    assert _block_calls(model.rcnn, blocks, _detector_loss, enable=False) == [1] * 3


def test_upernet_gives_the_same_gradients_and_recomputes_the_backbone_blocks():
    from weightformer.models.segmentation import create_segmenter

    torch.manual_seed(0)
    model = create_segmenter("weightformer_tiny", num_classes=3, out_channels=8, channels=8, drop_path_rate=0.5,
                             embed_dim=16, depth=3).double().train()

    def loss(m: nn.Module) -> torch.Tensor:
        x = torch.randn(2, 3, 50, 75, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
        return m(x).logsumexp(1).mean()

    _assert_same_gradients(model, loss)
    assert _block_calls(model, model.pyramid.backbone.blocks, loss, enable=True) == [2] * 3


# -- the function and the engine --------------------------------------------------------------------------------


def test_a_model_without_support_raises_one_line():
    with pytest.raises(ValueError, match="Sequential does not support gradient checkpointing") as info:
        set_grad_checkpointing(nn.Sequential(nn.Linear(2, 2), nn.ReLU()))
    assert "\n" not in str(info.value)


class _CheckpointableLinear(nn.Linear):
    grad_checkpointing = False

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable


class _CheckpointableNumbersTask(NumbersTask):
    def build_model(self) -> nn.Module:
        torch.manual_seed(0)
        return _CheckpointableLinear(3, 1)


def test_the_engine_enables_checkpointing_from_the_config(tmp_path):
    result = fit(_CheckpointableNumbersTask(numbers_config(tmp_path / "on", epochs=1, grad_checkpointing=True)))
    assert result["model"].grad_checkpointing
    result = fit(_CheckpointableNumbersTask(numbers_config(tmp_path / "off", epochs=1)))
    assert not result["model"].grad_checkpointing
    with pytest.raises(ValueError, match="Linear does not support gradient checkpointing"):
        fit(NumbersTask(numbers_config(tmp_path / "unsupported", epochs=1, grad_checkpointing=True)))


def test_the_engine_warns_that_compilation_loses_most_of_the_saving(tmp_path):
    task = _CheckpointableNumbersTask(numbers_config(tmp_path / "compiled", epochs=1, grad_checkpointing=True,
                                                     compile=True, compile_backend="eager"))
    with pytest.warns(UserWarning, match="grad_checkpointing with compile"):
        fit(task)
    for name, overrides in (("eager", dict(grad_checkpointing=True)), ("plain", dict(compile=True,
                                                                                  compile_backend="eager"))):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            fit(_CheckpointableNumbersTask(numbers_config(tmp_path / name, epochs=1, **overrides)))
        assert not [w for w in caught if "grad_checkpointing with compile" in str(w.message)]
