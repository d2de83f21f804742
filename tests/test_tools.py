"""The tools people apply to timm models see every submodule of WeightFormer: hooks, LoRA, quantization, pruning,
FLOP counters. The MLP's fused fast path must never hide a module's own forward from them."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn
from torch.nn.utils import prune

import weightformer
from weightformer import WeightFormer, kernels
from weightformer.analysis.flops import _FVCORE_EXTRAS
from weightformer.layers import DynamicLinear


def _small(seed: int = 0) -> WeightFormer:
    torch.manual_seed(seed)
    return WeightFormer(embed_dim=32, depth=4, num_classes=5)  # blocks 1 (dynamic), 0, 2, 3 (static)


def _images(seed: int = 1, size: tuple[int, int] = (64, 80)) -> torch.Tensor:
    return torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(seed))


def test_forward_hooks_fire_on_every_module_while_training():
    model = _small().train()
    called = set()
    for name, module in model.named_modules():
        module.register_forward_hook(lambda mod, args, out, name=name: called.add(name))
    model(_images()).sum().backward()
    assert called == {name for name, _ in model.named_modules()}


def test_a_forward_hook_that_changes_fc2_output_takes_effect():
    model = _small().train()
    images = _images()
    plain = model(images)
    model.blocks[2].mlp.fc2.register_forward_hook(lambda mod, args, out: out * 0)
    hooked = model(images)
    assert not torch.allclose(plain, hooked)
    with kernels.use_reference():
        torch.testing.assert_close(hooked, model(images))


def _saved_activation_bytes(mlp: nn.Module, x: torch.Tensor) -> int:
    saved = {}

    def pack(t):
        saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        mlp(x)
    params = {p.untyped_storage().data_ptr() for p in mlp.parameters()} | {x.untyped_storage().data_ptr()}
    return sum(nbytes for ptr, nbytes in saved.items() if ptr not in params)


def test_fused_mlp_saves_memory_only_while_nothing_observes_fc2():
    mlp = _small().blocks[0].mlp.train()
    x = torch.randn(2, 5, 6, 32, requires_grad=True)
    hidden_bytes = 2 * 5 * 6 * 128 * 4  # one (B, H, W, 4C) fp32 activation
    fused = _saved_activation_bytes(mlp, x)
    with kernels.use_reference():
        reference = _saved_activation_bytes(mlp, x)
    assert reference - fused == hidden_bytes  # GELU's output is recomputed, not stored
    handle = mlp.fc2.register_forward_pre_hook(lambda mod, args: None)
    assert _saved_activation_bytes(mlp, x) == reference  # a hook on fc2: the modules' own forwards run
    handle.remove()
    mlp.act = nn.GELU(approximate="tanh")  # not the function the fused kernel computes
    assert _saved_activation_bytes(mlp, x) == reference


def test_lora_on_fc1_fc2_and_head_trains_and_changes_the_output():
    peft = pytest.importorskip("peft")
    model = _small().train()
    images, labels = _images(), torch.tensor([1, 3])
    before = model(images).detach()
    # "mlp.fc1" rather than "fc1": the dynamic conv's kernel predictor has 1x1 convs called fc1 / fc2 too.
    config = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["mlp.fc1", "mlp.fc2", "head"])
    lora = peft.get_peft_model(model, config)
    adapted = [n for n, m in lora.named_modules() if isinstance(m, peft.tuners.lora.LoraLayer)]
    assert len(adapted) == 2 * 4 + 1  # fc1 (DynamicLinear in block 1) and fc2 of every block, and the head
    torch.testing.assert_close(lora(images), before)  # LoRA B starts at zero
    optimizer = torch.optim.SGD([p for p in lora.parameters() if p.requires_grad], lr=0.5)
    for _ in range(3):
        optimizer.zero_grad()
        nn.functional.cross_entropy(lora(images), labels).backward()
        for name, param in lora.named_parameters():
            if "lora_B" in name and (".fc2." in name or ".fc1." in name):
                assert param.grad is not None and param.grad.abs().sum() > 0, name  # no adapter is bypassed
        optimizer.step()
    after = lora(images).detach()
    assert (after - before).abs().max() > 1e-3
    # Merging the adapters into the static weights is exact, for the dynamic fc1 too (y is linear in W0).
    merged = lora.merge_and_unload()
    assert isinstance(merged.blocks[1].mlp.fc1, DynamicLinear)
    torch.testing.assert_close(merged(images), after, rtol=1e-4, atol=1e-5)


def test_dynamic_quantization_of_linear_layers_runs_and_stays_close_to_float():
    model = _small().eval()
    images = _images()
    with torch.no_grad():
        reference = model(images)
        quantized = torch.ao.quantization.quantize_dynamic(model, {nn.Linear}, dtype=torch.qint8)
        assert type(quantized.blocks[0].mlp.fc2).__module__.startswith("torch.ao.nn.quantized.dynamic")
        assert isinstance(quantized.blocks[1].mlp.fc1, DynamicLinear)  # exact-type swap leaves it alone
        out = quantized(images)
    error = (out - reference).abs().max() / reference.abs().max()
    assert 0 < error < 0.05


def test_pruning_fc2_takes_effect_in_training():
    model = _small().train()
    images = _images()
    expected_model = _small().train()
    for block, expected_block in zip(model.blocks, expected_model.blocks, strict=True):
        prune.l1_unstructured(block.mlp.fc2, "weight", amount=0.5)
        with torch.no_grad():
            expected_block.mlp.fc2.weight.copy_(block.mlp.fc2.weight)  # the masked weight
    pruned = model(images)
    torch.testing.assert_close(pruned, expected_model(images))
    assert not torch.allclose(pruned, _small().train()(images))
    pruned.sum().backward()
    assert model.blocks[0].mlp.fc2.weight_orig.grad is not None


@pytest.mark.parametrize(
    "name,size,gmacs",
    [("weightformer_tiny", 224, 1.13), ("weightformer_small", 224, 4.44), ("weightformer_base", 448, 17.70)],
)
def test_fvcore_and_torch_flop_counter_give_the_paper_macs_on_the_default_path(name, size, gmacs):
    fvcore = pytest.importorskip("fvcore.nn")
    from torch.utils.flop_counter import FlopCounterMode

    assert not kernels.reference_enabled()
    model = weightformer.create_model(name).eval()
    images = torch.randn(1, 3, size, size)
    analysis = fvcore.FlopCountAnalysis(model, images).unsupported_ops_warnings(False).uncalled_modules_warnings(False)
    assert round(analysis.total() / 1e9, 2) == gmacs  # fvcore counts one MAC as one "flop"
    assert analysis.by_module()["blocks.0.mlp.fc2"] > 0  # counted per module, fc2 included
    # PyTorch's counter (2 FLOPs per MAC), with fvcore's conventions for LayerNorm and adaptive pooling.
    with FlopCounterMode(display=False, custom_mapping=_FVCORE_EXTRAS) as counter, torch.no_grad():
        model(images)
    assert round(counter.get_total_flops() / 2e9, 2) == gmacs
    assert counter.get_flop_counts()["WeightFormer.blocks.0.mlp.fc2"]


def test_plain_torch_fx_symbolic_trace_gives_a_graph_that_works_at_any_size():
    model = _small().eval()
    graph = torch.fx.symbolic_trace(model)
    assert any(node.target == "mlp.fc2" or str(node.target).endswith("mlp.fc2") for node in graph.graph.nodes)
    for size in [(64, 80), (208, 144)]:  # the second an odd, non-square token grid
        images = _images(size=size)
        with torch.no_grad():
            torch.testing.assert_close(graph(images), model(images))
