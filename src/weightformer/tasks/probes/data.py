"""Generated long-range probes: binary labels that only a relation between distant parts of the image decides.

Every task draws two far-apart *parts* (two squares, a cue and a target, the two sides of the image) whose
label is an XOR-like relation of the two, with each part's own distribution the same under both labels (the
colour of one square, the count on one side, the cue alone say nothing). Labels alternate with the index, so
every split is exactly balanced: chance is 50 %.

What a model that cannot relate the parts can reach: when no window of a network sees both parts, its logit
is a sum of one term per part plus terms that do not depend on the label (the head is linear in the mean of
per-window features). Every label here is "the two parts' attributes a and b are equal" (colours, counts) or
a XOR b (cue, shape), with the pairs distributed so that they split into 2 x 2 squares {a, b} x {a, b} of four
equally likely cells, two of each label (for equality over P values: each equal cell lies in P - 1 squares, each
unequal cell in one, and the masses 1/(2P) and 1/(2P(P - 1)) make every cell's share 1/(2P(P - 1))). A
threshold on f(a) + g(b) is wrong on at least one cell of each such XOR square, so **75 % is the ceiling of a
purely local model** on every task here, and accuracy above it shows that distant parts were related. The
distance knob keeps the parts beyond a static network's receptive field (`static_receptive_field`).

Images are generated on the fly from (seed, split, index): deterministic, nothing written to disk, and a
training split as long as the step budget needs, so no image is seen twice.

Knobs (all tasks): resolution (pixels per side), distance (centre-to-centre gap between the two parts as a
fraction of the largest gap that fits, 0-1), size (object side as a fraction of the image side) and
distractors (extra grey objects that carry no information); colours (same_different's palette size);
item_size (psvrt) and contour_length (pathfinder).

Benchmarks: published.py adds three tasks generated from published procedures: `psvrt` (the same-different
problem of Kim, Ricci & Serre 2018), `pathfinder` (Linsley et al. 2018, as used by the Long Range Arena, Tay et
al. 2021) and `same_different_random` (same_different with the squares at random places, so that no
fixed-offset filter solves it). Their labels are relations of two parts as above, but the parts' positions
vary and can fall within one window, so the 75 % ceiling above holds only for the images whose parts are
farther apart than the receptive field; published.py states what distance means for each.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch.utils.data import Dataset

__all__ = ["Knobs", "PROBE_TASKS", "ProbeDataset", "render", "static_receptive_field", "PALETTE"]

# Six saturated colours for the objects that matter; distractors are grey, which no object ever is.
PALETTE = np.array([(0.95, 0.15, 0.15), (0.15, 0.85, 0.2), (0.2, 0.35, 0.95), (0.95, 0.9, 0.15),
                    (0.9, 0.2, 0.9), (0.15, 0.9, 0.9)], dtype=np.float32)
_SPLITS = {"train": 0, "val": 1}


@dataclass(frozen=True)
class Knobs:
    """The difficulty of a probe image."""

    resolution: int = 64  # pixels per side
    distance: float = 0.9  # gap between the two parts' centres, as a fraction of the largest that fits
    size: float = 1 / 12  # object side over image side
    distractors: int = 0  # uninformative grey objects
    colours: int = 6  # palette size of same_different (2-6); fewer colours: the same relation, easier to see
    item_size: int = 4  # psvrt: side of each bit pattern in pixels
    contour_length: int = 6  # pathfinder: paddles per target contour (LRA: 6, 9, 14)

    def check(self, task: str | None = None) -> None:
        """Raise a one-line ValueError for a knob out of range (for `task`, where a task needs more)."""
        if self.resolution < 16:
            raise ValueError(f"resolution must be at least 16 pixels, got {self.resolution}.")
        if not 0.0 <= self.distance <= 1.0:
            raise ValueError(f"distance must be within [0, 1] (a fraction of the largest gap), got {self.distance}.")
        if not 0.0 < self.size <= 0.25:
            raise ValueError(f"size must be within (0, 0.25] of the image side, got {self.size}.")
        if self.distractors < 0:
            raise ValueError(f"distractors must be >= 0, got {self.distractors}.")
        if not 2 <= self.colours <= len(PALETTE):
            raise ValueError(f"colours must be within [2, {len(PALETTE)}], got {self.colours}.")
        if not 1 <= self.item_size <= self.resolution // 2:
            raise ValueError(f"item_size must be within [1, resolution / 2], got {self.item_size}.")
        if not 2 <= self.contour_length <= 40:
            raise ValueError(f"contour_length must be within [2, 40] paddles, got {self.contour_length}.")
        if task == "pathfinder" and self.resolution < 32:
            raise ValueError(f"pathfinder needs resolution >= 32 (its geometry is set at 32 px), "
                             f"got {self.resolution}.")

    def as_dict(self) -> dict:
        return asdict(self)


def static_receptive_field(patch: int, depth: int, kernel: int = 3) -> int:
    """Pixels a static WeightFormer token sees along one axis: the patch plus (k - 1) tokens per block."""
    return patch * (1 + (kernel - 1) * depth)


#################################################################################
#                                 Drawing                                       #
#################################################################################


class _Canvas:
    """An (R, R, 3) image in [0, 1] on a noisy grey background, and the boxes already taken."""

    def __init__(self, resolution: int, rng: np.random.Generator) -> None:
        self.r, self.rng = resolution, rng
        level = rng.uniform(0.05, 0.3)
        self.image = np.clip(level + rng.normal(0.0, 0.03, (resolution, resolution, 3)), 0, 1).astype(np.float32)
        self.boxes: list[tuple[int, int, int]] = []  # (row, col, side) of every object

    def free(self, row: int, col: int, side: int) -> bool:
        """No overlap (with a one-pixel margin) with any object drawn so far."""
        return all(row + side + 1 <= r or r + s + 1 <= row or col + side + 1 <= c or c + s + 1 <= col
                   for r, c, s in self.boxes)

    def draw(self, row: int, col: int, side: int, colour: np.ndarray, shape: str = "square") -> None:
        """A filled square or disc with top-left corner (row, col)."""
        patch = self.image[row:row + side, col:col + side]
        if shape == "square":
            patch[:] = colour
        else:
            yy, xx = np.mgrid[:side, :side] + 0.5
            inside = (yy - side / 2) ** 2 + (xx - side / 2) ** 2 <= (side / 2) ** 2
            patch[inside] = colour
        self.boxes.append((row, col, side))

    def place_free(self, side: int, colour: np.ndarray, shape: str = "square", rows: tuple[int, int] | None = None,
                   cols: tuple[int, int] | None = None, tries: int = 200) -> bool:
        """Draw at a random free position with the top-left corner in rows x cols; False if none was found."""
        rows = rows or (0, self.r - side)
        cols = cols or (0, self.r - side)
        for _ in range(tries):
            row, col = int(self.rng.integers(rows[0], rows[1] + 1)), int(self.rng.integers(cols[0], cols[1] + 1))
            if self.free(row, col, side):
                self.draw(row, col, side, colour, shape)
                return True
        return False

    def distractors(self, count: int, side: int) -> None:
        for _ in range(count):
            grey = np.full(3, self.rng.uniform(0.45, 0.7), dtype=np.float32)
            self.place_free(side, grey, "square" if self.rng.random() < 0.5 else "disc")


def _object_side(knobs: Knobs) -> int:
    return max(2, round(knobs.size * knobs.resolution))


def _two_far_corners(canvas: _Canvas, side: int, distance: float) -> tuple[tuple[int, int], tuple[int, int]]:
    """Top-left corners of two objects `distance` x (the largest gap) apart along a random axis, random order."""
    span = canvas.r - side  # corner positions 0 .. span
    gap = round(distance * span)
    a = int(canvas.rng.integers(0, span - gap + 1))
    along = (a, a + gap) if canvas.rng.random() < 0.5 else (a + gap, a)
    across = tuple(int(canvas.rng.integers(0, span + 1)) for _ in range(2))
    if canvas.rng.random() < 0.5:  # horizontal pair
        return (across[0], along[0]), (across[1], along[1])
    return (along[0], across[0]), (along[1], across[1])


#################################################################################
#                                   Tasks                                       #
#################################################################################


def _same_different(label: int, knobs: Knobs, rng: np.random.Generator) -> np.ndarray:
    """Two coloured squares far apart: label 1 iff they have the same colour (of the first `colours` of PALETTE).

    Same: one colour drawn uniformly. Different: the first uniformly, the second uniformly among the others. Each
    square's colour is then uniform under both labels: one square alone says nothing.
    """
    canvas, side = _Canvas(knobs.resolution, rng), _object_side(knobs)
    first = int(rng.integers(knobs.colours))
    second = first if label else (first + int(rng.integers(1, knobs.colours))) % knobs.colours
    for (row, col), colour in zip(_two_far_corners(canvas, side, knobs.distance), (first, second), strict=True):
        canvas.draw(row, col, side, PALETTE[colour])
    canvas.distractors(knobs.distractors, side)
    return canvas.image


def _context(label: int, knobs: Knobs, rng: np.random.Generator) -> np.ndarray:
    """A small cue and a target far apart: label = (cue is red) XOR (target is a disc).

    The target is a square or a disc; the cue, a smaller square at the other end, says which shape is the
    positive class. Cue colour and target shape are each uniform under both labels.
    """
    canvas, side = _Canvas(knobs.resolution, rng), _object_side(knobs)
    cue_red = bool(rng.integers(2))
    disc = cue_red != bool(label)  # label = cue_red XOR disc
    (cue_row, cue_col), (row, col) = _two_far_corners(canvas, side, knobs.distance)
    cue_side = max(2, side // 2)
    canvas.draw(cue_row, cue_col, cue_side, PALETTE[0] if cue_red else PALETTE[1])
    canvas.boxes[-1] = (cue_row, cue_col, side)  # keep the cue's whole slot free of distractors
    canvas.draw(row, col, side, PALETTE[2], "disc" if disc else "square")
    canvas.distractors(knobs.distractors, side)
    return canvas.image


def _count(label: int, knobs: Knobs, rng: np.random.Generator) -> np.ndarray:
    """1-3 white objects in a band at each end of the image: label 1 iff both bands hold as many.

    The bands lie along a random axis, `distance` apart; each band's count is uniform under both labels.
    Distractors (grey) go in the middle and are not counted.
    """
    canvas, side = _Canvas(knobs.resolution, rng), _object_side(knobs)
    first = int(rng.integers(1, 4))
    second = first if label else int(rng.choice([n for n in (1, 2, 3) if n != first]))
    span = canvas.r - side
    band = max(side + 1, round((1 - knobs.distance) * span / 2))  # corners of band objects: 0 .. band
    band = min(band, span // 2)
    horizontal = rng.random() < 0.5
    for count, (lo, hi) in zip((first, second), ((0, band), (span - band, span)), strict=True):
        for _ in range(count):
            colour = np.full(3, rng.uniform(0.85, 1.0), dtype=np.float32)
            shape = "square" if rng.random() < 0.5 else "disc"
            placed = (canvas.place_free(side, colour, shape, cols=(lo, hi)) if horizontal
                      else canvas.place_free(side, colour, shape, rows=(lo, hi)))
            if not placed:
                raise ValueError(f"count: no room for {count} objects of {side} px in a band of {hi - lo + side} px; "
                                 "lower the distance or the size.")
    canvas.distractors(knobs.distractors, side)
    return canvas.image


PROBE_TASKS: dict[str, Callable[[int, Knobs, np.random.Generator], np.ndarray]] = {
    "same_different": _same_different,
    "context": _context,
    "count": _count,
}


def render(task: str, label: int, knobs: Knobs, rng: np.random.Generator) -> np.ndarray:
    """One image (R, R, 3) in [0, 1] of `task` with binary `label`."""
    if task not in PROBE_TASKS:
        raise ValueError(f"Unknown probe task {task!r}; choose from {', '.join(PROBE_TASKS)}.")
    return PROBE_TASKS[task](label, knobs, rng)


class ProbeDataset(Dataset):
    """`length` images of a probe task, image i drawn from (seed, split, i); label i % 2.

    Items are (image (3, R, R) float32, normalised to mean 0 and std ~0.5 per channel, label), the samples
    `collate_images` of the classification task stacks.
    """

    def __init__(self, task: str, knobs: Knobs, length: int, seed: int = 0, split: str = "train") -> None:
        if task not in PROBE_TASKS:
            raise ValueError(f"Unknown probe task {task!r}; choose from {', '.join(PROBE_TASKS)}.")
        knobs.check(task)
        self.task, self.knobs, self.length, self.seed, self.split = task, knobs, length, seed, _SPLITS[split]

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, item: int | tuple[int, int]) -> tuple[torch.Tensor, int]:
        index = item[0] if isinstance(item, tuple) else item  # the engine's sampler yields (index, sample seed)
        label = index % 2
        rng = np.random.default_rng([self.seed, self.split, index])
        image = render(self.task, label, self.knobs, rng)
        return torch.from_numpy((image - 0.5) * 2).permute(2, 0, 1).contiguous(), label
