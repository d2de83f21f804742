"""`weightformer bench` end to end on a tiny CPU run: the numbers in the table, the JSON and the plot agree with
each other and with what a step costs (training more than inference); no speed target is asserted."""

from __future__ import annotations

import json
import statistics

import pytest
import timm
import torch

from weightformer.analysis.bench import BenchConfig, format_results, run_bench
from weightformer.cli.main import main


def test_batch_keeps_pixels_per_batch_constant():
    cfg = BenchConfig(base_batch=256)
    assert [cfg.batch_for(r) for r in (224, 448, 896, 1536)] == [256, 64, 16, 5]
    assert BenchConfig(base_batch=1).batch_for(896) == 1


def test_bench_command_writes_a_consistent_table_json_and_plot(tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["bench", "--device", "cpu", "--resolutions", "96", "224", "--base-batch", "1", "--rounds", "2",
            "--warmup", "1", "--threads", "1"]
    assert main([*argv, "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    results = json.loads((tmp_path / "run.json").read_text())
    rows = {(r["resolution"], r["mode"], r["contestant"]): r for r in results["rows"]}
    modes, names = ("inference", "train"), ("wfm", "wfm_ref", "deit")
    assert set(rows) == {(res, m, c) for res in (96, 224) for m in modes for c in names}
    for (res, _, _), r in rows.items():
        assert r["batch"] == BenchConfig(base_batch=1).batch_for(res) and len(r["times_s"]) == 2
        assert r["median_s"] == pytest.approx(statistics.median(r["times_s"]))
        assert r["images_per_s"] == pytest.approx(r["batch"] / r["median_s"])
        assert len(r["minor_faults"]) == 2 and all(isinstance(f, int) and f >= 0 for f in r["minor_faults"])
    for res in (96, 224):
        for c in names:  # a training step (forward, backward, AdamW) costs more time and memory than inference
            train, infer = rows[(res, "train", c)], rows[(res, "inference", c)]
            assert train["images_per_s"] < infer["images_per_s"], (res, c)
            assert train["peak_memory_mb"] > infer["peak_memory_mb"] > 0, (res, c)
    for entry in results["ratios"]:
        key = (entry["resolution"], entry["mode"])
        for c in ("wfm", "wfm_ref"):
            ratio = rows[(*key, c)]["images_per_s"] / rows[(*key, "deit")]["images_per_s"]
            assert entry[f"{c}/deit speed"] == pytest.approx(ratio)
            assert f"{entry[f'{c}/deit speed']:.2f}x" in printed  # the printed table shows the JSON's ratios
    for entry in results["ratios"]:  # DeiT's MACs (attention included) over WeightFormer's, beside the speed
        key = (entry["resolution"], entry["mode"])
        assert entry["MAC ratio"] == pytest.approx(rows[(*key, "deit")]["gmacs_per_image"]
                                                   / rows[(*key, "wfm")]["gmacs_per_image"])
        assert entry["wfm/deit efficiency"] == pytest.approx(entry["wfm/deit speed"] / entry["MAC ratio"])
    assert printed.startswith("machine: ") and "load " in printed.splitlines()[0]
    assert results["environment"]["torch"] and results["config"]["model"] == "weightformer_tiny"
    assert results["command"].startswith("weightformer ")
    assert (tmp_path / "run.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_timed_steps_count_the_fresh_pages_they_touch():
    import mmap

    from weightformer.analysis.bench import _timed

    size = 64 * 2**20

    def touch_fresh_pages():  # an anonymous mapping, not malloc: new pages whatever the allocator keeps
        with mmap.mmap(-1, size) as buffer:
            for offset in range(0, size, mmap.PAGESIZE):
                buffer[offset] = 1

    seconds, faults = _timed(touch_fresh_pages, "cpu")
    assert seconds > 0 and faults >= size // 2**21  # at least one per 2 MiB (a transparent huge page maps that)
    assert _timed(lambda: None, "cpu")[1] < 100


def test_cpu_peak_memory_sees_the_temporaries_inside_a_compiled_graph():
    # To the profiler a compiled graph is one op: its self memory nets its temporaries out. The peak must not.
    from weightformer.analysis.bench import _peak_memory_mb

    w1, w2 = torch.randn(64, 2048), torch.randn(2048, 8)
    x = torch.randn(1024, 64)
    hidden_mib = 1024 * 2048 * 4 / 2**20  # (x @ w1): 8 MiB, freed before the 32 KiB result is returned

    def fn(x):
        return torch.relu(x @ w1) @ w2

    compiled = torch.compile(fn)
    for step in (lambda: fn(x), lambda: compiled(x)):
        with torch.inference_mode():
            step()  # (compiles)
            peak = _peak_memory_mb(step, "cpu")
        assert hidden_mib <= peak < 3 * hidden_mib, peak


def test_generation_bench_times_weightformer_dit_against_dit_with_sdpa(capsys):
    from weightformer.analysis.summary import macs_per_image

    kwargs = dict(hidden_size=32, depth=2)
    cfg = BenchConfig(task="generation", model="weightformer_dit_s_2", resolutions=[8], base_batch=2,
                      rounds=1, warmup=0, threads=1, include_reference=False, num_classes=10, model_kwargs=kwargs)
    results = run_bench(cfg, log=lambda line: None)
    rows = {(r["resolution"], r["mode"], r["contestant"]): r for r in results["rows"]}
    assert set(rows) == {(8, m, c) for m in ("inference", "train") for c in ("wfm", "dit")}
    # DiT's working point: the same batch at every latent size, not scaled down with the latent
    assert rows[(8, "train", "wfm")]["batch"] == 2 and cfg.batch_for(64) == cfg.batch_for(16) == 2
    macs = {name: macs_per_image(name, 8, num_classes=10, **kwargs).total / 1e9
            for name in ("weightformer_dit_s_2", "dit_attn_s_2")}
    printed = format_results(results)
    for entry in results["ratios"]:
        key = (entry["resolution"], entry["mode"])
        assert rows[(*key, "wfm")]["gmacs_per_image"] == pytest.approx(macs["weightformer_dit_s_2"])
        assert entry["MAC ratio"] == pytest.approx(macs["dit_attn_s_2"] / macs["weightformer_dit_s_2"])
        ratio = rows[(*key, "wfm")]["images_per_s"] / rows[(*key, "dit")]["images_per_s"]
        assert entry["wfm/dit speed"] == pytest.approx(ratio)
        assert entry["wfm/dit efficiency"] == pytest.approx(ratio / entry["MAC ratio"])
        for k in ("MAC ratio", "wfm/dit speed", "wfm/dit efficiency"):
            assert f"{entry[k]:.2f}x" in printed
    assert printed.startswith("machine: ") and results["environment"]["load_average_at_end"] is not None
    assert main(["bench", "--task", "generation", "--model", "tiny", "-o", "x"]) == 2
    assert "--model tiny is not a generation variant" in capsys.readouterr().err


def test_compiled_generation_bench_compiles_what_each_step_runs(monkeypatch):
    # The guided step calls forward_with_cfg: compiling the module alone would leave that step eager.
    compiled_calls = {"inference": 0, "train": 0}
    real_compile = torch.compile

    def counting_compile(fn, **kwargs):
        def count(gm, example_inputs):
            def run(*args):
                compiled_calls["train" if torch.is_grad_enabled() else "inference"] += 1
                return gm(*args)
            return run
        return real_compile(fn, backend=count, **kwargs)

    monkeypatch.setattr(torch, "compile", counting_compile)
    cfg = BenchConfig(task="generation", model="weightformer_dit_s_2", resolutions=[8], base_batch=2, rounds=1,
                      warmup=0, threads=1, include_reference=False, num_classes=10, compile_mode="on",
                      model_kwargs=dict(hidden_size=32, depth=2))
    torch._dynamo.reset()
    results = run_bench(cfg, log=lambda line: None)
    assert {(r["mode"], r["contestant"]) for r in results["rows"]} == {
        (m, c) for m in ("inference", "train") for c in ("wfm_compiled", "dit_compiled")}
    # every timed step of both contestants ran a compiled graph (profiled step included: >= 2 per contestant)
    assert compiled_calls["inference"] >= 4 and compiled_calls["train"] >= 4, compiled_calls


def test_compiled_checkpointed_bench_compiles_block_by_block(monkeypatch):
    # compile_scope "auto" with --checkpoint-activations: each block compiled on its own (models.compile_blocks),
    # so the recomputation stays per block; nothing compiles the whole model or the guided forward.
    compiled = []
    real_compile = torch.compile

    def recording_compile(fn, **kwargs):
        compiled.append(fn)
        return real_compile(fn, backend="eager", **kwargs)

    monkeypatch.setattr(torch, "compile", recording_compile)
    cfg = BenchConfig(task="generation", model="weightformer_dit_s_2", resolutions=[8], base_batch=2, rounds=1,
                      warmup=0, threads=1, include_reference=False, num_classes=10, compile_mode="on",
                      modes=("train",), model_kwargs=dict(hidden_size=32, depth=2), checkpoint_activations=True)
    assert cfg.compiles_blocks()
    assert not BenchConfig(compile_scope="model", checkpoint_activations=True).compiles_blocks()
    torch._dynamo.reset()
    results = run_bench(cfg, log=lambda line: None)
    owners = [type(getattr(fn, "__self__", None)).__name__ for fn in compiled]
    assert owners == ["DiTBlock"] * 4, owners  # two blocks in each of the two contestants
    assert results["config"]["compile_scope"] == "auto"
    assert "compile block by block" in format_results(results)
    with pytest.raises(ValueError, match="compile_scope must be"):
        run_bench(BenchConfig(compile_scope="regional"), log=lambda line: None)


def test_checkpoint_activations_trains_every_contestant_with_less_memory(capsys):
    # Both contestants keep only their blocks' inputs: each one's step peak falls against the same run without.
    def peaks(checkpoint: bool) -> dict[str, float]:
        cfg = BenchConfig(task="generation", model="weightformer_dit_s_2", resolutions=[16], base_batch=4, rounds=1,
                          warmup=0, threads=1, include_reference=False, num_classes=10, modes=("train",),
                          model_kwargs=dict(hidden_size=32, depth=6), checkpoint_activations=checkpoint)
        results = run_bench(cfg, log=lambda line: None)
        if checkpoint:
            assert "trains with activation checkpointing" in format_results(results)
        return {r["contestant"]: r["peak_memory_mb"] for r in results["rows"]}

    off, on = peaks(False), peaks(True)
    assert set(on) == set(off) == {"wfm", "dit"}
    for name in on:
        assert 0 < on[name] < 0.75 * off[name], (name, on[name], off[name])
    argv = ["bench", "--grad-checkpointing", "--checkpoint-activations", "-o", "x"]
    assert main(argv) == 2 and "--checkpoint-activations does not apply" in capsys.readouterr().err


# -- `weightformer bench --grad-checkpointing` ---------------------------------------------------------------


def test_grad_checkpointing_bench_reports_less_activation_memory_with_checkpointing(tmp_path, capsys):
    out = tmp_path / "ckpt"
    # batch 22: at 5 the step's peak is a ~30 MiB temporary of the patch embedding's convolution backward, the same
    # with and without checkpointing
    argv = ["bench", "--grad-checkpointing", "--device", "cpu", "--resolutions", "96", "--base-batch", "4",
            "--rounds", "2", "--warmup", "1", "--threads", "1", "--out", str(out)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    results = json.loads((tmp_path / "ckpt.json").read_text())
    assert not (tmp_path / "ckpt.png").exists()
    rows = {r["grad_checkpointing"]: r for r in results["rows"]}
    off, on = rows[False], rows[True]
    assert off["batch"] == on["batch"] == 22 and len(on["times_s"]) == 2
    # 17 blocks: without checkpointing each keeps several maps of its input's size, with it only its input.
    assert 0 < on["activations_mb"] < off["activations_mb"] / 4
    assert on["peak_memory_mb"] < off["peak_memory_mb"] and off["peak_memory_mb"] >= off["activations_mb"]
    (ratio,) = results["ratios"]
    assert ratio["activations off/on"] == pytest.approx(off["activations_mb"] / on["activations_mb"])
    assert ratio["step time on/off"] == pytest.approx(on["median_s"] / off["median_s"])
    assert f"{ratio['activations off/on']:.2f}x" in printed and "Measured: activations" in printed
    assert printed.startswith("machine: ") and results["environment"]["load_average_at_start"] is not None
    assert results["measured"] and results["command"].startswith("weightformer ")


def test_activation_memory_is_what_autograd_saves_for_the_backward_pass():
    # The CPU measurement (allocator events from torch.profiler) against an independent count: the bytes of the
    # distinct storages autograd saves during the forward pass, parameters and input left out.
    import torch

    from weightformer.analysis.bench import bench_inputs
    from weightformer.analysis.checkpointing import _build, _measure, _train_step

    cfg = BenchConfig(model="weightformer_tiny", base_batch=1, threads=1, num_classes=10)
    images, labels = bench_inputs(cfg, 96)
    model = _build(cfg, 96, enable=False)
    step = _train_step(model, cfg, images, labels)
    step()
    activations, _ = _measure(step, "cpu")
    known = {t.untyped_storage().data_ptr() for t in [*model.parameters(), images]}
    saved = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        if t.untyped_storage().data_ptr() not in known:
            saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        step.finish(step.forward())
    assert activations == pytest.approx(sum(saved.values()) / 2**20, rel=0.01)


def test_grad_checkpointing_bench_on_weightformer_dit():
    from weightformer.analysis.checkpointing import format_checkpointing_results, run_checkpointing_bench

    cfg = BenchConfig(task="generation", model="weightformer_dit_s_2", resolutions=[16], base_batch=4, rounds=1,
                      warmup=0, threads=1, num_classes=10, model_kwargs=dict(hidden_size=32, depth=3))
    results = run_checkpointing_bench(cfg, log=lambda line: None)
    off, on = sorted(results["rows"], key=lambda r: r["grad_checkpointing"])
    assert off["batch"] == 4 and 0 < on["activations_mb"] < off["activations_mb"] / 2
    assert "activations off/on" in format_checkpointing_results(results)


# -- MACs beside the measurements ----------------------------------------------------------------------------


def _dit_macs_by_hand(width: int, depth: int, latent: int, attention: bool, classes_out: int = 8) -> int:
    """A DiT/2 forward pass on one 4-channel latent, counted layer by layer (fvcore's conventions: a LayerNorm
    without affine costs 4 per element; elementwise ops, the label lookup and unpatchify nothing)."""
    n, d = (latent // 2) ** 2, width
    stem = n * (4 * 2 * 2) * d + 256 * d + d * d  # patch embedding, timestep MLP
    mixer = n * d * 3 * d + 2 * n * n * d + n * d * d if attention else n * d * 9  # qkv, QK^T and AV, proj | dwconv
    block = d * 6 * d + 2 * 4 * n * d + mixer + 2 * n * d * 4 * d  # adaLN, two LayerNorms, mixer, MLP
    final = d * 2 * d + 4 * n * d + n * d * 2 * 2 * classes_out
    return stem + depth * block + final


def test_macs_per_image_count_attention_products_as_a_hand_count_does():
    from weightformer.analysis.summary import macs_per_image

    for latent in (8, 16):
        n = (latent // 2) ** 2
        dit = macs_per_image("dit_attn_s_2", latent, hidden_size=64, depth=2, num_classes=10)
        assert dit.total == _dit_macs_by_hand(64, 2, latent, attention=True)
        assert dit.attention == 2 * (2 * n * n * 64)  # per layer: N^2 C for QK^T, N^2 C for AV
        static = macs_per_image("weightformer_dit_s_2", latent, hidden_size=64, depth=2, num_classes=10,
                                dynamic_blocks="none")
        assert static.total == _dit_macs_by_hand(64, 2, latent, attention=False) and static.attention == 0
    # DeiT-T at 32 px: 2x2 patches and the class token, N = 5 tokens of width 192, 12 blocks, affine LayerNorms.
    n, d = 5, 192
    block = 2 * 5 * n * d + n * d * 3 * d + 2 * n * n * d + n * d * d + 2 * n * d * 4 * d
    deit = macs_per_image("deit_tiny_patch16_224", 32, num_classes=10)
    assert deit.total == 4 * (3 * 16 * 16) * d + 12 * block + 5 * n * d + d * 10
    assert deit.attention == 12 * 2 * n * n * d


def test_environment_names_the_machine_and_its_load():
    from weightformer.analysis.bench import describe_environment, environment, load_average

    env = environment("cpu", load_at_start=[1.5, 1.0, 0.5])
    assert env["cpu"] and env["logical_cores"] >= 1 and env["threads"] >= 1 and env["memory_gib"] > 0
    assert env["physical_cores"] is None or 1 <= env["physical_cores"] <= env["logical_cores"]
    assert env["torch"] and env["timm"] and env["python"] and "triton" in env
    assert env["load_average_at_start"] == [1.5, 1.0, 0.5] and env["load_average_at_end"] == load_average()
    assert env["commit"] is None or len(env["commit"].removesuffix("-dirty")) == 40
    line = describe_environment(env)
    assert line.startswith("machine: " + env["cpu"]) and "load 1.50 -> " in line and f"torch {env['torch']}" in line
    from weightformer.kernels import huge_pages

    assert env["huge_pages"] == huge_pages()
    pages = dict(env["huge_pages"], in_effect=True, transparent_huge_pages="madvise", malloc_hugetlb="1")
    assert "malloc on huge pages: yes (THP madvise, glibc.malloc.hugetlb 1)" in describe_environment(
        dict(env, huge_pages=pages))
    assert "malloc on huge pages: no (THP never" in describe_environment(
        dict(env, huge_pages=dict(pages, in_effect=False, transparent_huge_pages="never")))


@pytest.mark.slow
def test_gpu_check_script_dry_run_on_cpu_writes_every_comparison(tmp_path):
    # benchmarks/gpu_check.sh with GPU_CHECK_DRY_RUN=1: the same steps on the CPU, tiny sizes, eager.
    import subprocess
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    env = {**__import__("os").environ, "GPU_CHECK_DRY_RUN": "1"}
    subprocess.run(["bash", str(root / "benchmarks" / "gpu_check.sh"), str(tmp_path)], env=env, check=True,
                   timeout=900)
    budget = (tmp_path / "budget.txt").read_text()
    for name in ("cls-small", "cls-tiny", "dit-small", "dit-base"):
        assert f"{name}: exit 0" in budget, budget
        results = json.loads((tmp_path / f"{name}.json").read_text())
        assert all("MAC ratio" in e for e in results["ratios"]) and results["environment"]["cpu"]
        assert (tmp_path / f"{name}.txt").read_text().startswith("machine: ")
        assert f"== {name}\nmachine: " in (tmp_path / "tables.txt").read_text()
    dit = json.loads((tmp_path / "dit-base.json").read_text())
    assert {r["batch"] for r in dit["rows"]} == {2} and dit["config"]["model"] == "weightformer_dit_b_2"


def test_gpu_check_script_is_valid_bash_and_runs_every_comparison():
    import subprocess
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.sh"
    subprocess.run(["bash", "-n", str(script)], check=True)
    text = script.read_text()
    for needle in ("--model small", "--model tiny", "--task generation", "--model base", "--compile on",
                   "--compile off", "latents=(32 64 128)", "dit_batch=32", "cls_res_large=1248", "BUDGET_S:-570"):
        assert needle in text, needle


def test_baseline_on_onednn_linears_computes_deits_function_through_kernels_linear(monkeypatch):
    import copy

    from weightformer import kernels
    from weightformer.analysis.bench import use_onednn_linears

    torch.manual_seed(0)
    model = timm.create_model("deit_tiny_patch16_224", img_size=48, num_classes=5, depth=3)
    twin = use_onednn_linears(copy.deepcopy(model))
    calls = []
    onednn = kernels.linear
    monkeypatch.setattr(kernels, "linear", lambda *args: calls.append(args) or onednn(*args))
    x = torch.randn(2, 3, 48, 48)
    out = twin(x)
    assert len(calls) == 4 * 3 + 1  # qkv, proj, fc1, fc2 per block, and the head
    assert type(out.grad_fn).__name__ == "_OneDNNLinearBackward"  # the head's product ran on oneDNN
    ref = model(x)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    grads = torch.autograd.grad(out.square().sum(), list(twin.parameters()))
    grads_ref = torch.autograd.grad(ref.square().sum(), list(model.parameters()))
    for g, r in zip(grads, grads_ref, strict=True):
        torch.testing.assert_close(g, r, rtol=1e-4, atol=1e-5 * (r.abs().max().item() + 1))
