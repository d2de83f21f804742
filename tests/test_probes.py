"""The long-range probes: generators (balance, parts' marginals, distance beyond the static receptive field),
model specs, and a tiny suite run end to end (table, JSON, plot)."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest
import torch

from image_helpers import components
from weightformer.cli.main import main
from weightformer.layers.common import softmax_pool
from weightformer.tasks.probes import (
    PROBE_TASKS,
    Knobs,
    ProbeDataset,
    SuiteConfig,
    build_probe_model,
    format_table,
    parse_model_spec,
    run_suite,
    static_receptive_field,
)
from weightformer.tasks.probes.data import PALETTE
from weightformer.tasks.probes.suite import PeakMemory

KNOBS_96 = Knobs(resolution=96, distance=0.9)


def _image(dataset: ProbeDataset, i: int) -> tuple[np.ndarray, int]:
    image, label = dataset[i]
    return (image.permute(1, 2, 0).numpy() / 2 + 0.5), label  # (R, R, 3) in [0, 1]


def _palette_masks(image: np.ndarray) -> dict[int, np.ndarray]:
    """{palette index: mask of its pixels} for the palette colours present (objects are drawn exactly)."""
    masks = {}
    for index, colour in enumerate(PALETTE):
        mask = np.abs(image - colour).max(axis=-1) < 1e-4
        if mask.any():
            masks[index] = mask
    return masks


def _gap(a: np.ndarray, b: np.ndarray) -> float:
    """Chebyshev gap in pixels between two masks' bounding boxes (how far apart a window must reach)."""
    (ra, ca), (rb, cb) = np.nonzero(a), np.nonzero(b)
    rows = max(rb.min() - ra.max(), ra.min() - rb.max(), 0)
    cols = max(cb.min() - ca.max(), ca.min() - cb.max(), 0)
    return max(rows, cols)


# -- generators ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("task", sorted(PROBE_TASKS))
def test_images_are_deterministic_by_seed_and_index_and_labels_balanced(task):
    a, b, other = (ProbeDataset(task, Knobs(resolution=48, distractors=2), 40, seed=s) for s in (3, 3, 4))
    assert torch.equal(a[7][0], b[7][0]) and not torch.equal(a[7][0], other[7][0])
    assert a[7][0].shape == (3, 48, 48) and a[7][0].dtype == torch.float32
    assert Counter(a[i][1] for i in range(40)) == {0: 20, 1: 20}
    val = ProbeDataset(task, Knobs(resolution=48), 4, seed=3, split="val")
    assert not torch.equal(val[1][0], a[1][0])  # the splits are different images


def test_same_different_colour_of_each_square_says_nothing_and_the_squares_are_beyond_the_receptive_field():
    dataset = ProbeDataset("same_different", KNOBS_96, 360)
    side, rf = round(96 / 12), static_receptive_field(patch=4, depth=6)
    marginal = {0: Counter(), 1: Counter()}
    for i in range(len(dataset)):
        image, label = _image(dataset, i)
        masks = _palette_masks(image)
        assert len(masks) == (1 if label else 2)
        coloured = np.any(list(masks.values()), axis=0)
        assert coloured.sum() == 2 * side**2
        # The first square in raster order starts at the first coloured pixel; the rest is the second square.
        r, c = np.argwhere(coloured)[0]
        first = np.zeros_like(coloured)
        first[r:r + side, c:c + side] = True
        assert coloured[first].all()
        assert _gap(first, coloured & ~first) > rf, "both squares fit in one static receptive field"
        marginal[label][next(k for k, m in masks.items() if m[r, c])] += 1
    for label in (0, 1):  # each colour about 1/6 of the time under both labels (180 draws: 30 +- 5)
        assert set(marginal[label]) == set(range(len(PALETTE)))
        assert all(abs(n - 30) < 18 for n in marginal[label].values()), marginal


def test_context_label_is_cue_xor_shape_and_each_alone_is_uniform():
    dataset = ProbeDataset("context", KNOBS_96, 200)
    seen = Counter()
    for i in range(len(dataset)):
        image, label = _image(dataset, i)
        masks = _palette_masks(image)
        cue_red = 0 in masks
        assert cue_red != (1 in masks)
        target = masks[2]
        disc = target.sum() < target.any(axis=1).sum() * target.any(axis=0).sum()  # a disc misses its box corners
        assert label == int(cue_red != disc)
        assert _gap(masks[0 if cue_red else 1], target) > static_receptive_field(4, 6)
        seen[(label, cue_red)] += 1
        seen[(label, "disc", disc)] += 1
    assert all(35 < seen[(label, red)] < 65 for label in (0, 1) for red in (True, False)), seen


