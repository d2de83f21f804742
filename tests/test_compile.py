"""`compile: true` trains through torch.compile: no graph breaks in the model, the same losses as eager."""

from __future__ import annotations

import json
import warnings

import pytest
import torch

import weightformer
from fast_path_helpers import assert_matches_reference_path, randomise
from train_helpers import tiny_config, tiny_dataset
from weightformer.tasks.classification import train


@pytest.mark.parametrize("dynamic_blocks,linear_predictor",
                         [("sparse", "bilateral"), ("all", "bilateral"), ("all", "agent"), ("all", "normalized")])
def test_the_model_compiles_to_one_graph_in_training_mode(dynamic_blocks, linear_predictor):
    torch.manual_seed(0)
    model = weightformer.create_model("weightformer_tiny", num_classes=9, embed_dim=16, depth=3, patch_size=4,
                                      img_size=16, drop_path_rate=0.1, dynamic_blocks=dynamic_blocks,
                                      linear_predictor=linear_predictor).train()
    torch._dynamo.reset()
    explanation = torch._dynamo.explain(model)(torch.randn(4, 3, 16, 20))
    assert explanation.graph_break_count == 0, explanation.break_reasons
    assert explanation.graph_count == 1


@pytest.mark.parametrize("linear_predictor", ["agent", "normalized"])
def test_compiled_output_predictors_give_the_eager_outputs_and_gradients(linear_predictor):
    # AOTAutograd (forward and backward traced as inductor would) at an odd token grid, batch 1.
    torch.manual_seed(0)
    model = weightformer.create_model("weightformer_tiny", num_classes=9, embed_dim=16, depth=2, patch_size=4,
                                      img_size=20, dynamic_blocks="all", linear_predictor=linear_predictor)
    images = torch.randn(1, 3, 20, 28)  # a 5 x 7 token grid
    eager = model(images)
    eager_grads = torch.autograd.grad(eager.square().sum(), list(model.parameters()))
    torch._dynamo.reset()
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)(images)
    compiled_grads = torch.autograd.grad(compiled.square().sum(), list(model.parameters()))
    torch.testing.assert_close(compiled, eager, rtol=1e-5, atol=1e-6)
    for g, g_eager in zip(compiled_grads, eager_grads, strict=True):
        torch.testing.assert_close(g, g_eager, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("mode", ["train", "inference"])
def test_compiled_cpu_linear_layers_run_on_the_onednn_custom_ops_and_give_the_reference(mode, monkeypatch):
    from weightformer import kernels
    from weightformer.kernels import mlp

    calls = []  # the custom ops' kernels run at run time and call these
    gemm, weight_grad = mlp._onednn_gemm, mlp._onednn_weight_grad
    monkeypatch.setattr(mlp, "_onednn_gemm", lambda *a: calls.append("gemm") or gemm(*a))
    monkeypatch.setattr(mlp, "_onednn_weight_grad", lambda *a: calls.append("weight grad") or weight_grad(*a))
    torch.manual_seed(0)
    model = weightformer.create_model("weightformer_tiny", num_classes=9, embed_dim=16, depth=3, patch_size=4,
                                      img_size=20, drop_path_rate=0.0).train(mode == "train")
    params = [p for p in model.parameters() if p.requires_grad]
    # fc1 and fc2 of each static block; fc2, W0, the predictor's projection and the rank-C/4 products x W1^T and
    # (u^T v) W2 of the dynamic one (its update through the rank-C/4 rows: `kernels.dynamic_linear_plan`)
    assert kernels.dynamic_linear_plan(torch.empty(2, 5, 7, 16), 12, 4, 16, 64) == "rows"
    products = 2 * (3 - len(model.dynamic_indices)) + 5 * len(model.dynamic_indices)
    images = torch.randn(2, 3, 20, 28)
    torch._dynamo.reset()
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    with kernels.use_reference():
        reference = model(images)
    if mode == "inference":
        with torch.inference_mode():
            out = compiled(images)
        torch.testing.assert_close(out, reference, rtol=1e-4, atol=1e-5)
        assert calls.count("gemm") == products
        return
    out = compiled(images)
    grads = torch.autograd.grad(out.square().sum(), params)
    reference_grads = torch.autograd.grad(reference.square().sum(), params)
    torch.testing.assert_close(out, reference, rtol=1e-4, atol=1e-5)
    for g, r in zip(grads, reference_grads, strict=True):
        torch.testing.assert_close(g, r, rtol=1e-4, atol=1e-4 * (r.abs().max().item() + 1))
    assert calls.count("gemm") == 2 * products  # a forward and an input-gradient GEMM each
    assert calls.count("weight grad") == products


@pytest.mark.parametrize("mixer", ["dwconv", "attention"])
def test_compiled_dit_training_runs_on_the_onednn_custom_ops_and_gives_the_reference(mixer, monkeypatch):
    from weightformer import WeightFormerDiT
    from weightformer.kernels import mlp

    calls = []
    weight_grad = mlp._onednn_weight_grad
    monkeypatch.setattr(mlp, "_onednn_weight_grad", lambda *a: calls.append(a) or weight_grad(*a))
    torch.manual_seed(0)
    model = WeightFormerDiT(input_size=6, patch_size=2, hidden_size=32, depth=4, num_classes=5, mixer=mixer,
                            num_heads=2, class_dropout_prob=0.0)
    randomise(model)  # adaLN-Zero starts at zero: random weights so that every path carries a gradient
    x, t, y = torch.randn(3, 4, 10, 6), torch.tensor([3, 400, 998]), torch.tensor([1, 0, 4])
    params = [p for p in model.parameters() if p.requires_grad]
    torch._dynamo.reset()
    torch._dynamo.utils.warn_once_cache.clear()  # dynamo warns once per process and message
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = torch.compile(model, backend="aot_eager", fullgraph=True)(x, t, y)
    # the position embedding's cache is not traced through (dynamo would warn about the lru_cache wrapper)
    assert not [w for w in caught if "lru_cache" in str(w.message)]
    grads = torch.autograd.grad(out.square().sum(), params)
    assert calls  # the weight gradients of the compiled graph's linear layers came from oneDNN
    assert_matches_reference_path(model, (x, t, y), out, grads, params)


def _losses(run_dir):
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in records if r["kind"] == "train"]


def _compare_compiled_with_eager(tmp_path, backend: str) -> None:
    data = tiny_dataset(tmp_path / "data")
    settings = dict(batch_size=9, epochs=1, drop_path=0.0)
    eager = train(tiny_config(data, tmp_path / "eager", **settings))
    torch._dynamo.reset()
    compiled = train(tiny_config(data, tmp_path / "compiled", compile=True, compile_backend=backend, **settings))
    assert len(_losses(compiled["run_dir"])) == 4
    assert _losses(compiled["run_dir"]) == pytest.approx(_losses(eager["run_dir"]), rel=1e-4, abs=1e-5)
    for key, value in eager["model"].state_dict().items():
        torch.testing.assert_close(compiled["model"].state_dict()[key], value, rtol=1e-3, atol=1e-5)


def test_compiled_training_gives_the_losses_of_eager_training(tmp_path):
    # AOTAutograd traces forward and backward as inductor would, without the C++ build (minutes on 2 cores).
    _compare_compiled_with_eager(tmp_path, "aot_eager")


@pytest.mark.slow
def test_inductor_compiled_training_gives_the_losses_of_eager_training(tmp_path):
    _compare_compiled_with_eager(tmp_path, "inductor")
