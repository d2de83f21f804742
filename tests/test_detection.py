"""Detection and instance segmentation: COCO parsing and its bad inputs, mask and box conversions against plain
references, COCOeval on ground truth and on perturbed predictions, augmentation, and the task on the engine with its
commands."""

from __future__ import annotations

import json
import math
import random

import numpy as np
import pytest
import torch
from PIL import Image

from weightformer.cli.main import main
from weightformer.engine import Dist
from weightformer.engine.data import EpochSampler, Unreadable
from weightformer.tasks import load_config
from weightformer.tasks.detection import DetectionTask, coco_metrics, read_coco, to_coco_results, train
from weightformer.tasks.detection.data import (
    NO_MASK,
    CocoDetection,
    _hflip,
    _large_scale_jitter,
    aspect_ratio_groups,
    drop_too_thin,
    drop_unannotated,
    polygon_area,
    segmentation_to_mask,
    split_paths,
)
from weightformer.tasks.detection.synthetic import make_detection_dataset

pytest.importorskip("pycocotools")
# pycocotools 2.0.x decodes through numpy's old __array__ protocol, which numpy 2 warns about on every call.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


# -- masks and boxes against plain references -----------------------------------------------------------------


def _inside(polygon: list[float], h: int, w: int) -> np.ndarray:
    """Reference rasterisation: pixel (x, y) is inside when its centre is (even-odd rule, float64)."""
    ys, xs = np.mgrid[0:h, 0:w] + 0.5
    px, py = np.array(polygon[0::2]), np.array(polygon[1::2])
    inside = np.zeros((h, w), bool)
    for i in range(len(px)):
        x1, y1, x2, y2 = px[i - 1], py[i - 1], px[i], py[i]
        crosses = (y1 > ys) != (y2 > ys)
        with np.errstate(divide="ignore", invalid="ignore"):
            inside ^= crosses & (xs < (x2 - x1) * (ys - y1) / (y2 - y1) + x1)
    return inside


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_polygon_masks_match_the_shoelace_area_and_a_point_in_polygon_reference(seed):
    rng = np.random.default_rng(seed)
    h, w = 37, 53
    angles = np.sort(rng.uniform(0, 2 * np.pi, 7))  # a star-shaped heptagon around the centre: a simple polygon
    radii = rng.uniform(8, 16, 7)
    polygon = np.stack([26 + radii * np.cos(angles), 18 + radii * np.sin(angles)], 1).ravel().tolist()
    mask = segmentation_to_mask([polygon], h, w)
    assert mask.shape == (h, w) and mask.dtype == np.uint8
    points = list(zip(polygon[0::2], polygon[1::2], strict=True))
    perimeter = sum(math.dist(points[i - 1], points[i]) for i in range(7))
    assert abs(int(mask.sum()) - polygon_area(polygon)) <= 0.5 * perimeter  # pixel-boundary effects only
    reference = _inside(polygon, h, w)
    assert (mask.astype(bool) != reference).sum() <= perimeter  # they differ only along the outline


def test_rle_round_trips_through_results_and_uncompressed_counts():
    torch.manual_seed(0)
    probabilities = torch.rand(3, 1, 29, 41)
    results = to_coco_results({"boxes": torch.tensor([[1.0, 2, 10, 20]] * 3), "labels": torch.tensor([1, 2, 2]),
                               "scores": torch.tensor([0.9, 0.8, 0.7]), "masks": probabilities}, 7, [5, 9])[1]
    assert [r["category_id"] for r in results] == [5, 9, 9]
    for result, p in zip(results, probabilities, strict=True):
        decoded = segmentation_to_mask(json.loads(json.dumps(result["segmentation"])), 29, 41)  # through JSON
        np.testing.assert_array_equal(decoded, (p[0] > 0.5).numpy())
    # COCO's uncompressed RLE: run lengths of 0s, 1s, 0s, ... down the columns (Fortran order).
    mask = (np.random.default_rng(1).random((9, 13)) > 0.6).astype(np.uint8)
    flat = mask.ravel(order="F")
    changes = np.flatnonzero(np.diff(flat)) + 1
    counts = np.diff(np.concatenate([[0], changes, [flat.size]])).tolist()
    if flat[0] == 1:
        counts = [0] + counts
    np.testing.assert_array_equal(segmentation_to_mask({"size": [9, 13], "counts": counts}, 9, 13), mask)


