"""Semantic segmentation: metrics against hand counts, ADE20K-layout data and its bad inputs, sliding inference,
and the task on the training engine."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn as nn
from PIL import Image

from weightformer.cli.main import main
from weightformer.engine.data import Unreadable
from weightformer.tasks import load_config
from weightformer.tasks.segmentation import confusion_matrix, infer, scores, train
from weightformer.tasks.segmentation.data import IGNORE_INDEX, SegmentationFolder, find_pairs
from weightformer.tasks.segmentation.synthetic import make_segmentation_dataset


def test_scores_match_a_hand_count():
    label = torch.tensor([[0, 0, 1, 1], [2, 2, IGNORE_INDEX, 1]])
    pred = torch.tensor([[0, 1, 1, 1], [2, 0, 2, 1]])
    confusion = confusion_matrix(pred, label, num_classes=3)
    # class 0: tp 1, label 2, predicted 2 -> IoU 1/3; class 1: tp 3, label 3, pred 4 -> 3/4; class 2: 1/(2+1-1) = 1/2
    assert confusion.tolist() == [[1, 1, 0], [0, 3, 0], [1, 0, 1]]
    result = scores(confusion)
    assert result["miou"] == pytest.approx(100 * (1 / 3 + 3 / 4 + 1 / 2) / 3)
    assert result["aacc"] == pytest.approx(100 * 5 / 7)  # the ignored pixel counts nowhere
    assert result["macc"] == pytest.approx(100 * (1 / 2 + 1 + 1 / 2) / 3)


def _write_pair(root, split, stem, label, size=(8, 6)):
    (root / "images" / split).mkdir(parents=True, exist_ok=True)
    (root / "annotations" / split).mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (10, 20, 30)).save(root / "images" / split / f"{stem}.jpg")
    if label is not None:
        Image.fromarray(label.astype(np.uint8)).save(root / "annotations" / split / f"{stem}.png")


def test_ade20k_layout_with_missing_labels_unknown_ids_and_zero_reduction(tmp_path):
    good = np.zeros((6, 8), np.int64)
    good[:, 4:] = 3
    _write_pair(tmp_path, "training", "a", good)
    _write_pair(tmp_path, "training", "b", None)  # no label map
    _write_pair(tmp_path, "training", "c", np.full((6, 8), 7))  # ids beyond the classes
    _write_pair(tmp_path, "training", "d", np.zeros((5, 8)))  # label map of another size
    pairs, unlabelled = find_pairs(tmp_path, "training")
    assert [p[0].stem for p in pairs] == ["a", "c", "d"] and unlabelled == [str(tmp_path / "images/training/b.jpg")]
    data = SegmentationFolder(pairs, num_classes=3, train=False, scale=(8, 8), crop_size=8, reduce_zero_label=True)
    image, label = data[0]
    assert image.shape == (3, 6, 8) and label.shape == (6, 8)
    assert (label[:, :4] == IGNORE_INDEX).all() and (label[:, 4:] == 2).all()  # 0 ignored, 3 -> class 2
    assert isinstance(data[1], Unreadable) and "class ids [6] outside 0..2" in data[1].description
    assert isinstance(data[2], Unreadable) and "does not match image" in data[2].description
    with pytest.raises(FileNotFoundError, match="annotations/validation"):
        find_pairs(tmp_path, "validation")


def test_training_crops_pad_with_the_ignore_index():
    root_label = np.ones((6, 8), np.int64)
    data = SegmentationFolder([], num_classes=3, train=True, scale=(8, 8), crop_size=10, ratio_range=(1.0, 1.0))
    x, y = data._crop(torch.zeros(3, 6, 8), torch.from_numpy(root_label), __import__("random").Random(0))
    assert x.shape == (3, 10, 10) and y.shape == (10, 10)
    assert (y == IGNORE_INDEX).sum() == 100 - 48 and (y == 1).sum() == 48


def test_sliding_windows_equal_whole_image_inference_for_a_pointwise_model():
    torch.manual_seed(0)
    model = nn.Conv2d(3, 5, 1)
    image = torch.randn(3, 37, 53)
    whole = infer(model, image, "whole")
    slide = infer(model, image, "slide", crop=16, stride=11)
    torch.testing.assert_close(slide, whole)
    with pytest.raises(ValueError, match="whole or slide"):
        infer(model, image, "tiles")


def test_segmentation_trains_on_the_engine_and_evaluates_from_its_checkpoint(tmp_path, capsys):
    data = make_segmentation_dataset(tmp_path / "data", image_size=48, train_images=24, val_images=4)
    cfg = load_config("segmentation", "synthetic", data_dir=str(data), output_dir=str(tmp_path / "runs"), epochs=3,
                      batch_size=8, model_kwargs=dict(embed_dim=16, depth=3), out_channels=16, head_channels=16,
                      scale=[48, 48],
                      crop_size=48, workers=0, progress=False, tensorboard=False, log_interval=1, lr=3e-3,
                      warmup_epochs=0, min_lr=3e-3, deterministic=True)
    result = train(cfg)
    records = [json.loads(line) for line in (result["run_dir"] / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if r["kind"] == "train"]
    assert len(losses) == 9 and np.mean(losses[-3:]) < np.mean(losses[:3])  # it learns
    assert 0 <= result["val_miou"] <= 100 and result["val_images"] == 4
    assert (result["run_dir"] / "predictions.png").read_bytes()[:4] == b"\x89PNG"
    checkpoint = result["run_dir"] / "checkpoints" / "last.pth"
    capsys.readouterr()
    assert main(["segment", "eval", str(checkpoint), "--data-dir", str(data), "--json"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["miou"] == pytest.approx(result["val_miou"]) and metrics["images"] == 4
    assert main(["segment", "eval", str(checkpoint), "--data-dir", str(tmp_path / "nowhere")]) == 2
    assert "No folder" in capsys.readouterr().err

    image = data / "images" / "validation" / "00000.png"
    assert main(["segment", "predict", str(image), "--checkpoint", str(checkpoint), "-o", str(tmp_path)]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith(str(tmp_path / "00000-segmentation.png") + ": ")
    shares = [float(part.split()[-2]) for part in line.split(": ", 1)[1].split(", ")]
    assert sum(shares) == pytest.approx(100, abs=0.5)
    with Image.open(tmp_path / "00000-segmentation.png") as written:
        assert written.size == (96, 48)  # the image and its overlay side by side
    (tmp_path / "broken.png").write_bytes(b"")
    assert main(["segment", "predict", str(tmp_path / "broken.png"), "--checkpoint", str(checkpoint)]) == 2
    assert "broken.png is not a readable image (empty file)" in capsys.readouterr().err
