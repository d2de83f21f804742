"""The dynamic layers and the attention identity against plain float64 statements of their formulas."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from fast_path_helpers import randomise
from reference import (
    adaptive_kernel_update_ref,
    adaptive_pool_ref,
    agent_output_ref,
    bound_columns,
    bound_kernel,
    depthwise_conv_ref,
    dynamic_linear_ref,
    gelu_ref,
    normalized_output_ref,
    outer_product_update_ref,
    pool_2x2_ref,
    softmax_pool_ref,
)
from weightformer.analysis.flops import count_macs
from weightformer.layers import (
    CONV_PREDICTORS,
    LINEAR_PREDICTORS,
    DynamicDWConv2d,
    DynamicLinear,
    attention_as_dynamic_mlp,
    attention_mlp_weights,
)
from weightformer.layers.common import softmax_pool
from weightformer.layers.dynamic_linear import focused_map

ODD_GRIDS = [(7, 5), (3, 9), (6, 4), (5, 5)]


# -- dynamic linear ------------------------------------------------------------------------------------------

LINEAR_REF_FLAGS = {
    "gap": dict(statistics="global"),
    "linear": dict(act_in=False, act_out=False),
    "nonlinear": dict(act_out=False),
    "deep": dict(),
    "bilateral": dict(),
    "query_pool": dict(statistics="query"),
    "mean_max": dict(statistics="mean_max"),
}


@pytest.mark.parametrize("predictor", sorted(LINEAR_REF_FLAGS))
@pytest.mark.parametrize("grid", ODD_GRIDS)
def test_dynamic_linear_matches_float64_reference(predictor, grid):
    torch.manual_seed(0)
    c, d = 12, 20
    layer = DynamicLinear(c, d, predictor=predictor).double()
    randomise(layer)
    x = torch.randn(3, *grid, c, dtype=torch.float64)
    pred = layer.predictor
    hidden = (pred.hidden.weight, pred.hidden.bias) if pred.hidden is not None else None
    delta = outer_product_update_ref(
        x,
        pred.proj.weight,
        pred.proj.bias,
        pred.input_basis,
        pred.output_basis,
        hidden=hidden,
        queries=pred.queries,
        **LINEAR_REF_FLAGS[predictor],
    )
    expected = dynamic_linear_ref(x, layer.weight.t(), layer.bias, delta)
    torch.testing.assert_close(layer(x), expected, rtol=1e-10, atol=1e-12)


# The predictors that return an additive output term f(x) instead of a weight update (`predicts_output`).
OUTPUT_PREDICTORS = ["agent", "normalized"]


def test_every_linear_predictor_has_a_float64_reference():
    assert set(LINEAR_PREDICTORS) == set(LINEAR_REF_FLAGS) | set(OUTPUT_PREDICTORS)
    for name in LINEAR_PREDICTORS:
        assert DynamicLinear(8, 16, predictor=name).predicts_output == (name in OUTPUT_PREDICTORS)


def _output_term_ref(layer: DynamicLinear, x: torch.Tensor) -> torch.Tensor:
    """f(x) (B, H, W, D) of an output predictor, from tests/reference.py (weights passed input-major)."""
    pred = layer.predictor
    if layer.predictor_name == "agent":
        return agent_output_ref(x, pred.agent_queries, pred.query_proj.weight.t(), pred.key_proj.weight.t(),
                                pred.value_proj.weight.t(), pred.output_basis)
    return normalized_output_ref(x, pred.query_proj.weight.t(), pred.key_proj.weight.t(), pred.value_proj.weight,
                                 pred.value_proj.bias, pred.output_basis, p=pred.focusing, eps=pred.eps)


@pytest.mark.parametrize("predictor", OUTPUT_PREDICTORS)
@pytest.mark.parametrize("batch,grid", [(2, (5, 7)), (1, (3, 9)), (2, (1, 1)), (1, (6, 4))])
def test_output_predictors_match_float64_reference_forward_and_gradients(predictor, batch, grid):
    torch.manual_seed(0)
    c, d = 12, 20
    layer = DynamicLinear(c, d, predictor=predictor).double()
    randomise(layer)
    x = torch.randn(batch, *grid, c, dtype=torch.float64, requires_grad=True)
    got = layer(x)
    expected = torch.einsum("bhwc,dc->bhwd", x, layer.weight) + layer.bias + _output_term_ref(layer, x)
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)
    # The gradients of the layer (autograd through its code) against those of the reference formula.
    probe = torch.randn_like(got)
    inputs = [x, *layer.parameters()]
    grads = torch.autograd.grad((got * probe).sum(), inputs)
    grads_ref = torch.autograd.grad((expected * probe).sum(), inputs)
    for g, g_ref in zip(grads, grads_ref, strict=True):
        torch.testing.assert_close(g, g_ref, rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("predictor", OUTPUT_PREDICTORS)
def test_output_predictors_pass_gradcheck(predictor):
    torch.manual_seed(1)
    layer = DynamicLinear(8, 8, predictor=predictor).double()
    randomise(layer)
    x = torch.randn(1, 3, 5, 8, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(layer, (x,))


def test_focused_map_is_non_negative_keeps_the_norm_and_is_zero_off_the_positive_orthant():
    x = torch.tensor([[1.0, -2.0, 3.0], [-1.0, -0.5, 0.0], [1e-20, 0.0, 2e-20]], dtype=torch.float64)
    phi = focused_map(x)
    r = x.clamp_min(0)
    torch.testing.assert_close(phi.norm(dim=-1), r.norm(dim=-1))  # the length of ReLU(x), kept
    torch.testing.assert_close(phi[0], r[0].norm() * r[0] ** 3 / (r[0] ** 3).norm())
    assert (phi[1] == 0).all() and (phi >= 0).all()
    # Tiny inputs: r^3 ~ 1e-60 underflows in float32, the map (computed on r / max r) does not.
    torch.testing.assert_close(focused_map(x.float()), phi.float(), rtol=1e-5, atol=0)
    assert phi[2, 2] > phi[2, 0] > 0
    # A row with nothing positive is exactly 0 with finite gradients, in half precision too, and TorchScript
    # compiles the map (the *_normalized models script).
    half = x.detach().half().requires_grad_()
    out = focused_map(half)
    assert (out[1] == 0).all() and out.isfinite().all()
    out.sum().backward()
    assert half.grad.isfinite().all()
    torch.testing.assert_close(torch.jit.script(focused_map)(x.detach(), 3.0), phi.detach(), rtol=0, atol=0)


def test_agent_summary_sits_on_one_token_whatever_the_token_count():
    # One token scoring high for every agent query takes every agent, so every token's output term is that token's
    # value, however many other tokens there are; through an average (the release's statistics) it would fade as 1/N.
    torch.manual_seed(2)
    c = 8
    layer = DynamicLinear(c, 16, predictor="agent")
    randomise(layer)
    pred = layer.predictor
    with torch.no_grad():
        pred.agent_queries.zero_()
        pred.agent_queries[:, 0] = 4.0
    special = torch.randn(c) * 0.3
    special[0] = 5.0  # scores 20 against about N(0, 1.2) for the others: it dominates even among 1024
    special_value = pred.value_proj(special) @ pred.output_basis  # (D,)
    for side in (4, 32):
        x = torch.randn(1, side, side, c) * 0.3
        x[0, side // 2, 1] = special
        term = pred(x)  # (1, side, side, D)
        torch.testing.assert_close(term, special_value.expand_as(term), atol=1e-4, rtol=1e-3)
        mean_value = pred.value_proj(x.mean(dim=(1, 2))) @ pred.output_basis  # the average's value, diluted
        assert (mean_value - special_value).norm() > 0.1 * special_value.norm()


@pytest.mark.parametrize("width", [48, 192])
def test_agent_softmaxes_start_selective_inside_a_model_at_any_width(width):
    # Neither softmax may start uniform (the agents would all be the mean token, the layer the release's diluted
    # statistics: it never left chance on the probes) nor one-hot; the model's blanket nn.Linear initialisation
    # must not redraw the predictor's own.
    import timm

    torch.manual_seed(0)
    model = timm.create_model("weightformer_tiny", embed_dim=width, depth=2, num_classes=2, linear_predictor="agent")
    pred = model.blocks[1].mlp.fc1.predictor
    std = pred.logit_std / math.sqrt(width)
    assert abs(pred.query_proj.weight.std().item() / std - 1) < 0.1  # not the blanket 0.02
    x = F.layer_norm(torch.randn(4, 12, 12, width) + 0.5 * torch.randn(4, 1, 1, width), (width,))
    tokens = x.flatten(1, 2)
    pool = (tokens @ pred.agent_queries.t()).softmax(dim=1)  # (B, N, K)
    keys = pred.key_proj(softmax_pool(x, pred.agent_queries))
    read = (pred.query_proj(tokens) @ keys.transpose(1, 2) * pred.scale).softmax(dim=-1)  # (B, N, K)
    for weights, dim, count in ((pool, 1, 144), (read, -1, pred.agent_queries.shape[0])):
        entropy = (-(weights * weights.clamp_min(1e-12).log()).sum(dim).mean() / math.log(count)).item()
        assert 0.05 < entropy < 0.95, entropy


def test_agent_read_out_is_a_softmax_per_token_over_the_agents():
    # A token whose query matches one agent's key far better than the others' reads that agent alone; a token
    # with no query reads the plain mean of the agents' values.
    torch.manual_seed(3)
    c = 32  # d = 8 = K: the agents' keys are a basis, a query can match one of them and no other
    layer = DynamicLinear(c, 16, predictor="agent").double()
    randomise(layer)
    pred = layer.predictor
    x = torch.randn(1, 3, 5, c, dtype=torch.float64)
    x[0, 1, 2] = F.one_hot(torch.tensor(0), c).double()  # its query is W_q's row for channel 0
    x[0, 0, 0] = 0.0  # no query
    agents = softmax_pool(x, pred.agent_queries)  # (1, K, C)
    keys = pred.key_proj(agents)[0]  # (K, d)
    values = pred.value_proj(agents)[0] @ pred.output_basis  # (K, D)
    target = torch.zeros(8, dtype=torch.float64)
    target[2] = 40.0 / pred.scale  # a score of 40 for agent 2, 0 for the others
    with torch.no_grad():
        pred.query_proj.weight[:, 0] = torch.linalg.solve(keys, target)
    term = pred(x)  # (1, 3, 5, D)
    torch.testing.assert_close(term[0, 1, 2], values[2], atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(term[0, 0, 0], values.mean(dim=0), atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize("side", [5, 16])
def test_normalized_term_is_unchanged_by_background_tokens_where_the_release_update_shrinks(side):
    # Zero tokens have zero key features (the projections have no bias): they add nothing to either sum of the
    # per-token normalised term. The release's update is divided by N, so padding the image with them dilutes it.
    torch.manual_seed(4)
    c, d = 12, 20
    normalized = DynamicLinear(c, d, predictor="normalized").double()
    release = DynamicLinear(c, d, predictor="bilateral").double()
    randomise(normalized)
    randomise(release)
    with torch.no_grad():
        release.predictor.proj.bias.zero_()  # a zero token's factors are then zero too: pure dilution
    x = torch.randn(2, 3, 5, c, dtype=torch.float64)
    padded = torch.zeros(2, side, side + 2, c, dtype=torch.float64)
    padded[:, 1:4, 2:7] = x  # the same tokens among background tokens
    torch.testing.assert_close(normalized(padded)[:, 1:4, 2:7], normalized(x), rtol=1e-12, atol=1e-12)
    small, large = release.predictor(x), release.predictor(padded)  # (B, D, C)
    assert (large.norm() / small.norm()) < 0.6


@pytest.mark.parametrize("predictor", OUTPUT_PREDICTORS)
def test_output_predictors_start_close_to_the_static_layer(predictor):
    # Their projections start small (std 0.02, as the release's factors): the predicted term is a few percent of
    # x W0 on LayerNorm-ed tokens, and already depends on the whole input.
    torch.manual_seed(5)
    layer = DynamicLinear(96, 384, predictor=predictor)
    x = F.layer_norm(torch.randn(2, 7, 9, 96), (96,))
    term = layer.predictor(x)
    static = F.linear(x, layer.weight)
    assert 0 < term.norm() < 0.1 * static.norm()



def test_dynamic_linear_update_is_column_bounded_and_input_dependent():
    torch.manual_seed(1)
    layer = DynamicLinear(16, 32)
    randomise(layer)
    x = torch.randn(4, 6, 8, 16) * 5
    delta = layer.predictor(x)  # (B, D, C): row j is column j of the paper's dW
    assert delta.shape == (4, 32, 16)
    assert (torch.linalg.vector_norm(delta, dim=-1) < 1).all()
    assert not torch.allclose(delta[0], delta[1])


def test_dynamic_linear_divides_by_unpooled_token_count():
    # The update sums over the Np pooled tokens but is divided by N = H*W (the release's DynLinear, a quirk the
    # released weights depend on). Written out here step by step; dividing by Np instead gives a different (and
    # here distinguishable) result, on even grids (N = 4 Np) and odd ones (N / Np is not 4).
    torch.manual_seed(2)
    layer = DynamicLinear(8, 16).double()
    randomise(layer)
    pred = layer.predictor
    for height, width in [(4, 4), (5, 7)]:
        x = torch.randn(2, height, width, 8, dtype=torch.float64)
        pooled = pool_2x2_ref(x).reshape(2, -1, 8)  # (B, Np, C)
        uv = torch.einsum("bpc,oc->bpo", pooled, pred.proj.weight) + pred.proj.bias  # (B, Np, C/4 + D/4)
        p = F.silu(uv[..., :2]) @ pred.input_basis  # (B, Np, C)
        q = F.silu(uv[..., 2:]) @ pred.output_basis  # (B, Np, D)
        summed = torch.einsum("bpc,bpd->bcd", p, q) / math.sqrt(8)  # (B, C, D), a sum over the pooled tokens
        expected = bound_columns(summed / (height * width))
        wrong = bound_columns(summed / pooled.shape[1])
        got = pred(x).transpose(1, 2)  # (B, C, D)
        torch.testing.assert_close(got, expected)
        assert (got - wrong).abs().max() > 1e-3

def _conv_update_ref(predictor, x):
    """dK (B, C, k, k) for each conv predictor, written from its docstring formula."""
    k = predictor.kernel_size
    if isinstance(predictor, CONV_PREDICTORS["adaptive"]):
        return bound_kernel(
            adaptive_kernel_update_ref(x, predictor.fc1.weight, predictor.fc1.bias, predictor.fc2.weight, k)
        )
    if isinstance(predictor, CONV_PREDICTORS["gap"]):
        g = x.mean(dim=(1, 2))
        h = gelu_ref(g @ predictor.fc1.weight.flatten(1).t() + predictor.fc1.bias)  # (B, C)
        taps = predictor.taps.weight.reshape(-1, k * k)  # (C, k*k): E
        delta = h[:, :, None] * taps + predictor.taps.bias.reshape(-1, k * k)
        return bound_kernel(delta.reshape(x.shape[0], -1, k, k))
    if isinstance(predictor, CONV_PREDICTORS["amp_dir"]):
        direction = predictor.direction
        d = adaptive_kernel_update_ref(x, direction.fc1.weight, direction.fc1.bias, direction.fc2.weight, k)
        d = d / d.pow(2).sum(dim=(-2, -1), keepdim=True).sqrt()
        g = x.mean(dim=(1, 2))
        a = gelu_ref(g @ predictor.amp_fc1.weight.flatten(1).t() + predictor.amp_fc1.bias)
        a = torch.sigmoid(a @ predictor.amp_fc2.weight.flatten(1).t() + predictor.amp_fc2.bias)
        return a[:, :, None, None] * d
    if isinstance(predictor, CONV_PREDICTORS["conv"]):
        pooled = adaptive_pool_ref(x, k).permute(0, 2, 3, 1)  # (B, k, k, C)
        spatial = depthwise_conv_ref(pooled, predictor.spatial.weight[:, 0], predictor.spatial.bias)
        h = torch.einsum("bijc,oc->boij", spatial, predictor.fc1.weight.flatten(1)) + predictor.fc1.bias[:, None, None]
        delta = torch.einsum("bcij,oc->boij", gelu_ref(h), predictor.fc2.weight.flatten(1))
        return bound_kernel(delta)
    if isinstance(predictor, CONV_PREDICTORS["query_pool"]):
        summaries = softmax_pool_ref(x, predictor.queries).reshape(x.shape[0], -1)  # (B, K*C)
        context = summaries @ predictor.context.weight.t() + predictor.context.bias  # (B, C)
        pooled = adaptive_pool_ref(x, k)  # (B, C, k, k)
        h = torch.einsum("bcij,oc->boij", pooled, predictor.fc1.weight.flatten(1)) + predictor.fc1.bias[:, None, None]
        h = gelu_ref(h + context[:, :, None, None])
        return bound_kernel(torch.einsum("bcij,oc->boij", h, predictor.fc2.weight.flatten(1)))
    raise AssertionError(f"no reference for {type(predictor).__name__}")


@pytest.mark.parametrize("predictor", sorted(CONV_PREDICTORS))
@pytest.mark.parametrize("grid", [(7, 5), (3, 9), (6, 4), (11, 13)])
def test_dynamic_dwconv_matches_float64_reference(predictor, grid):
    torch.manual_seed(0)
    c = 10
    layer = DynamicDWConv2d(c, predictor=predictor).double()
    randomise(layer)
    x = torch.randn(3, *grid, c, dtype=torch.float64)
    kernel = layer.static_weight[:, 0] + _conv_update_ref(layer.predictor, x)
    expected = depthwise_conv_ref(x, kernel, layer.bias)
    torch.testing.assert_close(layer(x), expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("predictor", sorted(CONV_PREDICTORS))
def test_dynamic_dwconv_update_is_bounded(predictor):
    torch.manual_seed(3)
    layer = DynamicDWConv2d(8, predictor=predictor)
    randomise(layer)
    delta = layer.predictor(torch.randn(2, 9, 7, 8) * 10)
    assert delta.shape == (2, 8, 3, 3)
    assert (torch.linalg.vector_norm(delta, dim=(-2, -1)) < 1 + 1e-6).all()


# -- properties every predictor must have --------------------------------------------------------------------

ALL_LAYERS = [("linear", name) for name in sorted(LINEAR_PREDICTORS)] + [
    ("conv", name) for name in sorted(CONV_PREDICTORS)
]


def _make(kind: str, predictor: str) -> torch.nn.Module:
    return DynamicLinear(16, 24, predictor=predictor) if kind == "linear" else DynamicDWConv2d(16, predictor=predictor)


@pytest.mark.parametrize("kind,predictor", ALL_LAYERS)
def test_gradients_reach_every_parameter(kind, predictor):
    torch.manual_seed(4)
    layer = _make(kind, predictor)
    randomise(layer)
    x = torch.randn(2, 7, 5, 16, requires_grad=True)
    layer(x).pow(2).sum().backward()
    for name, p in layer.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert x.grad.abs().sum() > 0


@pytest.mark.parametrize("kind,predictor", ALL_LAYERS)
def test_cost_is_linear_in_token_count(kind, predictor):
    layer = _make(kind, predictor)

    class Wrap(torch.nn.Module):  # count_macs feeds (B, *input_size)
        def __init__(self):
            super().__init__()
            self.layer = layer

        def forward(self, x):
            return self.layer(x)

    # cost(N) = a*N + b: the same marginal cost per token from 24x24 to 48x48 as from 48x48 to 96x96
    # (b is the predictors' fixed cost on their length-independent statistics).
    costs = {s: count_macs(Wrap(), (s, s, 16)).total for s in (24, 48, 96)}
    per_token_low = (costs[48] - costs[24]) / (48**2 - 24**2)
    per_token_high = (costs[96] - costs[48]) / (96**2 - 48**2)
    assert per_token_high == pytest.approx(per_token_low, rel=1e-3)
    assert costs[96] / costs[48] <= 4.0 + 1e-9


@pytest.mark.parametrize("kind,predictor", ALL_LAYERS)
def test_every_output_depends_on_every_input(kind, predictor):
    # The global receptive field of one dynamic layer: the far corner moves the opposite corner.
    torch.manual_seed(5)
    layer = _make(kind, predictor).double()
    randomise(layer)
    x = torch.randn(1, 9, 11, 16, dtype=torch.float64, requires_grad=True)
    layer(x)[0, 0, 0].sum().backward()
    assert x.grad[0, -1, -1].abs().sum() > 0


# -- errors --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["linear", "conv"])
def test_layer_errors_are_clear(kind):
    layer = _make(kind, "bilateral" if kind == "linear" else "adaptive")
    with pytest.raises(ValueError, match="got a 3-D tensor"):
        layer(torch.randn(2, 49, 16))
    with pytest.raises(ValueError, match="built for 16 channels but the input has 8"):
        layer(torch.randn(2, 7, 7, 8))
    with pytest.raises(ValueError, match="at least"):
        layer(torch.randn(2, 1, 7, 16))


def test_unknown_predictor_names_the_choices():
    with pytest.raises(ValueError, match="bilateral"):
        DynamicLinear(8, 8, predictor="nope")
    with pytest.raises(ValueError, match="adaptive"):
        DynamicDWConv2d(8, predictor="nope")


# -- attention as a dynamic MLP ------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 1e-5)])
def test_attention_as_dynamic_mlp_equals_sdpa(dtype, tol):
    torch.manual_seed(6)
    q = torch.randn(2, 3, 7, 5, dtype=dtype)
    k = torch.randn(2, 3, 11, 5, dtype=dtype)
    v = torch.randn(2, 3, 11, 9, dtype=dtype)
    torch.testing.assert_close(
        attention_as_dynamic_mlp(q, k, v), F.scaled_dot_product_attention(q, k, v), rtol=tol, atol=tol
    )
    torch.testing.assert_close(
        attention_as_dynamic_mlp(q, k, v, scale=0.37),
        F.scaled_dot_product_attention(q, k, v, scale=0.37),
        rtol=tol,
        atol=tol,
    )


def test_attention_mlp_weights_are_scaled_keys_and_values():
    k = torch.randn(13, 6)
    v = torch.randn(13, 4)
    weights = attention_mlp_weights(k, v)
    assert weights.first.shape == (6, 13)  # d x N: one hidden unit per token, the quadratic cost
    torch.testing.assert_close(weights.first, k.t() / math.sqrt(6))
    assert weights.second is v