def test_boxes_turn_from_xyxy_to_coco_xywh():
    output = {"boxes": torch.tensor([[10.0, 20.0, 15.5, 41.0]]), "labels": torch.tensor([2]),
              "scores": torch.tensor([0.5])}
    boxes, masks = to_coco_results(output, 3, [4, 8])
    assert boxes == [{"image_id": 3, "category_id": 8, "bbox": [10.0, 20.0, 5.5, 21.0], "score": 0.5}]
    assert masks == []


# -- reading COCO files and their bad inputs ------------------------------------------------------------------


def _write_coco(root, images, annotations, categories=None, split="train2017", files=None):
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    (root / split).mkdir(parents=True, exist_ok=True)
    for image in images:
        if files is None or image["file_name"] in files:
            size = (max(image.get("width", 1), 1), max(image.get("height", 1), 1))
            Image.new("RGB", files.get(image["file_name"], size) if files else size, (90, 90, 90)).save(
                root / split / image["file_name"])
    categories = categories if categories is not None else [{"id": 3, "name": "a"}, {"id": 7, "name": "b"}]
    path = root / "annotations" / f"instances_{split}.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return path


def _ann(ann_id, image_id, bbox, segmentation, category_id=3, **extra):
    return {"id": ann_id, "image_id": image_id, "category_id": category_id, "bbox": bbox,
            "segmentation": segmentation, **extra}


SQUARE = [[2, 2, 12, 2, 12, 12, 2, 12]]


def test_bad_annotations_are_left_out_with_a_count_and_a_reason(tmp_path):
    images = [{"id": 1, "file_name": "a.png", "width": 31, "height": 17},
              {"id": 2, "file_name": "missing.png", "width": 20, "height": 20},
              {"id": 3, "file_name": "flat.png", "width": 0, "height": 20},
              {"id": 4, "file_name": "d.png", "width": 20, "height": 20}]
    crowd_rle = {"size": [17, 31], "counts": [100, 20, 17 * 31 - 120]}
    annotations = [
        _ann(1, 1, [2, 2, 10, 10], SQUARE),  # good, a polygon
        _ann(2, 1, [20, 3, 5, 6], SQUARE + [[1, 1, 2, 2]], category_id=7),  # good, one bad part dropped
        _ann(3, 1, [0, 0, 30, 16], crowd_rle, iscrowd=1),  # a crowd region: evaluation only
        _ann(4, 99, [2, 2, 10, 10], SQUARE),  # unknown image
        _ann(5, 1, [2, 2, 10, 10], SQUARE, category_id=5),  # unknown category
        _ann(6, 1, [2, 2, 0, 10], SQUARE),  # zero width
        _ann(7, 1, [40, 2, 5, 5], SQUARE),  # outside the image
        _ann(8, 1, [2, 2, 10, "x"], SQUARE),  # not numbers
        _ann(9, 1, [2, 2, 10, 10], [[1, 1, 5, 5]]),  # two points
        _ann(10, 1, [2, 2, 10, 10], [[1, 1, 5, 5, 9, 9]]),  # collinear: zero area
        _ann(11, 1, [2, 2, 10, 10], {"size": [5, 5], "counts": [25]}),  # RLE of another size
        _ann(12, 1, [2, 2, 10, 10], {"size": [17, 31], "counts": [3, 4]}),  # RLE counts do not cover the image
        _ann(13, 1, [2, 2, 10, 10], None),  # no mask
        _ann(14, 4, [1, 1, 3, 3], [[1, 1, 2, 2]]),  # image 4's only annotation, invalid: nothing to train on
    ]
    path = _write_coco(tmp_path, images, annotations, files={"a.png": (31, 17), "flat.png": (1, 1), "d.png": (20, 20)})
    split = read_coco(path, tmp_path / "train2017")
    assert [im["id"] for im in split.images] == [1, 4]
    assert dict(split.skipped) == {
        "images whose file is missing": 1,
        "images whose width or height is not a positive integer": 1,
        "annotations of an image not in the usable images": 1,
        "annotations with a category id not in the categories": 1,
        "annotations with an empty or degenerate box (no area inside the image)": 2,
        "annotations without a box of 4 numbers": 1,
        "annotations whose polygons are all invalid (fewer than 3 points or zero area)": 3,
        "RLE size differs from the image's": 1,
        "RLE counts do not cover the image": 1,
        "annotations without a segmentation": 1,
        "invalid polygon parts dropped from otherwise valid annotations": 1,
    }
    assert "missing.png" in split.describe_skipped()
    assert [a["id"] for a in split.annotations[1]] == [1, 2, 3] and 4 not in split.annotations
    assert drop_unannotated(split) == 1 and [im["id"] for im in split.images] == [1]
    assert split.skipped["training images without a usable annotation"] == 1 and "d.png" in split.describe_skipped()
    image, target = CocoDetection(split, train=True, hflip=0.0)[0]
    assert image.shape == (3, 17, 31) and 0 <= image.min() and image.max() <= 1
    assert target["labels"].tolist() == [1, 2]  # category ids 3, 7 -> labels 1, 2; the crowd region left out
    torch.testing.assert_close(target["boxes"], torch.tensor([[2.0, 2, 12, 12], [20, 3, 25, 9]]))
    assert target["masks"].shape == (2, 17, 31) and target["masks"][0].sum() == 100  # the 10x10 square
    truth = split.ground_truth()
    assert {a["id"] for a in truth["annotations"]} == {1, 2, 3}
    thin = read_coco(path, tmp_path / "train2017")  # 31x17 and 20x20: resized to fit 3 px, 17 -> 1.6 px is too thin
    assert drop_too_thin(thin, 4, 60) == 0 and drop_too_thin(thin, 4, 3) == 1 and thin.images[0]["id"] == 4
    assert truth["annotations"][2]["area"] == 20  # computed from the crowd RLE when the file has none


