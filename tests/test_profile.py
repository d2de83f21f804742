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
    # A training step's GEMMs: the forward products, the input gradients and the weight gradients (oneDNN's
    # mkldnn_linear_backward_weights for WeightFormer's, MKL's mm for timm's DeiT): 3x the forward's MACs.
    for name in ("weightformer_tiny", "deit_tiny_patch16_224"):
        gemm = [results["modes"][mode][name]["families"]["GEMM"]["gmacs"] for mode in ("inference", "train")]
        assert gemm[1] == pytest.approx(3 * gemm[0], rel=0.05), name
    assert "GEMM" in format_profile(results)


def test_profiled_inference_macs_match_the_flop_counter(results):
    # The counter follows the reference path; the fast path keeps the dynamic-linear update factored instead of
    # forming the per-sample weight (at 64x64 through the 4 pooled tokens: 1 % fewer MACs in all).
    counted = count_macs(create_model("weightformer_tiny"), (3, 64, 64), batch_size=2).gmacs
    profiled = results["modes"]["inference"]["weightformer_tiny"]["total_gmacs"]
    assert profiled == pytest.approx(counted, rel=0.05) and profiled != counted
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


def test_profile_of_generation_compares_weightformer_dit_with_the_attention_dit():
    from weightformer.analysis.summary import macs_per_image

    cfg = ProfileConfig(model="weightformer_dit_s_2", task="generation", resolution=8, batch=2, steps=1, warmup=0,
                        modes=("inference", "train"))
    results = run_profile(cfg, log=lambda line: None)
    for mode in ("inference", "train"):
        wf, dit = results["modes"][mode]["weightformer_dit_s_2"], results["modes"][mode]["dit_attn_s_2"]
        assert wf["families"]["dynamic predictors"]["ms"] > 0 and wf["families"]["attention (SDPA)"]["ms"] == 0
        assert dit["families"]["attention (SDPA)"]["gmacs"] > 0 and dit["families"]["dynamic predictors"]["ms"] == 0
        assert wf["families"]["depthwise conv (dynamic)"]["gmacs"] > 0
        # DiT's 2x2 stride-2 stem is the patch embedding, not a depthwise conv; the same in both models.
        stems = [m["families"]["patch embedding conv"]["gmacs"] for m in (wf, dit)]
        assert stems[0] > 0 and stems[0] == pytest.approx(stems[1])
        assert dit["families"]["depthwise conv (static)"]["gmacs"] == 0
    # A guided step runs the 2 x batch latents through the network once: the attention DiT's profiled MACs are
    # its counted MACs per latent (attention's products included) times 4.
    profiled = results["modes"]["inference"]["dit_attn_s_2"]["total_gmacs"]
    assert profiled == pytest.approx(4 * macs_per_image("dit_attn_s_2", 8).gmacs, rel=0.05)
    assert "WF-DiT-S/2" in format_profile(results)
