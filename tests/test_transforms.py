"""pretrained_cfg reproduces the release's evaluation transform (its data/build.py), on images of any aspect ratio."""
from __future__ import annotations

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from torchvision import transforms as T

import weightformer  # noqa: F401  (registers the models with timm)


def _release_eval_transform(size: int) -> T.Compose:
    """The release's data/build.py: a square resize to floor(size * 256 / 224), aspect ratio not kept."""
    resized = int(size * 256 / 224)
    return T.Compose([
        T.Resize((resized, resized), interpolation=T.InterpolationMode.BICUBIC),
        T.CenterCrop(size),
        T.ToTensor(),
        T.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    ])


def _image(height: int, width: int) -> Image.Image:
    rng = np.random.default_rng(height * 1000 + width)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


@pytest.mark.parametrize("name,size", [("weightformer_tiny", 224), ("weightformer_base", 448)])
@pytest.mark.parametrize("image_hw", [(300, 500), (517, 211)])
def test_timm_transform_from_pretrained_cfg_equals_the_release_transform(name, size, image_hw):
    with torch.device("meta"):
        model = timm.create_model(name)
    config = timm.data.resolve_data_config({}, model=model)
    assert config["input_size"] == (3, size, size) and config["crop_mode"] == "squash"
    ours = timm.data.create_transform(**config)
    image = _image(*image_hw)
    expected = _release_eval_transform(size)(image)
    torch.testing.assert_close(ours(image), expected, rtol=0, atol=0)
    # A transform that keeps the aspect ratio (timm's default "center") sees a different crop of this image.
    keep_aspect = timm.data.create_transform(**{**config, "crop_mode": "center"})
    assert not torch.allclose(keep_aspect(image), expected)


@pytest.mark.parametrize("auto_augment", ["rand-m9-mstd0.5-inc1", "original"])
def test_training_posterize_at_zero_bits_gives_black_instead_of_raising(auto_augment):
    """The recipes' RandAugment reaches 0 posterize bits at magnitudes >= ~9.5; Pillow 13 refuses 0 bits."""
    from timm.data.auto_augment import AugmentOp

    from weightformer.tasks.classification.config import ClassificationConfig
    from weightformer.tasks.classification.data import train_transform

    transform = train_transform(ClassificationConfig(img_size=32, auto_augment=auto_augment))
    found = []

    def collect(t):
        for inner in getattr(t, "transforms", None) or []:
            ops = getattr(inner, "ops", None) or [op for sub in getattr(inner, "policy", []) for op in sub]
            found.extend(op for op in ops if isinstance(op, AugmentOp) and "Posterize" in op.name)
            collect(inner)

    collect(transform)
    assert found, "no posterize op in the recipe's transform"
    op = found[0]
    image = _image(20, 24)
    zero_bits = (0,)
    assert op.aug_fn(image, *zero_bits).getextrema() == ((0, 0),) * 3  # Pillow < 13's result: every bit masked
    four = op.aug_fn(image, 4)
    assert np.array_equal(np.asarray(four), np.asarray(image) & 0xF0)
    assert op.aug_fn(image, 8) is image
