"""The `weightformer models` and `summary` commands, called in-process through the CLI entry point."""
from __future__ import annotations

import json

import pytest

from weightformer.cli.main import main


def test_models_table_lists_every_variant_with_paper_sizes(capsys):
    assert main(["models"]) == 0
    lines = capsys.readouterr().out.splitlines()
    tiny = next(line for line in lines if line.split()[:1] == ["weightformer_tiny"])
    assert tiny.split()[1:4] == ["7.07", "1.13", "224x224"]
    base = next(line for line in lines if line.split()[:1] == ["weightformer_base"])
    assert base.split()[1:4] == ["27.49", "17.70", "448x448"]


def test_models_json(capsys):
    assert main(["models", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["weightformer_small"]["params_m"] == pytest.approx(27.49, abs=0.01)
    assert rows["weightformer_small"]["dynamic_blocks"] == [1, 4, 7, 10, 13, 16]


def test_summary_breakdown_adds_up_and_deit_grows_quadratically(capsys):
    argv = ["summary", "weightformer_tiny", "--img-size", "224", "320", "--resolutions", "224", "448", "896"]
    assert main([*argv, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["img_size"] == [224, 320]
    assert report["params"] == pytest.approx(7.074184e6)
    assert sum(r["gmacs"] for r in report["layers"]) == pytest.approx(report["gmacs"])
    assert [r["kind"] for r in report["layers"]].count("dynamic") == 6
    assert report["gmacs"] == pytest.approx(1.13 * 320 / 224, rel=0.01)  # linear in the pixel count
    rows = report["scaling"]["rows"]
    assert report["scaling"]["baseline"] == "deit_tiny_patch16_224"
    assert rows[0]["deit_gmacs"] == pytest.approx(1.26, rel=0.02)  # DeiT-T's published 1.3 GFLOPs
    ratios = [r["deit_over_weightformer"] for r in rows]
    assert ratios == sorted(ratios) and ratios[-1] > 2


def test_summary_prints_tables(capsys):
    assert main(["summary", "weightformer_small", "--resolutions", "224", "448"]) == 0
    out = capsys.readouterr().out
    assert "blocks.16    dynamic" in out
    assert "deit_small_patch16_224" in out


def test_summary_counts_the_chosen_linear_predictor(capsys):
    costs = {}
    for predictor in ("bilateral", "agent"):
        argv = ["summary", "weightformer_tiny", "--linear-predictor", predictor, "--resolutions", "224", "--json"]
        assert main(argv) == 0
        out = json.loads(capsys.readouterr().out)
        assert out["linear_predictor"] == predictor
        costs[predictor] = out["gmacs"], out["scaling"]["rows"][0]["weightformer_gmacs"]
    assert costs["agent"][0] < costs["bilateral"][0]  # fewer MACs (benchmarks/PROBES.md has the table)
    assert costs["agent"][1] == pytest.approx(costs["agent"][0], rel=1e-6)  # the scaling table counts it too


def test_summary_rejects_bad_sizes_with_a_message(capsys):
    assert main(["summary", "weightformer_tiny", "--img-size", "225"]) == 2
    assert "multiples of the patch size 16" in capsys.readouterr().err
    assert main(["summary", "weightformer_tiny", "--img-size", "32"]) == 2
    assert "too small" in capsys.readouterr().err