def test_files_that_cannot_be_trained_on_are_one_line_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="No annotation file .*instances_train2017.json"):
        read_coco(*split_paths(tmp_path, "train2017"))
    (tmp_path / "annotations").mkdir()
    bad = tmp_path / "annotations" / "instances_x.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="is not valid JSON"):
        read_coco(bad, tmp_path)
    bad.write_text(json.dumps([1, 2]))
    with pytest.raises(ValueError, match="is not a COCO instances file"):
        read_coco(bad, tmp_path)
    images = [{"id": 1, "file_name": "gone.png", "width": 8, "height": 8}]
    with pytest.raises(ValueError, match="lists no categories"):
        read_coco(_write_coco(tmp_path, images, [], categories=[], files={}), tmp_path / "train2017")
    with pytest.raises(ValueError, match="has no usable image: 1 images whose file is missing"):
        read_coco(_write_coco(tmp_path, images, [], files={}), tmp_path / "train2017")


def test_an_image_whose_size_differs_from_its_record_is_skipped_when_read(tmp_path):
    images = [{"id": 1, "file_name": "a.png", "width": 30, "height": 20}]
    path = _write_coco(tmp_path, images, [_ann(1, 1, [2, 2, 10, 10], SQUARE)], files={"a.png": (20, 30)})
    sample = CocoDetection(read_coco(path, tmp_path / "train2017"), train=False)[0]
    assert isinstance(sample, Unreadable) and "image is 20x30, the annotations say 30x20" in sample.description


# -- augmentation -------------------------------------------------------------------------------------------


def _mask_box(mask: torch.Tensor) -> list[float]:
    ys, xs = torch.nonzero(mask, as_tuple=True)
    return [xs.min().item(), ys.min().item(), xs.max().item() + 1, ys.max().item() + 1]


def test_flips_and_large_scale_jitter_keep_boxes_on_their_masks():
    masks = torch.zeros(2, 50, 70, dtype=torch.uint8)
    masks[0, 10:30, 5:25] = 1
    masks[1, 40:50, 60:70] = 1
    target = {"boxes": torch.tensor([[5.0, 10, 25, 30], [60, 40, 70, 50]]), "labels": torch.tensor([1, 2]),
              "masks": masks}
    x, flipped = _hflip(torch.rand(3, 50, 70), target)
    for box, mask in zip(flipped["boxes"], flipped["masks"], strict=True):
        assert box.tolist() == _mask_box(mask)
    for seed in range(6):
        x, out = _large_scale_jitter(torch.rand(3, 50, 70), target, 64, (0.5, 2.0), random.Random(seed))
        assert x.shape == (3, 64, 64) and out["masks"].shape[1:] == (64, 64)
        assert len(out["boxes"]) == len(out["labels"]) == len(out["masks"]) >= 0
        for box, mask in zip(out["boxes"], out["masks"], strict=True):
            torch.testing.assert_close(box, torch.tensor(_mask_box(mask), dtype=torch.float32), atol=2.0, rtol=0)
    # Scaled up 4x around the middle, the crop cannot hold both objects: what falls outside is left out.
    x, out = _large_scale_jitter(torch.rand(3, 50, 70), target, 40, (4.0, 4.0), random.Random(0))
    assert len(out["boxes"]) < 2


