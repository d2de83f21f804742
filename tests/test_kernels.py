"""The fast path against the reference path: same function, forward and backward, fp32 and bf16, odd shapes.

The Triton kernels run natively where CUDA is available and otherwise under Triton's interpreter on CPU tensors:
`test_triton_kernels_under_interpreter` re-runs the `triton` tests of this file in a subprocess with
TRITON_INTERPRET=1 (it has to be set before triton is imported), so CI covers the kernels without a GPU.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch

from fast_path_helpers import randomise
from reference import depthwise_conv_ref
from weightformer import kernels
from weightformer.kernels import depthwise_conv_torch
from weightformer.layers import CONV_PREDICTORS, LINEAR_PREDICTORS, DynamicDWConv2d, DynamicLinear

INTERPRETING = os.environ.get("TRITON_INTERPRET") == "1"
TRITON_DEVICE = "cuda" if torch.cuda.is_available() else ("cpu" if INTERPRETING else None)

# (B, H, W, C): odd sizes, a grid thinner than the kernel, more pixels and channels than one Triton block.
CONV_SHAPES = [(3, 7, 5, 67), (1, 13, 11, 9), (2, 1, 9, 5), (5, 9, 15, 130)]
DTYPES = [(torch.float32, 1e-5), (torch.bfloat16, 3e-2)]


def _conv_inputs(shape, per_sample: bool, dtype, device="cpu", seed=0):
    gen = torch.Generator().manual_seed(seed)
    batch, _, _, channels = shape
    x = torch.randn(shape, generator=gen).to(device=device, dtype=dtype)
    kernel_shape = (batch, channels, 3, 3) if per_sample else (channels, 3, 3)
    kernel = (torch.randn(kernel_shape, generator=gen) * 0.5).to(device)  # kernels stay fp32, as in the layers
    bias = torch.randn(channels, generator=gen).to(device)
    return [t.requires_grad_() for t in (x, kernel, bias)]


def _conv_reference64(x, kernel, bias, residual):
    """float64 reference output and gradients (w.r.t. x, kernel, bias) for the upstream gradient `grad`."""
    x64, k64, b64 = (t.detach().double().cpu().requires_grad_() for t in (x, kernel, bias))
    y = depthwise_conv_ref(x64, k64, b64)
    return (x64 + y if residual else y), (x64, k64, b64)


def _check_conv(fast, shape, per_sample, residual, dtype, tol, device="cpu"):
    x, kernel, bias = _conv_inputs(shape, per_sample, dtype, device)
    y = fast(x, kernel, bias, residual=residual)
    assert y.shape == x.shape and y.dtype == dtype
    y_ref, inputs64 = _conv_reference64(x, kernel, bias, residual)
    torch.testing.assert_close(y.double().cpu(), y_ref, rtol=tol, atol=tol)
    grad = torch.randn(shape, generator=torch.Generator().manual_seed(1))
    grads = torch.autograd.grad(y, (x, kernel, bias), grad.to(device=device, dtype=dtype))
    grads_ref = torch.autograd.grad(y_ref, inputs64, grad.double())
    for name, g, g_ref in zip(("x", "kernel", "bias"), grads, grads_ref, strict=True):
        scale = g_ref.abs().max().item() + 1  # kernel and bias gradients are sums over many pixels
        torch.testing.assert_close(
            g.double().cpu(), g_ref, rtol=tol, atol=tol * scale, msg=lambda m, n=name: f"{n}: {m}"
        )


# -- PyTorch fast path (CPU) ---------------------------------------------------------------------------------


@pytest.mark.parametrize("residual", [False, True])
@pytest.mark.parametrize("per_sample", [True, False])
@pytest.mark.parametrize(
    "shape,dtype,tol",
    # bf16 convolutions are slow on CPU: the large shape in fp32 only.
    [(shape, *dt) for shape in CONV_SHAPES[:3] for dt in DTYPES] + [(CONV_SHAPES[3], *DTYPES[0])],
)
def test_torch_depthwise_conv_matches_reference(shape, per_sample, residual, dtype, tol):
    _check_conv(depthwise_conv_torch, shape, per_sample, residual, dtype, tol)


@pytest.mark.parametrize("predictor", sorted(CONV_PREDICTORS))
@pytest.mark.parametrize("residual", [False, True])
def test_dynamic_dwconv_fast_equals_reference(predictor, residual):
    torch.manual_seed(0)
    layer = DynamicDWConv2d(13, predictor=predictor)
    randomise(layer)
    x = torch.randn(3, 7, 9, 13, requires_grad=True)
    y_fast = layer(x, residual=residual)
    g_fast = torch.autograd.grad(y_fast.square().sum(), [x, *layer.parameters()])
    with kernels.use_reference():
        y_ref = layer(x, residual=residual)
        g_ref = torch.autograd.grad(y_ref.square().sum(), [x, *layer.parameters()])
    torch.testing.assert_close(y_fast, y_ref, rtol=1e-5, atol=1e-5)
    for g, r in zip(g_fast, g_ref, strict=True):
        torch.testing.assert_close(g, r, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("dtype,tol", DTYPES)
@pytest.mark.parametrize("predictor", sorted(LINEAR_PREDICTORS))
@pytest.mark.parametrize("grid", [(7, 5), (6, 4), (3, 9)])
def test_dynamic_linear_fast_equals_reference(grid, predictor, dtype, tol):
    torch.manual_seed(0)
    layer = DynamicLinear(12, 20, predictor=predictor).to(dtype)
    randomise(layer)
    x = torch.randn(3, *grid, 12, dtype=dtype, requires_grad=True)
    params = [x, *layer.parameters()]
    y_fast = layer(x)
    g_fast = torch.autograd.grad(y_fast.float().square().sum(), params)
    with kernels.use_reference():
        y_ref = layer(x)
        g_ref = torch.autograd.grad(y_ref.float().square().sum(), params)
    torch.testing.assert_close(y_fast, y_ref, rtol=tol, atol=tol)
    for g, r in zip(g_fast, g_ref, strict=True):
        scale = r.abs().max().item() + 1
        torch.testing.assert_close(g, r, rtol=tol, atol=tol * scale)


def _tiny_model(**kwargs) -> torch.nn.Module:
    model = timm.create_model("weightformer_tiny", embed_dim=48, depth=5, num_classes=11, **kwargs)
    randomise(model, seed=3)
    return model


def test_whole_model_fast_equals_reference_logits_and_gradients():
    model = _tiny_model()
    images = torch.randn(3, 3, 112, 80, generator=torch.Generator().manual_seed(2))
    logits = model(images)
    grads = torch.autograd.grad(logits.square().sum(), list(model.parameters()))
    with kernels.use_reference():
        logits_ref = model(images)
        grads_ref = torch.autograd.grad(logits_ref.square().sum(), list(model.parameters()))
    torch.testing.assert_close(logits, logits_ref, rtol=1e-4, atol=1e-4)
    for (name, _), g, r in zip(model.named_parameters(), grads, grads_ref, strict=True):
        scale = r.abs().max().item() + 1
        torch.testing.assert_close(g, r, rtol=1e-3, atol=1e-4 * scale, msg=lambda m, n=name: f"{n}: {m}")


def test_whole_model_fast_equals_reference_in_bf16_autocast():
    model = _tiny_model().eval()
    images = torch.randn(2, 3, 48, 64, generator=torch.Generator().manual_seed(4))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(images).float()
        with kernels.use_reference():
            logits_ref = model(images).float()
    torch.testing.assert_close(logits, logits_ref, rtol=0.1, atol=0.1 * logits_ref.abs().max().item())


def test_use_reference_switches_and_restores():
    assert not kernels.reference_enabled()
    with kernels.use_reference():
        assert kernels.reference_enabled()
        with kernels.use_reference(False):
            assert not kernels.reference_enabled()
        assert kernels.reference_enabled()
    assert not kernels.reference_enabled()


@pytest.mark.parametrize("value,expected", [(None, False), ("", False), ("0", False), ("1", True), ("yes", True)])
def test_reference_env_var_selects_reference_path(value, expected):
    assert kernels._reference_from_env(value) is expected


# -- Triton kernels (CUDA, or CPU under TRITON_INTERPRET=1) -------------------------------------------------

needs_triton = pytest.mark.skipif(
    TRITON_DEVICE is None or not kernels.triton_available(),
    reason="Triton kernels need CUDA or TRITON_INTERPRET=1 (see test_triton_kernels_under_interpreter)",
)


def _triton_cases():
    """Every combination on CUDA; under the (slow) interpreter a subset that still covers each shape, each
    kernel kind, residual on and off, and both dtypes."""
    cases = [
        (shape, per_sample, residual, dtype, tol)
        for shape in CONV_SHAPES
        for per_sample in (True, False)
        for residual in (False, True)
        for dtype, tol in DTYPES
    ]
    if torch.cuda.is_available():
        return cases
    return [case for i, case in enumerate(cases) if i % 5 == 0]


@needs_triton
@pytest.mark.parametrize("shape,per_sample,residual,dtype,tol", _triton_cases())
def test_triton_dwconv_matches_reference(shape, per_sample, residual, dtype, tol):
    from weightformer.kernels.triton_dwconv import dwconv3x3

    _check_conv(dwconv3x3, shape, per_sample, residual, dtype, tol, device=TRITON_DEVICE)


@needs_triton
def test_triton_dwconv_without_bias():
    from weightformer.kernels.triton_dwconv import dwconv3x3

    x, kernel, _ = _conv_inputs((2, 5, 7, 11), True, torch.float32, TRITON_DEVICE)
    y = dwconv3x3(x, kernel, None, residual=False)
    expected = depthwise_conv_ref(x.detach().double().cpu(), kernel.detach().double().cpu(), torch.zeros(11).double())
    torch.testing.assert_close(y.double().cpu(), expected, rtol=1e-5, atol=1e-5)


@needs_triton
@pytest.mark.skipif(not torch.cuda.is_available(), reason="whole-model Triton dispatch needs CUDA tensors")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_triton_whole_model_fast_equals_reference_on_cuda(dtype):
    model = _tiny_model().cuda()
    images = torch.randn(3, 3, 112, 80, device="cuda")
    with torch.autocast("cuda", dtype=dtype, enabled=dtype != torch.float32):
        logits = model(images).float()
        grads = torch.autograd.grad(logits.square().sum(), list(model.parameters()))
        with kernels.use_reference():
            logits_ref = model(images).float()
            grads_ref = torch.autograd.grad(logits_ref.square().sum(), list(model.parameters()))
    tol = 1e-3 if dtype == torch.float32 else 0.1
    torch.testing.assert_close(logits, logits_ref, rtol=tol, atol=tol * logits_ref.abs().max().item())
    for g, r in zip(grads, grads_ref, strict=True):
        torch.testing.assert_close(g.float(), r.float(), rtol=tol, atol=tol * (r.abs().max().item() + 1))


@pytest.mark.skipif(
    INTERPRETING or torch.cuda.is_available(), reason="the Triton tests already run directly in this process"
)
def test_triton_kernels_under_interpreter():
    pytest.importorskip("triton")
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-k", "triton and not interpreter", __file__],
        cwd=Path(__file__).parent.parent,
        env=env,
        capture_output=True,
        text=True,
    )
    summary = result.stdout.strip().splitlines()[-1] if result.stdout.strip() else ""
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    # The kernel tests must have run, not been skipped (only the CUDA-only whole-model test may skip).
    assert " passed" in summary and "failed" not in summary, summary
    assert "skipped" not in summary or summary.count("skipped") == 1 and "2 skipped" in summary, summary