def test_count_label_is_equal_counts_in_the_end_bands():
    dataset = ProbeDataset("count", Knobs(resolution=96, distance=0.5, distractors=3), 60)
    for i in range(len(dataset)):
        image, label = _image(dataset, i)
        white = image.min(axis=-1) > 0.8  # counted objects are white; distractors grey, background dark
        labelled, count = components(white)
        centres = [np.argwhere(labelled == k).mean(axis=0) for k in range(1, count + 1)]
        # The bands lie along one axis: split the objects at the middle of that axis.
        axis = int(np.ptp([c[1] for c in centres]) > np.ptp([c[0] for c in centres]))
        low = sum(c[axis] < 48 for c in centres)
        assert 1 <= low <= 3 and 1 <= count - low <= 3
        assert label == int(low == count - low)


def test_bad_knobs_are_one_line_errors():
    with pytest.raises(ValueError, match="distance must be within"):
        ProbeDataset("same_different", Knobs(distance=1.5), 4)
    with pytest.raises(ValueError, match="Unknown probe task 'nope'"):
        ProbeDataset("nope", Knobs(), 4)
    with pytest.raises(ValueError, match="size must be within"):
        ProbeDataset("count", Knobs(size=0.5), 4)
    with pytest.raises(ValueError, match="colours must be within"):
        ProbeDataset("same_different", Knobs(colours=7), 4)


def test_fewer_colours_draw_from_the_start_of_the_palette():
    dataset = ProbeDataset("same_different", Knobs(resolution=48, colours=2), 40)
    used = set()
    for i in range(len(dataset)):
        image, label = _image(dataset, i)
        masks = _palette_masks(image)
        assert len(masks) == (1 if label else 2)
        used |= set(masks)
    assert used == {0, 1}


