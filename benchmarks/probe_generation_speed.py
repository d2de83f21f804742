"""Images per second of each probe generator, single process (is generation the bottleneck of training?).

    PYTHONPATH=src python benchmarks/probe_generation_speed.py --images 200 --out benchmarks/probe_generation_speed.json
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from weightformer.tasks.probes import Knobs, render

SETTINGS = [
    ("psvrt", Knobs(resolution=32)), ("psvrt", Knobs(resolution=64)),
    ("pathfinder", Knobs(resolution=32, contour_length=6)), ("pathfinder", Knobs(resolution=32, contour_length=9)),
    ("pathfinder", Knobs(resolution=32, contour_length=14)),
    ("pathfinder", Knobs(resolution=32, contour_length=6, distractors=3)),
    ("pathfinder", Knobs(resolution=128, contour_length=14)),
    ("same_different_random", Knobs(resolution=32, distance=1.0)),
    ("same_different_random", Knobs(resolution=64, distance=0.0)),
    ("same_different", Knobs(resolution=64)),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=200, help="images per setting (default 200)")
    parser.add_argument("--out", default=None, help="JSON file for the rows")
    args = parser.parse_args()
    rows = []
    print("| task | res | contour_length | distractors | distance | img/s |\n|---|---|---|---|---|---|")
    for task, knobs in SETTINGS:
        start = time.perf_counter()
        for i in range(args.images):
            render(task, i % 2, knobs, np.random.default_rng([0, 0, i]))
        rate = args.images / (time.perf_counter() - start)
        rows.append({"task": task, **knobs.as_dict(), "images_per_second": rate})
        print(f"| {task} | {knobs.resolution} | {knobs.contour_length} | {knobs.distractors} | {knobs.distance:g} | "
              f"{rate:.0f} |")
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"images": args.images, "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
