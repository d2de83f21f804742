"""Shape-only judge of a pixel-space generation run: does a guided sample show its class's *shape*?

The embedded generation default's classes differ in colour as well as shape, and its judge (a classifier trained
on the real images, `tasks/generation/judge.py`) may use the colour. Here every image, real or generated, is
turned to grey and min-max stretched to 0..255 before the classifier sees it, so neither hue nor brightness is
left: only shape. The judge is trained on the stretched real images, then scores the run's guided samples.

    python benchmarks/shape_judge.py RUN/checkpoints/last.pth DATA_DIR WORK_DIR

DATA_DIR: the run's image folder (train/ and val/ of class folders); WORK_DIR receives the stretched copy and
the judge's run. Prints the judge's dict: accuracy (%), classifier-feature FID, floor and untrained figures.
"""
import sys
from pathlib import Path

import numpy as np
from PIL import Image

import weightformer.tasks.generation.judge as judge


def shape_only(images: np.ndarray) -> np.ndarray:
    """(N, H, W, 3) uint8 -> the same shape, grey and stretched to 0..255 per image."""
    gray = images.astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    lo, hi = gray.min(axis=(1, 2), keepdims=True), gray.max(axis=(1, 2), keepdims=True)
    stretched = (255 * (gray - lo) / np.maximum(hi - lo, 1e-6)).round().astype(np.uint8)
    return np.repeat(stretched[..., None], 3, axis=-1)


def main(checkpoint: Path, data_dir: Path, work_dir: Path) -> None:
    stretched_dir = work_dir / "data"
    if not stretched_dir.exists():
        for path in data_dir.rglob("*.png"):
            out = stretched_dir / path.relative_to(data_dir)
            out.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(shape_only(np.asarray(Image.open(path).convert("RGB"))[None])[0]).save(out)
    size = Image.open(next(data_dir.rglob("*.png"))).size[0]
    classifier = judge.train_judge(stretched_dir, size, work_dir / "judge")
    plain_scorer = judge.classifier_scorer

    def stretched_scorer(path):
        score = plain_scorer(path)
        return lambda images: score(shape_only(np.asarray(images)))

    judge.classifier_scorer = stretched_scorer  # the samples are stretched like the real images
    print(judge.judge_run(checkpoint, stretched_dir, classifier))


if __name__ == "__main__":
    main(*(Path(a) for a in sys.argv[1:4]))