def test_softmax_pool_singles_out_one_token_whatever_the_token_count():
    # The point of the query_pool predictors: one informative token among N is not diluted by N.
    torch.manual_seed(0)
    query = torch.zeros(1, 8)
    query[0, 0] = 4.0
    for side in (4, 32):
        x = torch.randn(1, side, side, 8) * 0.3
        x[0, side // 2, 1, 0] = 5.0  # one token stands out along the query
        summary = softmax_pool(x, query)[0, 0]  # (C,)
        torch.testing.assert_close(summary, x[0, side // 2, 1], atol=0.05, rtol=0)
        assert x.mean(dim=(1, 2))[0, 0] < 5.0 * 4 / side**2 + 0.2  # the mean is diluted


# -- model specs ---------------------------------------------------------------------------------------------


def test_model_specs_build_the_named_networks_with_shared_sizes():
    assert parse_model_spec("weightformer:linear=query_pool,depth=3") == ("weightformer", {"linear": "query_pool",
                                                                                          "depth": 3})
    static = build_probe_model("static", 2, 32, defaults=dict(width=24, depth=3))
    assert static.embed_dim == 24 and len(static.blocks) == 3 and static.dynamic_indices == ()
    model = build_probe_model("weightformer:linear=query_pool,conv=query_pool,dynamic=0-2,depth=3", 2, 32)
    assert model.dynamic_indices == (0, 2) and model.patch_size == 4 and model.embed_dim == 48
    assert model.blocks[0].mlp.fc1.predictor_name == "query_pool"
    assert model.blocks[0].token_mixer.predictor_name == "query_pool"
    vit = build_probe_model("vit:heads=2", 2, 32, defaults=dict(width=24, depth=2))
    assert vit(torch.randn(1, 3, 32, 32)).shape == (1, 2) and len(vit.blocks) == 2 and vit.embed_dim == 24
    for spec, message in [("vit:heads", "not key=value"), ("weightformer:colour=red", "unknown key"),
                          ("static:dynamic=all", "static means"), ("nonsense_net", "Unknown model")]:
        with pytest.raises(ValueError, match=message):
            build_probe_model(spec, 2, 32)


@pytest.mark.parametrize("predictor", ["agent", "normalized"])
@pytest.mark.parametrize("placement,dynamic", [("", (1,)), (",dynamic=all", (0, 1, 2))])
def test_model_specs_select_the_output_predictors_and_train_at_an_odd_grid(predictor, placement, dynamic):
    model = build_probe_model(f"weightformer:linear={predictor}{placement}", 2, 20, defaults=dict(width=16, depth=3))
    assert model.dynamic_indices == dynamic
    assert all(model.blocks[i].mlp.fc1.predictor_name == predictor for i in dynamic)
    logits = model(torch.randn(1, 3, 20, 28))  # a 5 x 7 token grid, batch 1
    assert logits.shape == (1, 2)
    logits.sum().backward()
    for i in dynamic:
        assert all(p.grad is not None for p in model.blocks[i].mlp.fc1.predictor.parameters())


def test_peak_memory_sees_an_allocation():
    with PeakMemory("cpu") as memory:
        block = torch.ones(64 * 2**20 // 4)  # 64 MiB, touched
        block += 1
        torch.tensor(0.0).add_(1)
        import time

        time.sleep(0.05)
    del block
    assert memory.peak_mb is None or memory.peak_mb > 48


# -- the suite, end to end -----------------------------------------------------------------------------------


def test_tiny_suite_writes_json_table_and_plot(tmp_path, capsys):
    out = tmp_path / "probe"
    code = main(["probe", "--models", "static", "weightformer:linear=query_pool", "--resolution", "32", "--steps",
                 "2", "--batch-size", "4", "--val-images", "6", "--seeds", "0", "1", "--width", "16", "--depth", "2",
                 "--jobs", "0", "-o", str(out)])
    assert code == 0
    printed = capsys.readouterr().out
    results = json.loads((out / "probes.json").read_text())
    assert (out / "probes.png").stat().st_size > 1000
    assert len(results["runs"]) == 4 and len(results["summary"]) == 2
    for row in results["runs"]:
        assert 0 <= row["accuracy"] <= 100 and row["train_images_per_second"] > 0 and row["steps"] == 2
    rows = {r["model"]: r for r in results["summary"]}
    assert rows["static"]["seeds"] == 2 and len(rows["static"]["accuracy_per_seed"]) == 2
    assert rows["static"]["params"] < rows["weightformer:linear=query_pool"]["params"]
    assert results["static_receptive_field_px"] == 4 * (1 + 2 * 2)
    assert results["environment"]["cpu"] and "commit" in results["environment"]  # the machine, as bench records it
    assert len(results["environment"]["load_average_at_end"]) == 3
    assert format_table(results) in printed and "`weightformer:linear=query_pool`" in printed
    # Cost per image at the probe size and at 224² / 1024², for every spec: static's grows with the pixels.
    static_cost = results["cost"]["static"]
    assert set(static_cost) == {"32", "224", "1024"}
    assert static_cost["224"] / static_cost["32"] == pytest.approx((224 / 32) ** 2, rel=0.02)
    # Resuming with one more seed trains only the new runs.
    cfg = SuiteConfig(models=["static"], seeds=[0, 2], resolutions=[32], steps=2, batch_size=4, val_images=6,
                      sizes=dict(width=16, depth=2, patch=4), jobs=0, out=str(out), resume=True)
    resumed = run_suite(cfg, log=lambda line: None)
    assert len(resumed["runs"]) == 5
    assert set(resumed["cost"]) == {"static", "weightformer:linear=query_pool"}  # earlier specs' costs kept


def test_probe_cli_errors_are_one_line(tmp_path, capsys):
    assert main(["probe", "--models", "weightformer:bad=1", "-o", str(tmp_path / "x")]) == 2
    assert "unknown key(s) bad" in capsys.readouterr().err
    (tmp_path / "file").write_text("")
    assert main(["probe", "-o", str(tmp_path / "file")]) == 2
    assert "is a file" in capsys.readouterr().err


def test_model_cost_is_linear_in_pixels_for_weightformer_and_quadratic_terms_for_vit():
    from weightformer.tasks.probes.suite import model_cost

    sizes = dict(width=16, depth=2, patch=4)
    agent = model_cost("weightformer:linear=agent,dynamic=all", sizes, [32])
    vit = model_cost("vit:heads=2", sizes, [32])
    pixels = (1024 / 224) ** 2
    assert agent["1024"] / agent["224"] == pytest.approx(pixels, rel=0.02)
    # ViT: attention's N² terms (QK^T and AV: 2 N² C MACs per block) make it grow faster than the pixels.
    tokens = {r: (r // 4) ** 2 for r in (224, 1024)}
    attention = {r: 2 * 2 * tokens[r] ** 2 * 16 for r in tokens}  # depth 2
    linear_part = {r: vit[str(r)] - attention[r] for r in tokens}
    assert linear_part[1024] / linear_part[224] == pytest.approx(pixels, rel=0.05)
