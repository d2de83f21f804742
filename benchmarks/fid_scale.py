"""Inputs of the FID-50K and sampling-at-scale measurements of benchmarks/SCALE.md, made without a download.

    python benchmarks/fid_scale.py images OUT.npz --count 50000 --size 256 [--seed 0]
        synthetic images (8 x 8 colour blocks under a noise texture) streamed into an ADM-layout npz (arr_0 uint8
        NHWC, arr_1 labels), 500 at a time: 9.8 GB for 50,000 at 256², never in memory
    python benchmarks/fid_scale.py inception-weights TORCH_HOME
        torch-fidelity's Inception-v3 with random weights, saved where `dit fid` looks for the real ones (the
        real weights are not on this machine; timing and memory are the network's, not its weights')
    python benchmarks/fid_scale.py dit-checkpoint OUT.pth --image-size 64
        a tiny randomly initialised WeightFormer-DiT checkpoint (as `dit train` writes it) for `dit sample`
    python benchmarks/fid_scale.py pipeline SAMPLES REFERENCE
        `dit fid`'s whole pipeline (streaming statistics, 2048-d covariances, sFID's 2023-d, IS over 1008
        classes, precision/recall of every sample against 10,000 reference images) with a cheap stand-in for
        Inception of Inception's dimensions: the pipeline's memory at FID-50K scale without an hour of Inception
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch


def make_images(path: str, count: int, size: int, seed: int, chunk: int = 500) -> None:
    from weightformer.tasks.generation.images import NpzWriter

    rng = np.random.default_rng(seed)
    texture = rng.integers(-24, 24, (size, size, 3), dtype=np.int16)  # one noise tile, rolled per chunk
    labels = np.arange(count) % 1000
    with NpzWriter(path, count, (size, size, 3)) as out:
        for start in range(0, count, chunk):
            n = min(chunk, count - start)
            blocks = rng.integers(0, 256, (n, 8, 8, 3), dtype=np.int16)
            images = np.repeat(np.repeat(blocks, size // 8, axis=1), size // 8, axis=2)
            images += np.roll(texture, start % size, axis=0)
            out.write(np.clip(images, 0, 255).astype(np.uint8))
        out.put("arr_1", labels)


def inception_weights(torch_home: str) -> Path:
    """He-normal convolutions, identity batch norms (tests/test_generation_metrics.py does the same)."""
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    from weightformer.tasks.generation.metrics import INCEPTION_WEIGHTS

    path = Path(torch_home) / "hub" / "checkpoints" / INCEPTION_WEIGHTS
    path.parent.mkdir(parents=True, exist_ok=True)
    original = FeatureExtractorInceptionV3.load_state_dict
    FeatureExtractorInceptionV3.load_state_dict = lambda self, *a, **k: None  # build without loading weights
    torch.save({}, path.parent / "none.pth")
    state = FeatureExtractorInceptionV3("inception-v3-compat", ["2048"],
                                        feature_extractor_weights_path=str(path.parent / "none.pth")).state_dict()
    FeatureExtractorInceptionV3.load_state_dict = original
    generator = torch.Generator().manual_seed(0)
    for name, value in state.items():
        if not value.dtype.is_floating_point:
            continue
        if name.endswith("running_var") or (name.endswith("weight") and value.ndim == 1):
            value.fill_(1.0)
        elif value.ndim == 1:
            value.zero_()
        else:
            value.copy_(torch.randn(value.shape, generator=generator) * (2.0 / value[0].numel()) ** 0.5)
    torch.save(state, path)
    return path


def dit_checkpoint(path: str, image_size: int) -> None:
    from weightformer.models import create_model

    torch.manual_seed(0)
    kwargs = dict(hidden_size=16, depth=2, mlp_ratio=2.0)
    model = create_model("weightformer_dit_s_2", input_size=image_size, in_channels=3, num_classes=10, **kwargs)
    for p in model.parameters():
        if p.abs().sum() == 0:
            torch.nn.init.normal_(p, std=0.1)
    config = dict(model="weightformer_dit_s_2", model_kwargs=kwargs, image_size=image_size, vae=None)
    ema = {f"module.{k}": v for k, v in model.state_dict().items()}
    torch.save(dict(model=model.state_dict(), ema=ema, config=config, task="generation", epoch=1, optimizer={},
                    class_names=[f"c{i}" for i in range(10)]), path)


def inception_sized_extractor():
    """A stand-in with Inception's outputs (pool 2048, spatial 2023, probs 1008) computed from a 16 x 16 thumbnail
    by fixed random projections: what `dit fid` does with them is what it does with Inception's."""
    from weightformer.tasks.generation.metrics import Extractor

    rng = np.random.default_rng(0)
    weights = {"pool": rng.normal(size=(768, 2048)) / 28, "spatial": rng.normal(size=(768, 2023)) / 28,
               "probs": rng.normal(size=(2048, 1008)) / 45}

    def run(images: np.ndarray) -> dict[str, np.ndarray]:
        side = images.shape[1] // 16
        thumb = images[:, ::side, ::side][:, :16, :16].reshape(len(images), -1) / 255.0
        pool = np.maximum(thumb @ weights["pool"], 0)
        logits = pool @ weights["probs"]
        probs = np.exp(logits - logits.max(1, keepdims=True))
        return {"pool": pool, "spatial": np.maximum(thumb @ weights["spatial"], 0),
                "probs": probs / probs.sum(1, keepdims=True)}

    return Extractor("inception-sized-stand-in", "Inception-sized stand-in",
                     {"pool": 2048, "spatial": 2023, "probs": 1008}, run, 64)


def pipeline(samples: str, reference: str) -> None:
    from weightformer.tasks.generation.scores import score_sets

    extractor = inception_sized_extractor()
    stats = Path(samples).with_name("stand-in-stats.npz")
    start = time.perf_counter()
    score_sets(None, reference, extractor, save=stats)
    middle = time.perf_counter()
    result = score_sets(samples, stats, extractor)
    result["reference_seconds"], result["samples_seconds"] = middle - start, time.perf_counter() - middle
    print(json.dumps(result))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("images")
    p.add_argument("path")
    p.add_argument("--count", type=int, default=50_000)
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    sub.add_parser("inception-weights").add_argument("torch_home")
    p = sub.add_parser("dit-checkpoint")
    p.add_argument("path")
    p.add_argument("--image-size", type=int, default=64)
    p = sub.add_parser("pipeline")
    p.add_argument("samples")
    p.add_argument("reference")
    args = parser.parse_args()
    if args.command == "images":
        make_images(args.path, args.count, args.size, args.seed)
    elif args.command == "inception-weights":
        print(inception_weights(args.torch_home))
    elif args.command == "dit-checkpoint":
        dit_checkpoint(args.path, args.image_size)
    else:
        pipeline(args.samples, args.reference)


if __name__ == "__main__":
    main()