# -- COCOeval --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    """A small generated dataset in COCO's layout (train and val)."""
    return make_detection_dataset(tmp_path_factory.mktemp("shapes"), image_size=64, train_images=16, val_images=6)


def test_the_generated_dataset_is_valid_coco_with_polygons_and_rle(shapes):
    split = read_coco(*split_paths(shapes, "val2017"))
    assert not split.skipped and len(split.images) == 6 and split.class_names == ["circle", "square", "triangle"]
    kinds = {type(a["segmentation"]).__name__ for anns in split.annotations.values() for a in anns}
    assert kinds == {"list", "dict"}  # unoccluded shapes as polygons, occluded ones as RLE
    for anns in split.annotations.values():
        for a in anns:
            mask = segmentation_to_mask(a["segmentation"], 64, 64)
            assert mask.sum() == pytest.approx(a["area"], abs=1) and _mask_box(torch.from_numpy(mask)) == \
                pytest.approx([a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]])


def _truth_as_outputs(split, shift: float = 0.0, keep: int | None = None):
    """Each image's annotations as a model's outputs (score 1), boxes and masks shifted by `shift` pixels."""
    boxes, masks = [], []
    for image in split.images:
        anns = split.annotations[image["id"]][:keep]
        h, w = image["height"], image["width"]
        xyxy = torch.tensor([[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]]
                             for a in anns]) + shift
        m = torch.stack([torch.from_numpy(segmentation_to_mask(a["segmentation"], h, w)).float() for a in anns])
        m = torch.roll(m, shifts=(int(shift), int(shift)), dims=(1, 2))[:, None]
        labels = torch.tensor([split.category_ids.index(a["category_id"]) + 1 for a in anns])
        b, s = to_coco_results({"boxes": xyxy, "labels": labels, "scores": torch.ones(len(anns)), "masks": m},
                               image["id"], split.category_ids)
        boxes += b
        masks += s
    return boxes, masks


def test_cocoeval_scores_the_ground_truth_100_and_perturbed_predictions_lower(shapes):
    split = read_coco(*split_paths(shapes, "val2017"))
    truth = split.ground_truth()
    boxes, masks = _truth_as_outputs(split)
    assert coco_metrics(truth, boxes, "bbox")["ap"] == pytest.approx(100)
    assert coco_metrics(truth, masks, "segm")["ap"] == pytest.approx(100)
    boxes, masks = _truth_as_outputs(split, shift=3.0)
    shifted = coco_metrics(truth, boxes, "bbox")
    assert 0 < shifted["ap"] < 90 and shifted["ap50"] > shifted["ap75"]  # a few pixels off: the strict IoU fails first
    assert coco_metrics(truth, masks, "segm")["ap"] < 90
    boxes, masks = _truth_as_outputs(split, keep=1)  # only the first object of each image: recall falls
    assert coco_metrics(truth, boxes, "bbox")["ap"] < 90
    assert coco_metrics(truth, [], "bbox")["ap"] == 0.0
    one = split.images[0]["id"]  # only the evaluated images count
    boxes, _ = _truth_as_outputs(split, keep=None)
    only = [b for b in boxes if b["image_id"] == one]
    assert coco_metrics(split.ground_truth([one]), only, "bbox", [one])["ap"] == pytest.approx(100)


# -- box-only data -----------------------------------------------------------------------------------------------


def _without_masks(shapes, root, keep=lambda ann: False):
    """The shapes dataset with the segmentations taken out of its annotations (but those `keep` accepts):
    removed from even ids, emptied ([]) on odd ones, both of which mean "no mask". The images are shared."""
    (root / "annotations").mkdir(parents=True)
    for split in ("train2017", "val2017"):
        (root / split).symlink_to(shapes / split)
        data = json.loads((shapes / "annotations" / f"instances_{split}.json").read_text())
        for ann in data["annotations"]:
            if not keep(ann):
                if ann["id"] % 2:
                    ann["segmentation"] = []
                else:
                    del ann["segmentation"]
        (root / "annotations" / f"instances_{split}.json").write_text(json.dumps(data))
    return root


