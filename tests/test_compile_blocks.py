"""Regional compilation (`models.compile_blocks`): each block compiled on its own, in place.

What it must keep: the eager gradients (with activation checkpointing and drop-path), the model's names and
state dict, and checkpointing's memory saving (which compiling the whole model loses under inductor,
benchmarks/GENERATION.md). The backend is aot_eager: AOTAutograd traces and partitions forward and backward as
inductor does, without inductor's C++ build (minutes on two cores).
"""

from __future__ import annotations

import warnings

import pytest
import timm
import torch
import torch.nn as nn
import torch.nn.functional as F

from engine_helpers import NumbersTask, numbers_config
from weightformer.analysis.bench import _peak_memory_mb
from weightformer.engine import fit
from weightformer.engine.loop import COMPILED_CHECKPOINTING_WARNING
from weightformer.models import WeightFormer, WeightFormerDiT, compile_blocks, set_grad_checkpointing
from weightformer.models.compilation import block_containers
from weightformer.models.dense import create_dense_backbone

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: see conftest.py


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _compiled_call(module: nn.Module) -> bool:
    return getattr(module, "_compiled_call_impl", None) is not None


def _grads(model: nn.Module, loss_fn, seed: int = 0) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    torch.manual_seed(seed)
    loss = loss_fn(model)
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _classifier_loss(model: nn.Module) -> torch.Tensor:
    x = torch.randn(3, 3, 40, 56, generator=torch.Generator().manual_seed(2), dtype=torch.float64)  # 5x7 tokens
    return model(x).logsumexp(-1).sum()


def _dit_loss(model: nn.Module) -> torch.Tensor:
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(3, 4, 10, 14, generator=gen, dtype=torch.float64)  # a 5x7 token grid
    t = torch.tensor([1.0, 500.0, 999.0], dtype=torch.float64)
    return model(x, t, torch.tensor([0, 3, 9])).square().mean()


def _randomized_dit(mixer: str) -> WeightFormerDiT:
    torch.manual_seed(0)
    model = WeightFormerDiT(input_size=10, patch_size=2, hidden_size=32, depth=4, num_classes=10, mixer=mixer,
                            num_heads=2, class_dropout_prob=0.5).double().train()
    with torch.no_grad():  # adaLN-Zero starts at zero: random weights so that every parameter gets a gradient
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * 0.2)
    return model


@pytest.mark.parametrize("kind", ["classifier", "dit", "dit_attention"])
def test_compiled_blocks_with_checkpointing_give_the_eager_gradients(kind):
    if kind == "classifier":  # drop-path 0.5: the recomputed compiled blocks must replay the same masks
        torch.manual_seed(0)
        model = WeightFormer(embed_dim=24, depth=5, patch_size=8, num_classes=7, drop_path_rate=0.5).double().train()
        loss_fn = _classifier_loss
    else:
        model = _randomized_dit("attention" if kind == "dit_attention" else "dwconv")
        loss_fn = _dit_loss
    loss, grads = _grads(model, loss_fn)
    names = list(model.state_dict())

    assert compile_blocks(model, backend="aot_eager") == len(model.blocks)
    set_grad_checkpointing(model)
    assert all(_compiled_call(block) for block in model.blocks)
    assert list(model.state_dict()) == names  # no "_orig_mod." prefixes: checkpoints load as they are
    compiled_loss, compiled_grads = _grads(model, loss_fn)

    torch.testing.assert_close(compiled_loss, loss, rtol=1e-9, atol=1e-12)
    assert compiled_grads.keys() == grads.keys() and any(".blocks." in f".{n}" for n in grads)
    for name, grad in grads.items():
        torch.testing.assert_close(compiled_grads[name], grad, rtol=1e-7, atol=1e-10, msg=name)


def test_compiled_blocks_run_compiled_code():
    # The compiled calls really replace the eager ones: a backend that counts its graphs sees one per block kind.
    graphs = []

    def counting_backend(graph_module, example_inputs):
        graphs.append(graph_module)
        return graph_module.forward

    model = _randomized_dit("dwconv")
    compile_blocks(model, backend=counting_backend)
    _dit_loss(model).backward()
    assert 1 <= len(graphs) <= 2  # dynamic and static blocks: at most two graphs for four blocks


