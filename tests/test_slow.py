"""Slow suite (`python -m pytest -q -m slow`): the README's main job end to end, as a user runs it."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest


@pytest.mark.slow
def test_the_embedded_default_run_learns_its_task(tmp_path):
    # `weightformer train` with no arguments (only the output folder moved): 8 epochs on the generated
    # shape-pairs dataset, ~5 minutes on 2 CPU cores. Chance is 11 %; the README reports 100 %.
    done = subprocess.run([sys.executable, "-m", "weightformer", "train", "--output-dir", str(tmp_path),
                           "--progress", "false"], capture_output=True, text=True, timeout=1800,
                          env={**os.environ})
    assert done.returncode == 0, done.stderr[-3000:]
    found = re.search(r"Done: val top-1 ([\d.]+) %", done.stdout)
    assert found and float(found.group(1)) >= 95.0, done.stdout[-3000:]
    assert (tmp_path / "synthetic" / "predictions.png").read_bytes()[:4] == b"\x89PNG"
    assert (tmp_path / "synthetic" / "checkpoints" / "best.pth").is_file()


@pytest.mark.slow
def test_the_embedded_segmentation_default_reaches_70_miou(tmp_path):
    # `weightformer segment train` with no arguments: 8 epochs on the generated shapes scenes (~8 minutes on
    # 2 cores); the README reports 81.6 % mIoU.
    done = subprocess.run([sys.executable, "-m", "weightformer", "segment", "train", "--output-dir", str(tmp_path),
                           "--progress", "false"], capture_output=True, text=True, timeout=1800, env={**os.environ})
    assert done.returncode == 0, done.stderr[-3000:]
    found = re.search(r"Done: val mIoU ([\d.]+) %", done.stdout)
    assert found and float(found.group(1)) >= 70.0, done.stdout[-3000:]
    assert (tmp_path / "segmentation-synthetic" / "predictions.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.slow
def test_the_embedded_detection_default_reaches_the_ap50_thresholds(tmp_path):
    # `weightformer detect train` with no arguments: Mask R-CNN on the generated COCO-format shapes, scored by
    # pycocotools' COCOeval on the validation split; the README reports the numbers and the time.
    done = subprocess.run([sys.executable, "-m", "weightformer", "detect", "train", "--output-dir", str(tmp_path),
                           "--progress", "false"], capture_output=True, text=True, timeout=3600, env={**os.environ})
    assert done.returncode == 0, done.stderr[-3000:]
    found = re.search(r"Done: val box AP [\d.]+, AP50 ([\d.]+); mask AP [\d.]+, AP50 ([\d.]+)", done.stdout)
    assert found and float(found.group(1)) >= 80.0 and float(found.group(2)) >= 70.0, done.stdout[-3000:]
    assert (tmp_path / "detection-synthetic" / "predictions.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.slow
def test_the_embedded_generation_default_draws_recognisable_classes(tmp_path):
    # `weightformer dit train` with no arguments: a 0.65 M-parameter WeightFormer-DiT on 3 classes of shapes
    # (16 px; random colours, equal areas: only the shape tells the class), then a classifier trained on the real
    # images judges 150 guided samples. Chance is 33 %.
    done = subprocess.run([sys.executable, "-m", "weightformer", "dit", "train", "--output-dir", str(tmp_path),
                           "--progress", "false"], capture_output=True, text=True, timeout=3600, env={**os.environ})
    assert done.returncode == 0, done.stderr[-3000:]
    found = re.search(r"([\d.]+) % classified as their class \(untrained model ([\d.]+) %\); classifier-feature "
                      r"FID ([\d.]+) \(real-vs-real floor ([\d.]+), untrained model ([\d.]+)\)", done.stdout)
    assert found, done.stdout[-3000:]
    accuracy, untrained_accuracy, fid, floor, untrained_fid = map(float, found.groups())
    assert accuracy >= 80.0, done.stdout[-3000:]
    assert floor < fid < untrained_fid
    assert (tmp_path / "dit-synthetic" / "samples.png").read_bytes()[:4] == b"\x89PNG"