def test_box_only_files_read_without_masks_and_mixed_ones_as_the_caller_says(shapes, tmp_path):
    boxes = _without_masks(shapes, tmp_path / "boxes")
    split = read_coco(*split_paths(boxes, "train2017"), masks=None)  # auto: no annotation has a mask
    full = read_coco(*split_paths(shapes, "train2017"))
    assert not split.masks and full.masks and not split.skipped
    assert [a["id"] for anns in split.annotations.values() for a in anns] == \
        [a["id"] for anns in full.annotations.values() for a in anns]
    assert all("segmentation" not in a and a["area"] > 0 for anns in split.annotations.values() for a in anns)
    forced = read_coco(*split_paths(boxes, "train2017"), masks=True)  # masks asked for: nothing to keep
    assert forced.masks and not forced.annotations and forced.skipped[NO_MASK] == len(split.ground_truth()[
        "annotations"])
    ignored = read_coco(*split_paths(shapes, "train2017"), masks=False)  # a file with masks, read for boxes
    assert not ignored.masks and ignored.ground_truth()["annotations"] == [
        {k: v for k, v in a.items() if k != "segmentation"} for a in full.ground_truth()["annotations"]]
    # Training samples without masks: flips and large-scale jitter move the boxes alone.
    dataset = CocoDetection(split, train=True, hflip=1.0, scale_jitter=(0.5, 1.5), crop_size=48)
    image, target = dataset[(0, 7)]
    assert image.shape == (3, 48, 48) and "masks" not in target and len(target["boxes"]) == len(target["labels"])
    mixed = _without_masks(shapes, tmp_path / "mixed", keep=lambda ann: ann["id"] % 3 == 0)
    split = read_coco(*split_paths(mixed, "train2017"), masks=None)  # auto keeps the masks, leaves the rest out
    assert split.masks and split.skipped[NO_MASK] == sum(1 for anns in full.annotations.values() for a in anns
                                                        if a["id"] % 3)


def test_box_only_data_trains_a_detector_without_mask_head_and_scores_boxes_alone(shapes, tmp_path, capsys):
    from weightformer.tasks import load_run_model

    boxes = _without_masks(shapes, tmp_path / "boxes")
    result = train(_tiny_config(boxes, tmp_path / "runs", epochs=1, batch_size=8))
    assert 0 <= result["val_bbox_ap"] <= 100 and not any(k.startswith("val_segm") for k in result)
    assert not result["model"].has_masks  # Faster R-CNN: the same network without its mask branch
    records = [json.loads(line) for line in (result["run_dir"] / "metrics.jsonl").read_text().splitlines()]
    assert "loss_mask" not in records[0] and "loss_classifier" in records[0]  # four losses: no mask branch
    assert (result["run_dir"] / "predictions.png").read_bytes()[:4] == b"\x89PNG"  # boxes drawn, no masks
    checkpoint = result["run_dir"] / "checkpoints" / "last.pth"
    assert not load_run_model(checkpoint, "detection").model.has_masks  # the checkpoint says: boxes only
    capsys.readouterr()
    assert main(["detect", "eval", str(checkpoint), "--data-dir", str(boxes), "--workers", "0"]) == 0
    table = capsys.readouterr().out
    assert "box " in table and "mask" not in table
    assert main(["detect", "eval", str(checkpoint), "--data-dir", str(shapes), "--json", "--workers", "0"]) == 0
    metrics = json.loads(capsys.readouterr().out)  # a box model on data with masks: box AP alone
    assert metrics["bbox_ap"] == pytest.approx(result["val_bbox_ap"]) and "segm_ap" not in metrics
    assert main(["detect", "predict", str(shapes / "val2017" / "000000000017.png"), "--checkpoint",
                 str(checkpoint), "-o", str(tmp_path), "--threshold", "0"]) == 0


