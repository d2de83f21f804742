"""Reading generated images back in tests: connected components of a mask by plain flood fill."""
from __future__ import annotations

import numpy as np

_NEIGHBOURS = {
    4: [(1, 0), (-1, 0), (0, 1), (0, -1)],
    8: [(dr, dc) for dr in (-1, 0, 1) for dc in (-1, 0, 1) if dr or dc],
}


def components(mask: np.ndarray, connectivity: int = 4) -> tuple[np.ndarray, int]:
    """Component ids (0: background) of a boolean mask, 4- or 8-connected, and how many there are."""
    steps = _NEIGHBOURS[connectivity]
    labelled, count = np.zeros(mask.shape, dtype=int), 0
    for start in zip(*np.nonzero(mask), strict=True):
        if labelled[start]:
            continue
        count += 1
        stack = [start]
        while stack:
            r, c = stack.pop()
            if 0 <= r < mask.shape[0] and 0 <= c < mask.shape[1] and mask[r, c] and not labelled[r, c]:
                labelled[r, c] = count
                stack += [(r + dr, c + dc) for dr, dc in steps]
    return labelled, count
