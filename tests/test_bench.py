"""`weightformer bench` end to end on a tiny CPU run: the table, the JSON and the plot (speed is not asserted)."""

from __future__ import annotations

import json

from weightformer.analysis.bench import BenchConfig
from weightformer.cli.main import main


def test_batch_keeps_pixels_per_batch_constant():
    cfg = BenchConfig(base_batch=256)
    assert [cfg.batch_for(r) for r in (224, 448, 896, 1536)] == [256, 64, 16, 5]
    assert BenchConfig(base_batch=1).batch_for(896) == 1


def test_bench_command_writes_table_json_and_plot(tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["bench", "--device", "cpu", "--resolutions", "224", "--base-batch", "1", "--rounds", "1", "--warmup", "1"]
    assert main([*argv, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "wfm/deit speed" in printed and "wfm_ref/deit speed" in printed
    results = json.loads((tmp_path / "run.json").read_text())
    contestants = {(r["mode"], r["contestant"]) for r in results["rows"]}
    assert contestants == {(m, c) for m in ("inference", "train") for c in ("wfm", "wfm_ref", "deit")}
    assert all(r["images_per_s"] > 0 and r["peak_memory_mb"] >= 0 for r in results["rows"])
    assert results["environment"]["torch"] and results["config"]["model"] == "weightformer_tiny"
    assert (tmp_path / "run.png").stat().st_size > 0