def test_a_file_where_only_some_annotations_have_masks_is_refused_unless_masks_is_set(shapes, tmp_path, capsys):
    mixed = _without_masks(shapes, tmp_path / "mixed", keep=lambda ann: ann["id"] % 3 == 0)
    argv = ["detect", "train", "--data-dir", str(mixed), "--output-dir", str(tmp_path / "runs"), "--workers", "0"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "annotations have no segmentation" in err and "--masks false" in err
    task = DetectionTask(_tiny_config(mixed, tmp_path / "runs", masks=True))
    data = task.build_datasets(Dist())
    assert task.masks and "annotations without a segmentation" in data.description
    task = DetectionTask(_tiny_config(mixed, tmp_path / "runs", masks=False))
    task.build_datasets(Dist())
    assert not task.masks and not task.build_model().has_masks


# -- aspect-ratio groups ---------------------------------------------------------------------------------------


def test_aspect_ratio_groups_are_torchvisions_bins():
    # torchvision's references/detection/group_by_aspect_ratio.py: _quantize(aspect ratios, bins), bins
    # 2 ** linspace(-1, 1, 2k + 1) for k > 0, else [1.0]; aspect ratio = width / height.
    sizes = [(100, 400), (100, 200), (150, 200), (200, 200), (300, 200), (400, 200), (900, 200), (199, 200)]
    images = [{"width": w, "height": h} for w, h in sizes]
    ratios = [w / h for w, h in sizes]
    assert aspect_ratio_groups(images, 0) == [0, 0, 0, 1, 1, 1, 1, 0]
    edges = sorted((2 ** np.linspace(-1, 1, 7)).tolist())
    expected = [sum(e <= r for e in edges) for r in ratios]  # bisect_right
    assert aspect_ratio_groups(images, 3) == expected and max(expected) == 7 and min(expected) == 0


def test_grouped_training_batches_hold_one_aspect_ratio_bin(tmp_path):
    # Half portrait, half landscape images: with grouping on, every training step holds one orientation.
    images, annotations = [], []
    for i in range(20):
        w, h = (40, 24) if i % 2 else (24, 40)
        images.append({"id": i + 1, "file_name": f"{i}.png", "width": w, "height": h})
        annotations.append(_ann(i + 1, i + 1, [2, 2, 10, 10], SQUARE))
    _write_coco(tmp_path, images, annotations)
    cfg = _tiny_config(tmp_path, tmp_path / "runs", num_classes=2, val_split=None, batch_size=3,
                       aspect_ratio_group_factor=0)
    task = DetectionTask(cfg)
    data = task.build_datasets(Dist())
    assert data.groups == [0 if i % 2 == 0 else 1 for i in range(20)]
    sampler = EpochSampler(len(data.train), shuffle=True, batch_size=3, groups=data.groups)
    sampler.set_epoch(0)
    order = [i for i, _ in sampler]
    assert len(order) == 18 and all(len({data.groups[i] for i in order[k: k + 3]}) == 1 for k in range(0, 18, 3))
    assert DetectionTask(_tiny_config(tmp_path, tmp_path / "runs", num_classes=2, val_split=None)).build_datasets(
        Dist()).groups is None  # off by default
    for recipe, factor in (("coco-1x", 3), ("coco-3x", 3), ("coco-lsj", -1), ("synthetic", -1)):
        assert load_config("detection", recipe).aspect_ratio_group_factor == factor


# -- the task on the engine, and its commands -----------------------------------------------------------------


def test_detection_trains_on_the_engine_and_evaluates_and_predicts_from_its_checkpoint(shapes, tmp_path, capsys):
    cfg = load_config("detection", "synthetic", data_dir=str(shapes), output_dir=str(tmp_path / "runs"), epochs=1,
                      batch_size=8, model_kwargs=dict(embed_dim=16, depth=2), out_channels=16, head_channels=16,
                      box_fc=32,
                      min_size=[64], max_size=64, workers=0, progress=False, tensorboard=False, log_interval=1,
                      deterministic=True, rcnn=dict(rpn_post_nms_top_n_test=50, box_detections_per_img=10))
    result = train(cfg)
    records = [json.loads(line) for line in (result["run_dir"] / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if r["kind"] == "train"]
    assert len(steps) == 2 and all(math.isfinite(r["loss"]) for r in steps)
    parts = ["loss_box_reg", "loss_classifier", "loss_mask", "loss_objectness", "loss_rpn_box_reg"]
    assert sum(steps[0][p] for p in parts) == pytest.approx(steps[0]["loss"], rel=1e-5)  # the logged parts
    assert 0 <= result["val_bbox_ap"] <= 100 and 0 <= result["val_segm_ap50"] <= 100 and result["val_images"] == 6
    assert (result["run_dir"] / "predictions.png").read_bytes()[:4] == b"\x89PNG"
    checkpoint = result["run_dir"] / "checkpoints" / "last.pth"
    capsys.readouterr()
    scores = []
    for batch, workers in (("1", "0"), ("4", "2")):  # one image at a time, then batched with worker processes
        assert main(["detect", "eval", str(checkpoint), "--data-dir", str(shapes), "--json", "--device", "cpu",
                     "--batch-size", batch, "--workers", workers]) == 0
        metrics = json.loads(capsys.readouterr().out)
        scores.append({k: v for k, v in metrics.items() if k != "images_per_second"})
    assert metrics["bbox_ap"] == pytest.approx(result["val_bbox_ap"]) and metrics["images"] == 6
    # Images of one size: the batch adds no padding, so every COCO number is the same, to the last digit.
    assert json.dumps(scores[0]) == json.dumps(scores[1]) and scores[0]["detections"] > 0
    assert main(["detect", "eval", str(checkpoint), "--data-dir", str(tmp_path / "nowhere")]) == 2
    assert "No annotation file" in capsys.readouterr().err

    image = shapes / "val2017" / "000000000017.png"
    assert main(["detect", "predict", str(image), "--checkpoint", str(checkpoint), "-o", str(tmp_path),
                 "--threshold", "0"]) == 0
    assert capsys.readouterr().out.startswith(str(tmp_path / "000000000017-detections.png") + ": ")
    with Image.open(tmp_path / "000000000017-detections.png") as written:
        assert written.size == (256, 256)  # enlarged from 64x64 so that the labels can be read
    (tmp_path / "broken.png").write_bytes(b"")
    assert main(["detect", "predict", str(tmp_path / "broken.png"), "--checkpoint", str(checkpoint)]) == 2
    assert "broken.png is not a readable image (empty file)" in capsys.readouterr().err


@pytest.mark.parametrize("args, expected", [
    (["--num-classes", "5"], "has 3 categories, but num_classes is 5: set --num-classes 3"),
    (["--train-split", "nothing"], "No annotation file"),
    (["--scale-jitter", "[2.0, 0.5]"], "scale_jitter must be [low, high]"),
])
def test_detect_train_refuses_what_it_cannot_train_on_in_one_line(shapes, tmp_path, capsys, args, expected):
    argv = ["detect", "train", "--data-dir", str(shapes), "--output-dir", str(tmp_path / "runs"), "--workers", "0",
            *args]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("weightformer detect train: error: ") and expected in err and len(err.splitlines()) == 1
    assert not (tmp_path / "runs").exists()


# -- the model and the schedules of the recipes ---------------------------------------------------------------


@pytest.mark.parametrize("backbone, kwargs", [("weightformer_tiny", dict(embed_dim=16, depth=3)),
                                              ("deit_tiny_patch16_224", dict(embed_dim=16, depth=3, num_heads=2))])
def test_detector_predicts_in_image_coordinates_and_decays_the_backbone_lr_by_layer(backbone, kwargs):
    from weightformer.models.dense import layer_decay_groups
    from weightformer.models.detection import create_detector

    torch.manual_seed(0)
    model = create_detector(backbone, num_classes=2, out_channels=16, min_size=64, max_size=96, head_channels=16,
                            box_fc=32, drop_path_rate=0.0, rcnn_kwargs=dict(box_score_thresh=0.0), **kwargs).eval()
    with torch.no_grad():
        out = model([torch.rand(3, 50, 75), torch.rand(3, 33, 41)])
    for o, (h, w) in zip(out, [(50, 75), (33, 41)], strict=True):
        assert o["masks"].shape[1:] == (1, h, w) and len(o["boxes"]) == len(o["scores"]) > 0
        assert (o["boxes"][:, 2] <= w).all() and (o["boxes"][:, 3] <= h).all() and set(o["labels"].tolist()) <= {1, 2}
    # An image whose objects were all cropped away by LSJ trains as a negative: finite losses, no crash.
    empty = dict(boxes=torch.zeros(0, 4), labels=torch.zeros(0, dtype=torch.int64),
                 masks=torch.zeros(0, 40, 40, dtype=torch.uint8))
    one = dict(boxes=torch.tensor([[5.0, 5, 30, 25]]), labels=torch.tensor([2]),
               masks=torch.zeros(1, 40, 40, dtype=torch.uint8).index_fill_(1, torch.arange(5, 25), 1))
    losses = model.train()([torch.rand(3, 40, 40), torch.rand(3, 40, 40)], [empty, one])
    assert all(torch.isfinite(v) for v in losses.values()) and losses["loss_mask"] > 0
    # Batched, an image predicts as alone when the batch adds no padding to it: here the larger of the two,
    # which sets the padded size. (The smaller one is padded further, which the backbone's global statistics
    # see: why batched evaluation of images of different sizes can differ slightly from batch 1.)
    with torch.no_grad():
        big, small = torch.rand(3, 64, 90), torch.rand(3, 40, 40)
        together, alone = model.eval()([big, small])[0], model([big])[0]
    for key in ("boxes", "labels", "scores", "masks"):
        torch.testing.assert_close(together[key], alone[key], atol=1e-4, rtol=0)
    groups = layer_decay_groups(model, lr=1.0, weight_decay=0.05, layer_decay=0.5)
    names = {id(p): n for n, p in model.named_parameters()}
    scale = {names[id(p)]: g["lr_scale"] for g in groups for p in g["params"]}
    assert scale["rcnn.roi_heads.mask_predictor.mask_fcn_logits.weight"] == 1.0  # heads: the full rate
    assert scale["rcnn.backbone.backbone.blocks.2.norm2.weight"] == 0.5
    assert scale["rcnn.backbone.backbone.blocks.0.norm2.weight"] == 0.5**3
    with pytest.raises(ValueError, match="one size per pyramid level"):
        create_detector(backbone, 2, 16, anchor_sizes=(32, 64), **kwargs)


def test_multistep_schedule_of_the_1x_recipe():
    from weightformer.engine.optim import build_scheduler

    cfg = load_config("detection", "coco-1x", data_dir="unused")
    assert cfg.sched == "multistep" and cfg.decay_milestones == [8, 11] and cfg.epochs == 12
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=cfg.lr)
    scheduler = build_scheduler(optimizer, cfg, steps_per_epoch=100)
    lrs = {}
    for epoch in (1, 7.5, 8.5, 10.9, 11.5):
        scheduler.step_update(num_updates=int(epoch * 100))
        lrs[epoch] = optimizer.param_groups[0]["lr"]
    assert lrs[1] == lrs[7.5] == pytest.approx(1e-4)
    assert lrs[8.5] == lrs[10.9] == pytest.approx(1e-5) and lrs[11.5] == pytest.approx(1e-6)
    for bad in ([], [11, 8]):  # refused by the config, before anything is built
        with pytest.raises(ValueError, match="^decay_milestones must"):
            load_config("detection", "coco-1x", decay_milestones=bad)
    assert load_config("detection", "coco-lsj").scale_jitter == [0.1, 2.0]
    assert load_config("detection", "coco-3x").epochs == 36


def _train_on_two(rank: int, port: int, data: str, out) -> None:
    from test_engine_ddp import _join

    _join(rank, 2, port)
    result = train(_tiny_config(data, out / "runs"))
    metrics = {k: v for k, v in result.items() if k.startswith("val_")}
    (out / f"rank{rank}.json").write_text(json.dumps(dict(metrics, run_dir=str(result["run_dir"]))))


def _tiny_config(data, runs, **overrides):
    values = dict(data_dir=str(data), output_dir=str(runs), epochs=1, batch_size=4,
                  model_kwargs=dict(embed_dim=16, depth=2), out_channels=16, head_channels=16, box_fc=32,
                  min_size=[64], max_size=64, workers=0, progress=False, tensorboard=False, log_interval=1,
                  rcnn=dict(rpn_post_nms_top_n_test=50, box_detections_per_img=10, box_score_thresh=0.0))
    return load_config("detection", "synthetic", **{**values, **overrides})


@pytest.mark.slow
def test_two_processes_score_every_validation_image_once(shapes, tmp_path, capsys):
    # Each rank predicts its half of the 6 validation images; rank 0 scores the gathered results. The metrics
    # every rank returns must be those of one process evaluating the saved model on all 6 images.
    import torch.multiprocessing as mp

    from test_engine_ddp import _free_port

    mp.start_processes(_train_on_two, args=(_free_port(), str(shapes), tmp_path), nprocs=2, start_method="spawn")
    reports = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    # The same numbers on both ranks (compared as JSON text: NaN, for sizes without objects, equals NaN there),
    # all but the throughput, which each rank times itself.
    same = [json.dumps({k: v for k, v in r.items() if k != "val_images_per_second"}) for r in reports]
    assert same[0] == same[1] and reports[0]["val_images"] == 6
    checkpoint = f"{reports[0]['run_dir']}/checkpoints/last.pth"
    capsys.readouterr()
    assert main(["detect", "eval", checkpoint, "--data-dir", str(shapes), "--json", "--device", "cpu"]) == 0
    single = json.loads(capsys.readouterr().out)
    assert single["images"] == 6 and single["detections"] == reports[0]["val_detections"] > 0
    for key in ("bbox_ap", "bbox_ap50", "segm_ap", "segm_ap50"):
        assert single[key] == pytest.approx(reports[0][f"val_{key}"], nan_ok=True)
