"""The published benchmarks as probes (tasks/probes/published.py): each generator holds the statistics its
paper states, on a few hundred small images."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch

from image_helpers import components as components_of
from weightformer.tasks.probes import (
    Knobs,
    ProbeDataset,
    SuiteConfig,
    draw_pathfinder,
    draw_psvrt,
    draw_same_different_random,
)


def _draw(draw, knobs: Knobs, index: int, seed: int = 0):
    """(image (R, R, 3) in [0, 1], metadata) of dataset item `index`, checked against ProbeDataset's pixels."""
    return draw(index % 2, knobs, np.random.default_rng([seed, 0, index]))


@pytest.mark.parametrize("task,knobs", [("psvrt", Knobs(resolution=32)),
                                        ("pathfinder", Knobs(resolution=32, distractors=1)),
                                        ("same_different_random", Knobs(resolution=32, distance=0.0))])
def test_dataset_images_are_the_drawn_images_deterministic_and_balanced(task, knobs):
    draw = {"psvrt": draw_psvrt, "pathfinder": draw_pathfinder, "same_different_random": draw_same_different_random}
    a, b = ProbeDataset(task, knobs, 20, seed=5), ProbeDataset(task, knobs, 20, seed=5)
    assert torch.equal(a[3][0], b[3][0]) and not torch.equal(a[3][0], a[5][0])
    image, _ = _draw(draw[task], knobs, 3, seed=5)
    torch.testing.assert_close(a[3][0], torch.from_numpy((image - 0.5) * 2).permute(2, 0, 1))
    assert Counter(a[i][1] for i in range(20)) == {0: 10, 1: 10}


# -- PSVRT ---------------------------------------------------------------------------------------------------


def test_psvrt_two_binary_items_identical_iff_label_and_each_item_a_fair_coin_under_both_labels():
    knobs = Knobs(resolution=32, item_size=4)
    ink = {0: [], 1: []}
    for i in range(400):
        image, meta = _draw(draw_psvrt, knobs, i)
        label, k = i % 2, knobs.item_size
        assert np.array_equal(image[..., 0], image[..., 2]) and set(np.unique(image)) <= {0.0, 1.0}
        (r1, c1), (r2, c2) = meta["positions"]
        assert max(abs(r1 - r2), abs(c1 - c2)) >= k  # disjoint boxes
        assert all(0 <= v <= 32 - k for v in (r1, c1, r2, c2))
        # From the pixels: the two boxes hold all the ink, and their contents are equal iff label 1.
        first, second = image[r1:r1 + k, c1:c1 + k, 0], image[r2:r2 + k, c2:c2 + k, 0]
        assert image[..., 0].sum() == first.sum() + second.sum()
        assert np.array_equal(first, second) == bool(label)
        assert np.array_equal(first, meta["patterns"][0]) and np.array_equal(second, meta["patterns"][1])
        ink[label].append(first.mean())
    for label in (0, 1):  # one item's ink: 16 fair coins, mean 0.5 (sd of the mean over 200 images: 0.009)
        assert abs(np.mean(ink[label]) - 0.5) < 0.04, (label, np.mean(ink[label]))


# -- Pathfinder ----------------------------------------------------------------------------------------------


def test_pathfinder_markers_joined_by_ink_iff_label_with_the_stated_contours():
    knobs = Knobs(resolution=32, contour_length=6, distractors=2)
    ink = {0: [], 1: []}
    for i in range(200):
        image, meta = _draw(draw_pathfinder, knobs, i)
        label = i % 2
        contours = meta["contours"]
        assert [len(c) for c in contours] == [6, 6, 2, 2]  # two targets, distractors of contour_length // 3
        step = np.linalg.norm(contours[0][1:, 0] - contours[0][:-1, 0], axis=1)
        np.testing.assert_allclose(step, 1.5, atol=1e-6)  # paddle 1 + gap 0.5 px at 32
        # On the pixels: flood fill over the ink from one marker reaches the other iff label 1.
        components, _ = components_of(image[..., 0] > 0.5, connectivity=8)
        (ra, ca), (rb, cb) = meta["markers"].astype(int)
        assert components[ra, ca] and components[rb, cb]
        assert (components[ra, ca] == components[rb, cb]) == bool(label), i
        assert components.max() == len(contours)  # no two contours touch
        ink[label].append(image[..., 0].mean())
    means = [np.mean(ink[label]) for label in (0, 1)]
    assert abs(means[0] - means[1]) / means[1] < 0.05, means  # ink does not give the label away


