"""Export to ONNX / TorchScript / torch.export with dynamic batch, height and width; the CLI's errors."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from reference import adaptive_pool_ref, depthwise_conv_ref, release_state_dict
from weightformer import WeightFormer, create_model
from weightformer.cli.main import main
from weightformer.layers.dynamic_conv import _adaptive_pool_by_regions, shifted_depthwise_conv
from weightformer.models.export import export_model

SIZES = [(2, 64, 96), (3, 80, 112), (1, 208, 144)]  # (batch, H, W): the last is an odd, non-square token grid


def _small_model() -> WeightFormer:
    torch.manual_seed(0)
    return WeightFormer(embed_dim=32, depth=4, num_classes=7).eval()


def _images(batch: int, height: int, width: int) -> torch.Tensor:
    return torch.randn(batch, 3, height, width, generator=torch.Generator().manual_seed(height * width + batch))


@pytest.mark.parametrize("grid", [(5, 7), (6, 4), (3, 3)])
def test_export_forms_of_the_dynamic_conv_match_the_float64_reference(grid):
    gen = torch.Generator().manual_seed(grid[0] * 10 + grid[1])
    x = torch.randn(3, *grid, 6, generator=gen, dtype=torch.float64)
    kernel = torch.randn(3, 6, 3, 3, generator=gen, dtype=torch.float64)
    bias = torch.randn(6, generator=gen, dtype=torch.float64)
    torch.testing.assert_close(shifted_depthwise_conv(x, kernel, bias), depthwise_conv_ref(x, kernel, bias))
    torch.testing.assert_close(_adaptive_pool_by_regions(x, 3), adaptive_pool_ref(x, 3))


def test_onnx_runtime_equals_pytorch_at_sizes_it_was_not_exported_at(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    model = _small_model()
    path = export_model(model, tmp_path / "small.onnx", "onnx", example_size=(64, 96))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["images"]
    for batch, height, width in SIZES:
        images = _images(batch, height, width)
        (logits,) = session.run(None, {"images": images.numpy()})
        with torch.no_grad():
            expected = model(images).numpy()
        assert logits.shape == (batch, 7)
        assert np.abs(logits - expected).max() <= 1e-4 * np.abs(expected).max()


def test_exported_program_runs_at_new_sizes(tmp_path):
    model = _small_model()
    path = export_model(model, tmp_path / "small.pt2", "exported-program", example_size=(64, 96))
    program = torch.export.load(str(path)).module()
    for batch, height, width in SIZES[1:]:
        images = _images(batch, height, width)
        with torch.no_grad():
            torch.testing.assert_close(program(images), model(images), rtol=1e-5, atol=1e-5)
    with pytest.raises(Exception, match="16"):  # a height that is not a multiple of the patch size
        program(_images(1, 72, 96))


def test_torchscript_export_runs_at_new_sizes(tmp_path):
    model = _small_model()
    path = export_model(model, tmp_path / "small.pt", "torchscript")
    scripted = torch.jit.load(str(path))
    for batch, height, width in SIZES:
        images = _images(batch, height, width)
        with torch.no_grad():
            torch.testing.assert_close(scripted(images), model(images), rtol=1e-5, atol=1e-5)


def test_cli_exports_a_release_checkpoint_with_its_class_count(tmp_path, capsys):
    checkpoint = tmp_path / "model.safetensors"
    save_file(release_state_dict(width=192, depth=17, num_classes=10, seed=2), str(checkpoint))
    out = tmp_path / "tiny.pt"
    argv = ["export", "weightformer_tiny", "--checkpoint", str(checkpoint), "--format", "torchscript", "-o", str(out)]
    assert main(argv) == 0
    assert str(out) in capsys.readouterr().out
    model = create_model("weightformer_tiny", num_classes=10, checkpoint_path=checkpoint).eval()
    images = _images(2, 96, 128)
    with torch.no_grad():  # the eager fast path against TorchScript's reference path: fp32 rounding over 17 blocks
        torch.testing.assert_close(torch.jit.load(str(out))(images), model(images), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    "argv,message",
    [
        (["export", "weightformer_huge"], "Unknown model 'weightformer_huge'"),
        (["export", "weightformer_tiny", "--checkpoint", "missing.pth"], "No checkpoint file at missing.pth"),
        (["export", "weightformer_tiny", "--img-size", "200", "232"], "multiples of the patch size 16"),
        (["export", "weightformer_tiny", "--format", "tflite"], "unknown --format 'tflite'"),
    ],
)
def test_cli_export_errors_are_one_line(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("weightformer export: error: ") and message in err
    assert len(err.splitlines()) == 1
    assert not list(tmp_path.iterdir())  # nothing written


@pytest.mark.slow
def test_cli_onnx_export_of_tiny(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    out = tmp_path / "tiny.onnx"
    assert main(["export", "weightformer_tiny", "-o", str(out)]) == 0
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert session.run(None, {"images": _images(2, 224, 320).numpy()})[0].shape == (2, 1000)
