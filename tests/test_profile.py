"""`weightformer profile`: every family accounted, MACs from shapes agree with the FLOP counter."""

from __future__ import annotations

import json

import pytest

from weightformer.analysis.flops import count_macs
from weightformer.analysis.profile import FAMILIES, ProfileConfig, format_profile, run_profile
from weightformer.cli.main import main
from weightformer.models import create_model


@pytest.fixture(scope="module")
def results():
    return run_profile(ProfileConfig(resolution=64, batch=2, steps=1, warmup=1), log=lambda line: None)


def test_profile_attributes_weightformer_and_deit_ops_to_their_families(results):
    for mode in ("inference", "train"):
        wf, deit = results["modes"][mode]["weightformer_tiny"], results["modes"][mode]["deit_tiny_patch16_224"]
        assert set(wf["families"]) == set(FAMILIES)
        assert wf["families"]["dynamic predictors"]["ms"] > 0 and wf["families"]["attention (SDPA)"]["ms"] == 0
        assert deit["families"]["attention (SDPA)"]["gmacs"] > 0 and deit["families"]["dynamic predictors"]["ms"] == 0
        for family in ("depthwise conv (static)", "depthwise conv (dynamic)", "layer norm", "GEMM"):
            assert wf["families"][family]["gmacs"] > 0, family
    assert results["modes"]["train"]["weightformer_tiny"]["families"]["optimizer"]["ms"] > 0
    assert "GEMM" in format_profile(results)


def test_profiled_inference_macs_match_the_flop_counter(results):
    # The counter follows the reference path; the fast path's factored dynamic-linear update does more MACs on
    # small grids (14 % more in all at 64x64, 2 % at 224x224) to skip forming the per-sample weight.
    counted = count_macs(create_model("weightformer_tiny"), (3, 64, 64), batch_size=2).gmacs
    profiled = results["modes"]["inference"]["weightformer_tiny"]["total_gmacs"]
    assert counted < profiled < 1.2 * counted
    deit = create_model("deit_tiny_patch16_224", img_size=64)
    deit_counted = count_macs(deit, (3, 64, 64), batch_size=2).gmacs
    deit_profiled = results["modes"]["inference"]["deit_tiny_patch16_224"]["total_gmacs"]
    assert deit_profiled == pytest.approx(deit_counted, rel=0.05)


def test_profile_command_writes_json(tmp_path):
    out = tmp_path / "p"
    assert main(["profile", "--resolution", "48", "--batch", "1", "--steps", "1", "--warmup", "0",
                 "--modes", "inference", "--out", str(out)]) == 0
    data = json.loads((tmp_path / "p.json").read_text())
    assert data["command"].startswith("weightformer") and "inference" in data["modes"]
