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