@pytest.mark.parametrize("mixer", ["dwconv", "attention"])
def test_compiled_blocks_keep_the_memory_checkpointing_saves(mixer):
    torch.manual_seed(0)

    def step_peak(checkpointed: bool, compiled: bool) -> float:
        torch._dynamo.reset()
        model = WeightFormerDiT(input_size=16, patch_size=2, hidden_size=64, depth=6, num_classes=5, num_heads=2,
                                mixer=mixer)
        set_grad_checkpointing(model, checkpointed)
        if compiled:
            compile_blocks(model, backend="aot_eager")
        x, t, y = torch.randn(8, 4, 16, 16), torch.randint(0, 1000, (8,)), torch.randint(0, 5, (8,))

        def step():
            F.mse_loss(model(x, t, y)[:, :4], x).backward()

        step()  # compiles
        return _peak_memory_mb(step, "cpu")

    plain, checkpointed = step_peak(False, False), step_peak(True, False)
    compiled = step_peak(True, True)
    assert checkpointed < 0.5 * plain  # what there is to keep (~3x here)
    assert compiled < 1.1 * checkpointed


def test_block_containers_of_every_kind_of_model():
    wfm = WeightFormer(embed_dim=16, depth=3, patch_size=8, num_classes=2)
    deit = timm.create_model("deit_tiny_patch16_224", embed_dim=16, depth=2, num_heads=2, num_classes=2)
    dense = create_dense_backbone("weightformer_tiny", out_channels=8, embed_dim=16, depth=4)
    assert [(n, len(m)) for n, m in block_containers(wfm)] == [("blocks", 3)]
    assert [(n, len(m)) for n, m in block_containers(deit)] == [("blocks", 2)]
    assert [(n, len(m)) for n, m in block_containers(dense)] == [("backbone.blocks", 4)]
    assert compile_blocks(dense, backend="aot_eager") == 4
    assert all(_compiled_call(b) for b in dense.backbone.blocks) and not _compiled_call(dense.stages[0])


def test_a_model_without_blocks_raises_one_line():
    with pytest.raises(ValueError, match="Sequential has no blocks to compile") as info:
        compile_blocks(nn.Sequential(nn.Linear(2, 2), nn.ReLU()))
    assert "\n" not in str(info.value)


# -- the engine ---------------------------------------------------------------------------------------------------


class _Blocks(nn.Module):
    """A checkpointable model with blocks, for the engine's small numbers task (3 inputs, 1 output)."""

    def __init__(self) -> None:
        super().__init__()
        self.blocks = nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 1))
        self.grad_checkpointing = False

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(x)


class _BlocksTask(NumbersTask):
    def build_model(self) -> nn.Module:
        torch.manual_seed(0)
        return _Blocks()


def _fit_quietly(tmp_path, name: str, **overrides) -> tuple[dict, list[str]]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = fit(_BlocksTask(numbers_config(tmp_path / name, epochs=1, compile=True, compile_backend="eager",
                                                **overrides)))
    return result, [str(w.message) for w in caught]


def test_the_engine_compiles_block_by_block_with_checkpointing(tmp_path):
    result, caught = _fit_quietly(tmp_path, "auto", grad_checkpointing=True)
    assert all(_compiled_call(b) for b in result["model"].blocks)
    assert COMPILED_CHECKPOINTING_WARNING not in caught

    result, _ = _fit_quietly(tmp_path, "plain")  # no checkpointing: "auto" compiles the model as one graph
    assert not any(_compiled_call(b) for b in result["model"].blocks)

    result, caught = _fit_quietly(tmp_path, "model", grad_checkpointing=True, compile_scope="model")
    assert not any(_compiled_call(b) for b in result["model"].blocks)
    assert COMPILED_CHECKPOINTING_WARNING in caught

    result, _ = _fit_quietly(tmp_path, "blocks", compile_scope="blocks")
    assert all(_compiled_call(b) for b in result["model"].blocks)
