"""Under torch.compile on CPU the convolutions run as weightformer::conv2d (`kernels.conv2d`): the same function,
and no aten.convolution for inductor's channels-last heuristic to transpose the (B, H, W, C) tokens around."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch._dynamo.backends.common import aot_autograd
from torch._functorch.aot_autograd import make_boxed_func

import weightformer
from weightformer import WeightFormerDiT, kernels
from weightformer.kernels import conv as conv_module

# (x shape, weight shape, stride, padding, groups): the block's depthwise 3x3, the per-sample form (one group per
# sample and channel), a predictor's 1x1 with and without bias, a patch embedding, a dilated grouped conv
CASES = [
    ((2, 5, 7, 9), (5, 1, 3, 3), 1, 1, 5, True),
    ((1, 6, 5, 7), (6, 1, 3, 3), 1, 1, 6, False),
    ((3, 4, 3, 3), (4, 4, 1, 1), 1, 0, 1, True),
    ((3, 4, 3, 3), (4, 4, 1, 1), 1, 0, 1, False),
    ((2, 3, 12, 8), (7, 3, 4, 4), 4, 0, 1, True),
    ((2, 6, 9, 7), (4, 3, 3, 3), 2, 2, 2, True),
]


def _graph_recorder():
    """A torch.compile backend that runs AOTAutograd's graphs as they are and keeps the forward ones."""
    graphs = []

    def keep(gm, example_inputs):
        graphs.append(gm)
        return make_boxed_func(gm.forward)

    return aot_autograd(fw_compiler=keep, bw_compiler=lambda gm, example_inputs: make_boxed_func(gm.forward)), graphs


def _count(graphs, target) -> int:
    return sum(node.target is target for gm in graphs for node in gm.graph.nodes)


@pytest.mark.parametrize("x_shape,w_shape,stride,padding,groups,bias", CASES)
def test_compiled_conv2d_gives_the_float64_convolution_and_its_gradients(x_shape, w_shape, stride, padding, groups,
                                                                         bias):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(x_shape, generator=gen, dtype=torch.float64).contiguous(memory_format=torch.channels_last)
    weight = torch.randn(w_shape, generator=gen, dtype=torch.float64)
    b = torch.randn(w_shape[0], generator=gen, dtype=torch.float64) if bias else None
    leaves = [t.requires_grad_() for t in (x, weight, b) if t is not None]
    expected = F.conv2d(x, weight, b, stride, padding, 1, groups)
    expected_grads = torch.autograd.grad(expected.square().sum(), leaves)
    backend, graphs = _graph_recorder()
    torch._dynamo.reset()
    fn = torch.compile(lambda *a: kernels.conv2d(*a, stride=stride, padding=padding, groups=groups), backend=backend,
                       fullgraph=True)
    out = fn(x, weight, b)
    grads = torch.autograd.grad(out.square().sum(), leaves)
    assert _count(graphs, torch.ops.weightformer.conv2d.default) == 1
    assert _count(graphs, torch.ops.aten.convolution.default) == 0
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)
    for g, e in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(g, e, rtol=1e-12, atol=1e-12)


def test_the_custom_op_passes_torch_library_opcheck():
    gen = torch.Generator().manual_seed(1)
    for x_shape, w_shape, stride, padding, groups, bias in CASES:
        x = torch.randn(x_shape, generator=gen).contiguous(memory_format=torch.channels_last).requires_grad_()
        weight = torch.randn(w_shape, generator=gen).requires_grad_()
        b = torch.randn(w_shape[0], generator=gen).requires_grad_() if bias else None
        pair = [stride, stride], [padding, padding], [1, 1]
        torch.library.opcheck(torch.ops.weightformer.conv2d.default, (x, weight, b, *pair, groups))


def test_conv2d_is_f_conv2d_outside_compilation_and_for_string_padding(monkeypatch):
    calls = []
    monkeypatch.setattr(conv_module, "_conv2d_op", lambda *a: calls.append(a))
    x, weight = torch.randn(1, 2, 5, 5), torch.randn(2, 1, 3, 3)
    torch.testing.assert_close(kernels.conv2d(x, weight, padding=1, groups=2), F.conv2d(x, weight, padding=1, groups=2))
    torch._dynamo.reset()
    same = torch.compile(lambda a, w: kernels.conv2d(a, w, padding="same", groups=2), backend="aot_eager")
    torch.testing.assert_close(same(x, weight), F.conv2d(x, weight, padding="same", groups=2))
    assert not calls
    with torch.autocast("cpu", dtype=torch.bfloat16):  # autocast casts F.conv2d's operands; the op would not
        assert not conv_module.compiling_for_cpu(x)


def _tiny_classifier():
    return weightformer.create_model("weightformer_tiny", num_classes=9, embed_dim=16, depth=3, patch_size=4,
                                     img_size=20, drop_path_rate=0.0, dynamic_blocks="all")


def _tiny_dit():
    return WeightFormerDiT(input_size=8, patch_size=2, hidden_size=32, depth=3, num_classes=5, class_dropout_prob=0.0)


@pytest.mark.parametrize("make", [_tiny_classifier, _tiny_dit])
def test_compiled_models_leave_only_the_patch_embedding_to_aten_convolution(make):
    torch.manual_seed(0)
    model = make().train()
    inputs = ((torch.randn(2, 3, 20, 28),) if make is _tiny_classifier
              else (torch.randn(2, 4, 8, 10), torch.tensor([3, 900]), torch.tensor([1, 4])))
    backend, graphs = _graph_recorder()
    torch._dynamo.reset()
    torch.compile(model, backend=backend, fullgraph=True)(*inputs).sum().backward()
    # inductor's layout heuristic follows the convolutions; one at the very start reaches no token map
    assert _count(graphs, torch.ops.aten.convolution.default) == 1
    blocks = len(model.blocks)  # a depthwise conv and a dynamic conv's two 1x1 predictor convs per dynamic block
    dynamic = sum(isinstance(b.token_mixer, weightformer.layers.DynamicDWConv2d) for b in model.blocks)
    assert _count(graphs, torch.ops.weightformer.conv2d.default) == blocks + 2 * dynamic


@pytest.mark.slow
def test_inductor_keeps_the_saved_token_maps_in_their_own_layout(monkeypatch):
    # The activations a compiled training step saves for its backward pass: with aten.convolution in every block,
    # inductor stored the (B, H, W, C) maps with H innermost (channels-last strides of a (B, C, H, W) tensor).
    torch.manual_seed(0)
    model = _tiny_classifier().train()
    images = torch.randn(2, 3, 20, 28)  # a 5 x 7 grid of 16 channels
    saved = []

    def pack(t):
        saved.append(t)
        return t

    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = compiled(images)
    out.sum().backward()
    maps = [t for t in saved if t.ndim == 4 and t.shape[1:3] == (5, 7) and t.shape[3] >= 16]  # tokens, hidden
    assert len(maps) >= 6
    assert all(t.stride(3) == 1 and t.stride(1) > t.stride(2) for t in maps), [(t.shape, t.stride()) for t in maps]
