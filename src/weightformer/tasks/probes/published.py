"""Published long-range benchmarks as probe tasks, generated from each paper's procedure.

- `psvrt`: the same-different (SD) problem of PSVRT, Kim, Ricci & Serre 2018, "Not-So-CLEVR: learning
  same-different relations strains feedforward neural networks" (Sec. 2, Fig. 2): two square patterns of
  item_size x item_size random bits at random non-overlapping positions on an empty image; label 1 iff the two
  patterns are identical.
- `pathfinder`: Linsley et al. 2018, "Learning long-range spatial dependencies with horizontal gated recurrent
  units" (Sec. 3, Fig. 2), the task of the Long Range Arena (Tay et al. 2021, Sec. 3.5): dashed contours made
  of short segments ("paddles") with bounded turning angles, two marker dots; label 1 iff both markers sit on
  the two ends of one contour.
- `same_different_random`: our `same_different` (two coloured squares, label = same colour) with the squares at
  uniformly random positions, so that no fixed-offset filter solves it.

psvrt and pathfinder place their parts at random, as the papers do, and have no distance knob (the suite
refuses a distance sweep for them); same_different_random reads `distance` as the least gap between the squares.

Each `draw_*` function returns the image and its metadata (positions, patterns, contours) for tests and
figures; the registered task functions return the image only. Images are (R, R, 3) float32 in [0, 1].
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .data import PALETTE, PROBE_TASKS, Knobs, _Canvas, _object_side

__all__ = ["draw_psvrt", "draw_pathfinder", "draw_same_different_random", "PATHFINDER_GEOMETRY", "NO_DISTANCE"]

# Tasks that place their parts at random, as their papers do, and so have no distance knob.
NO_DISTANCE = ("psvrt", "pathfinder")


#################################################################################
#                                   PSVRT                                       #
#################################################################################


def draw_psvrt(label: int, knobs: Knobs, rng: np.random.Generator) -> tuple[np.ndarray, dict[str, Any]]:
    """PSVRT's SD image: two item_size^2 bit patterns on a black image, label 1 iff they are bit-identical.

    The first pattern's bits are i.i.d. fair coins; for label 0 the second is a fresh pattern, redrawn while it
    equals the first (so each item's bits are the same distribution under both labels, up to that 2^-k^2
    conditioning). Positions: top-left corners uniform over the image, redrawn until the boxes do not overlap
    (touching allowed, as in the original's grid placement). Pixels are 0/1, grey replicated to 3 channels.
    """
    r, k = knobs.resolution, knobs.item_size
    first = rng.integers(0, 2, (k, k), dtype=np.uint8)
    second = first
    if not label:
        second = rng.integers(0, 2, (k, k), dtype=np.uint8)
        while np.array_equal(second, first):
            second = rng.integers(0, 2, (k, k), dtype=np.uint8)
    while True:
        corners = rng.integers(0, r - k + 1, (2, 2))  # (item, row/col)
        if np.abs(corners[0] - corners[1]).max() >= k:  # boxes disjoint
            break
    image = np.zeros((r, r), dtype=np.float32)
    for (row, col), pattern in zip(corners, (first, second), strict=True):
        image[row:row + k, col:col + k] = pattern
    meta = {"positions": [tuple(int(v) for v in c) for c in corners], "patterns": [first, second]}
    return np.repeat(image[:, :, None], 3, axis=2), meta


#################################################################################
#                                 Pathfinder                                    #
#################################################################################

# Geometry at 32 px; every length scales with resolution / 32 (Path-X: 128 px, 4x). The original draws at
# 300 px (paddle 5, gap 3, thickness 2, marker radius 5); LRA's Pathfinder-32 images are that task at 32 px.
PATHFINDER_GEOMETRY = {
    "paddle": 1.0,  # paddle length (px at 32)
    "gap": 0.5,  # gap between consecutive paddles (px at 32): below 1 px the dashes touch at 32 px
    "max_turn": math.pi / 5,  # turning angle between consecutive paddles, uniform in +-max_turn
    "marker_radius": 1.5,  # marker disc radius (px at 32)
    "clearance": 3.0,  # least distance between two contours' centre lines (px at 32)
    "seed_gap": 6.0,  # distance between the two target contours' first ends (the original's seed_distance)
}
_CANDIDATES = 8  # turns tried at once for each next paddle (the original retries a paddle a few times too)
_TRIES = 20  # contour starts tried before the whole image is redrawn


def _distance2(points: np.ndarray, others: np.ndarray) -> np.ndarray:
    """Least squared distance from each point set (K, S, 2) to `others` (M, 2): (K,), inf where M = 0."""
    if not len(others):
        return np.full(points.shape[0], np.inf)
    d2 = ((points[:, :, None, :] - others[None, None]) ** 2).sum(-1)  # (K, S, M)
    return d2.reshape(points.shape[0], -1).min(axis=1)


def _grow_contour(start: np.ndarray, paddles: int, taken: np.ndarray, ends_taken: np.ndarray, r: int, scale: float,
                  rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray] | None:
    """Grow a contour paddle by paddle from `start`: its paddles (P, 2, 2) and centre-line samples, or None.

    Each next paddle turns by an angle uniform in +-max_turn from the last; of `_CANDIDATES` such turns, the
    first that keeps the contour clear is taken (None when none does). Clear means: centre lines `clearance`
    from other contours' and from this contour's own paddles three or more back (no two contours' pixels touch,
    even 8-connected, and no loop touches itself); this contour's ends far enough from other contours, and
    other contours' ends far enough from this one, that a marker disc at any end touches only its own contour;
    everything inside the image less a border that fits a marker.
    """
    g = PATHFINDER_GEOMETRY
    clear2 = (g["clearance"] * scale) ** 2
    end_clear2 = (g["marker_radius"] * scale + 3.6) ** 2  # marker pixels (r + 0.71) plus two 8-adjacent pixels
    border = g["marker_radius"] * scale + 1.0
    length, step = g["paddle"] * scale, (g["paddle"] + g["gap"]) * scale
    t = np.linspace(0.0, 1.0, max(3, math.ceil(length / 0.4) + 1))[None, :, None]  # <= 0.4 px apart: no holes
    if _distance2(start[None, None], taken)[0] < end_clear2:
        return None
    position, heading = start, rng.uniform(-math.pi, math.pi)
    ends, points = [], []  # per paddle: (2, 2) start and end; (S, 2) samples
    for k in range(paddles):
        turns = rng.uniform(-g["max_turn"], g["max_turn"], _CANDIDATES) if k else rng.uniform(-math.pi, math.pi, 1)
        headings = heading + turns  # (K,)
        unit = np.stack([np.sin(headings), np.cos(headings)], axis=1)  # (K, 2)
        samples = position + t * (unit * length)[:, None]  # (K, S, 2)
        ok = (samples.min(axis=(1, 2)) >= border) & (samples.max(axis=(1, 2)) <= r - border)
        ok &= _distance2(samples, taken) >= clear2
        ok &= _distance2(samples, ends_taken) >= end_clear2
        if k >= 3:
            ok &= _distance2(samples, np.concatenate(points[:k - 2])) >= clear2
        if k == paddles - 1:
            ok &= _distance2(samples[:, -1:], taken) >= end_clear2
        if not ok.any():
            return None
        choice = int(np.argmax(ok))
        heading = float(headings[choice])
        ends.append(np.stack([position, samples[choice, -1]]))
        points.append(samples[choice])
        position = position + unit[choice] * step
    return np.stack(ends), np.concatenate(points)


def _place_contour(paddles: int, taken: np.ndarray, ends_taken: np.ndarray, r: int, scale: float,
                   rng: np.random.Generator, near: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray] | None:
    """A clear contour from a uniform start (or one `seed_gap` from `near`), up to `_TRIES` starts; or None."""
    border = PATHFINDER_GEOMETRY["marker_radius"] * scale + 1.0
    for _ in range(_TRIES):
        if near is None:
            start = rng.uniform(border, r - border, 2)
        else:
            angle = rng.uniform(-math.pi, math.pi)
            start = near + PATHFINDER_GEOMETRY["seed_gap"] * scale * np.array([math.sin(angle), math.cos(angle)])
        placed = _grow_contour(start, paddles, taken, ends_taken, r, scale, rng)
        if placed is not None:
            return placed
    return None


def _stamp(image: np.ndarray, points: np.ndarray, width: int) -> None:
    """Set the pixels under `points` (n, 2) to 1, each point a width x width square (plain, aliased lines)."""
    cells = np.floor(points).astype(int)  # (n, 2)
    if width > 1:
        offsets = np.stack(np.meshgrid(np.arange(width), np.arange(width), indexing="ij"), -1).reshape(-1, 2)
        cells = (cells[:, None] + offsets[None] - (width - 1) // 2).reshape(-1, 2)
    cells = np.clip(cells, 0, image.shape[0] - 1)
    image[cells[:, 0], cells[:, 1]] = 1.0


def draw_pathfinder(label: int, knobs: Knobs, rng: np.random.Generator) -> tuple[np.ndarray, dict[str, Any]]:
    """A Pathfinder image: two target contours of `contour_length` paddles, `distractors` short contours of
    contour_length // 3 paddles (at least 2), and two markers; label 1 iff the markers end the same contour.

    As in Linsley et al.'s generator, both labels draw the same two full-length contours, the second starting
    `seed_gap` from the first; the first marker sits on the first contour's start, the second marker on the
    first contour's far end (label 1) or on the second contour's far end (label 0). Contour count, length and
    ink are then the same under both labels, and the markers' distance is distributed alike. Contours never
    touch (see `_place_contour`); a marker touches only its own contour. White (1) on black, 3 channels.
    """
    r, n = knobs.resolution, knobs.contour_length
    scale = r / 32
    width = max(1, round(scale))
    short = max(2, n // 3)
    for _ in range(50):  # redraw the whole image when a contour finds no room
        contours: list[np.ndarray] = []
        taken, ends_taken = np.zeros((0, 2)), np.zeros((0, 2))
        for i in range(2 + knobs.distractors):
            near = contours[0][0, 0] if i == 1 else None  # the second target starts seed_gap from the first
            placed = _place_contour(n if i < 2 else short, taken, ends_taken, r, scale, rng, near)
            if placed is None:
                break
            paddle_ends, points = placed
            contours.append(paddle_ends)
            taken = np.concatenate([taken, points])
            ends_taken = np.concatenate([ends_taken, paddle_ends[[0, -1], [0, 1]]])
        else:
            break
    else:
        raise ValueError(f"pathfinder: no room for 2 contours of {n} and {knobs.distractors} of {short} paddles "
                         f"at {r} px; lower contour_length or distractors.")
    image = np.zeros((r, r), dtype=np.float32)
    for paddle_ends in contours:
        t = np.linspace(0.0, 1.0, max(3, math.ceil(PATHFINDER_GEOMETRY["paddle"] * scale / 0.4) + 1))
        points = paddle_ends[:, :1] + t[None, :, None] * (paddle_ends[:, 1:] - paddle_ends[:, :1])
        _stamp(image, points.reshape(-1, 2), width)
    markers = np.stack([contours[0][0, 0], contours[0 if label else 1][-1, 1]])  # (2, 2)
    radius = PATHFINDER_GEOMETRY["marker_radius"] * scale
    yy, xx = np.mgrid[:r, :r] + 0.5
    for row, col in markers:
        image[(yy - row) ** 2 + (xx - col) ** 2 <= radius**2] = 1.0
    meta = {"contours": contours, "markers": markers, "marker_radius": radius}
    return np.repeat(image[:, :, None], 3, axis=2), meta


#################################################################################
#                          same_different, random places                        #
#################################################################################


def _gap_pair(span: int, least: int, rng: np.random.Generator) -> tuple[int, int]:
    """Two positions in 0..span at least `least` apart, uniform over all such ordered pairs."""
    gaps = np.arange(least, span + 1)
    weights = (span + 1 - gaps).astype(float)  # pairs with |a - b| = d: span + 1 - d per order
    d = int(rng.choice(gaps, p=weights / weights.sum()))
    a = int(rng.integers(0, span - d + 1))
    return (a, a + d) if rng.random() < 0.5 else (a + d, a)


def draw_same_different_random(label: int, knobs: Knobs,
                               rng: np.random.Generator) -> tuple[np.ndarray, dict[str, Any]]:
    """Two coloured squares at uniformly random non-overlapping positions: label 1 iff they have the same colour.

    `distance` is the least centre gap, along the farther axis (Chebyshev), as a fraction of the largest that
    fits: the pair of corners is uniform over all pairs with max(|d_row|, |d_col|) >= max(distance x (R - side),
    side + 1). distance 0: anywhere, touching excepted; distance 1: opposite edges. Colours as `same_different`.
    """
    canvas, side = _Canvas(knobs.resolution, rng), _object_side(knobs)
    span = canvas.r - side
    least = min(span, max(math.ceil(knobs.distance * span), side + 1))
    while True:  # propose a pair far apart along one random axis; uniform over the union of the two axes' sets
        far, near = _gap_pair(span, least, rng), tuple(int(v) for v in rng.integers(0, span + 1, 2))
        rows, cols = (far, near) if rng.random() < 0.5 else (near, far)
        both = abs(rows[0] - rows[1]) >= least and abs(cols[0] - cols[1]) >= least
        if not both or rng.random() < 0.5:  # a pair far along both axes is proposed twice as often
            break
    first = int(rng.integers(knobs.colours))
    second = first if label else (first + int(rng.integers(1, knobs.colours))) % knobs.colours
    corners = list(zip(rows, cols, strict=True))
    for (row, col), colour in zip(corners, (first, second), strict=True):
        canvas.draw(row, col, side, PALETTE[colour])
    canvas.distractors(knobs.distractors, side)
    return canvas.image, {"corners": corners, "colours": (first, second), "side": side}


def _image_only(draw):
    def task(label: int, knobs: Knobs, rng: np.random.Generator) -> np.ndarray:
        return draw(label, knobs, rng)[0]

    task.__doc__ = draw.__doc__
    return task


PROBE_TASKS.update({
    "psvrt": _image_only(draw_psvrt),
    "pathfinder": _image_only(draw_pathfinder),
    "same_different_random": _image_only(draw_same_different_random),
})