@pytest.mark.parametrize("length", [9, 14])
def test_pathfinder_contour_length_sets_the_paddles_per_contour(length):
    for i in range(6):
        image, meta = _draw(draw_pathfinder, Knobs(resolution=32, contour_length=length), i)
        assert [len(c) for c in meta["contours"]] == [length, length]
        assert len(meta["markers"]) == 2


def test_pathfinder_path_x_resolution_scales_the_geometry():
    image, meta = _draw(draw_pathfinder, Knobs(resolution=128, contour_length=6), 1)
    assert image.shape == (128, 128, 3)
    step = np.linalg.norm(meta["contours"][0][1, 0] - meta["contours"][0][0, 0])
    assert step == pytest.approx(6.0)  # 4 x the 32 px step
    with pytest.raises(ValueError, match="pathfinder needs resolution >= 32"):
        ProbeDataset("pathfinder", Knobs(resolution=24), 4)


# -- same_different at random places -------------------------------------------------------------------------


def test_same_different_random_separation_varies_and_colours_say_nothing_alone():
    knobs = Knobs(resolution=48, distance=0.0, size=1 / 8, colours=3)
    gaps, colour = [], {0: Counter(), 1: Counter()}
    for i in range(300):
        image, meta = _draw(draw_same_different_random, knobs, i)
        (r1, c1), (r2, c2) = meta["corners"]
        side, label = meta["side"], i % 2
        gap = max(abs(r1 - r2), abs(c1 - c2))
        assert gap >= side + 1  # no overlap, no touching
        gaps.append(gap)
        # On the pixels: each square is one flat colour; equal iff label 1.
        a, b = image[r1, c1], image[r2, c2]
        assert np.array_equal(image[r1:r1 + side, c1:c1 + side], np.broadcast_to(a, (side, side, 3)))
        assert np.array_equal(a, b) == bool(label)
        colour[label][meta["colours"][0]] += 1
    assert min(gaps) <= 10 and max(gaps) >= 38 and np.std(gaps) > 6  # from near neighbours to opposite edges
    for label in (0, 1):  # each colour about 1/3 of 150 draws under both labels
        assert all(35 < colour[label][c] < 65 for c in range(3)), colour


def test_same_different_random_distance_is_the_least_gap():
    knobs = Knobs(resolution=48, distance=0.75, size=1 / 8)
    span = 48 - 6
    for i in range(100):
        _, meta = _draw(draw_same_different_random, knobs, i)
        (r1, c1), (r2, c2) = meta["corners"]
        assert max(abs(r1 - r2), abs(c1 - c2)) >= 0.75 * span


def test_benchmark_knobs_are_checked_and_flow_into_the_suite(tmp_path):
    from weightformer.cli.main import main

    with pytest.raises(ValueError, match="item_size must be within"):
        ProbeDataset("psvrt", Knobs(resolution=16, item_size=9), 4)
    with pytest.raises(ValueError, match="contour_length must be within"):
        ProbeDataset("pathfinder", Knobs(resolution=32, contour_length=1), 4)
    with pytest.raises(ValueError, match="have no distance knob"):
        SuiteConfig(tasks=["pathfinder"], models=["static"], distances=[0.5, 1.0]).check()
    out = tmp_path / "p"
    assert main(["probe", "--tasks", "psvrt", "pathfinder", "--models", "static", "--steps", "1", "--batch-size",
                 "2", "--val-images", "2", "--width", "8", "--depth", "1", "--item-size", "3", "--contour-length",
                 "9", "--jobs", "0", "-o", str(out)]) == 0
    import json

    runs = json.loads((out / "probes.json").read_text())["runs"]
    assert {r["task"] for r in runs} == {"psvrt", "pathfinder"}
    assert all(r["item_size"] == 3 and r["contour_length"] == 9 for r in runs)
