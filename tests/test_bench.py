"""`weightformer bench` end to end on a tiny CPU run: the numbers in the table, the JSON and the plot agree with
each other and with what a step costs (training more than inference); no speed target is asserted."""

from __future__ import annotations

import json
import statistics

import pytest

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
    assert results["environment"]["torch"] and results["config"]["model"] == "weightformer_tiny"
    assert results["command"].startswith("weightformer ")
    assert (tmp_path / "run.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_generation_bench_times_weightformer_dit_against_dit_with_sdpa(capsys):
    cfg = BenchConfig(task="generation", model="weightformer_dit_s_2", resolutions=[8], base_batch=1,
                      rounds=1, warmup=0, threads=1, include_reference=False, num_classes=10,
                      model_kwargs=dict(hidden_size=32, depth=2))
    results = run_bench(cfg, log=lambda line: None)
    rows = {(r["resolution"], r["mode"], r["contestant"]): r for r in results["rows"]}
    assert set(rows) == {(8, m, c) for m in ("inference", "train") for c in ("wfm", "dit")}
    assert rows[(8, "train", "wfm")]["batch"] == 16 and cfg.batch_for(64) == 1 and cfg.batch_for(16) == 4
    for entry in results["ratios"]:
        key = (entry["resolution"], entry["mode"])
        ratio = rows[(*key, "wfm")]["images_per_s"] / rows[(*key, "dit")]["images_per_s"]
        assert entry["wfm/dit speed"] == pytest.approx(ratio)
        assert f"{entry['wfm/dit speed']:.2f}x" in format_results(results)
    assert main(["bench", "--task", "generation", "--model", "tiny", "-o", "x"]) == 2
    assert "--model tiny is not a generation variant" in capsys.readouterr().err


# -- `weightformer bench --grad-checkpointing` ---------------------------------------------------------------


def test_grad_checkpointing_bench_reports_less_activation_memory_with_checkpointing(tmp_path, capsys):
    out = tmp_path / "ckpt"
    argv = ["bench", "--grad-checkpointing", "--device", "cpu", "--resolutions", "96", "--base-batch", "1",
            "--rounds", "2", "--warmup", "1", "--threads", "1", "--out", str(out)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    results = json.loads((tmp_path / "ckpt.json").read_text())
    assert not (tmp_path / "ckpt.png").exists()
    rows = {r["grad_checkpointing"]: r for r in results["rows"]}
    off, on = rows[False], rows[True]
    assert off["batch"] == on["batch"] == 5 and len(on["times_s"]) == 2
    # 17 blocks: without checkpointing each keeps several maps of its input's size, with it only its input.
    assert 0 < on["activations_mb"] < off["activations_mb"] / 4
    assert on["peak_memory_mb"] < off["peak_memory_mb"] and off["peak_memory_mb"] >= off["activations_mb"]
    (ratio,) = results["ratios"]
    assert ratio["activations off/on"] == pytest.approx(off["activations_mb"] / on["activations_mb"])
    assert ratio["step time on/off"] == pytest.approx(on["median_s"] / off["median_s"])
    assert f"{ratio['activations off/on']:.2f}x" in printed and "Measured: activations" in printed
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

    cfg = BenchConfig(task="generation", model="weightformer_dit_s_2", resolutions=[16], base_batch=1, rounds=1,
                      warmup=0, threads=1, num_classes=10, model_kwargs=dict(hidden_size=32, depth=3))
    results = run_checkpointing_bench(cfg, log=lambda line: None)
    off, on = sorted(results["rows"], key=lambda r: r["grad_checkpointing"])
    assert off["batch"] == 4 and 0 < on["activations_mb"] < off["activations_mb"] / 2
    assert "activations off/on" in format_checkpointing_results(results)
