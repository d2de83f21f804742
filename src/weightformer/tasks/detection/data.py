"""COCO-format instance data: reading and checking an annotation file, masks and boxes, augmentation, collation.

A split is `<data_dir>/annotations/instances_<split>.json` with its images in `<data_dir>/<split>/` (COCO's
layout). `read_coco` checks every image and annotation once at start-up and leaves out, with a count and a reason
per kind, what cannot be trained on: images whose file is missing or whose size is not a positive number,
annotations of unknown images or categories, empty or degenerate boxes, masks that are no region (polygons of
fewer than 3 points or zero area, RLE of the wrong size). Crowd regions are kept for evaluation (COCOeval ignores
detections on them) and left out of training, as torchvision's and Detectron2's references do. What cannot be
fixed by leaving things out (no annotation file, no categories, no usable image) is a one-line error.

Category ids (COCO's run 1..90 with gaps) become contiguous labels 1..K in the sorted order of the ids, 0 being
torchvision's background; `CocoSplit.category_ids[label - 1]` maps back.

Masks are optional: a split is read with masks (annotations without a segmentation left out and counted), for
boxes only (segmentations neither checked nor kept), or deciding from the file (boxes only when no annotation has
a segmentation); `CocoSplit.masks` says which.
"""

from __future__ import annotations

import bisect
import json
import math
import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ...engine.data import Unreadable

__all__ = ["CocoSplit", "CocoDetection", "read_coco", "split_paths", "segmentation_to_mask", "polygon_area",
           "xywh_to_xyxy", "require_pycocotools", "drop_unannotated", "drop_too_thin", "aspect_ratio_groups",
           "NO_MASK"]

NO_MASK = "annotations without a segmentation"  # the reason they are left out of a split read with masks


def require_pycocotools():
    """pycocotools' mask module, or a one-line ImportError saying how to install it."""
    try:
        from pycocotools import mask as mask_utils
    except ImportError:
        raise ModuleNotFoundError("Detection needs pycocotools: pip install 'weightformer[detection]' "
                          "(or pip install pycocotools).") from None
    return mask_utils


def split_paths(data_dir: str | Path, split: str) -> tuple[Path, Path]:
    """(annotation file, image folder) of a split in COCO's layout."""
    data_dir = Path(data_dir)
    return data_dir / "annotations" / f"instances_{split}.json", data_dir / split


# -- masks and boxes ------------------------------------------------------------------------------------------


def polygon_area(polygon: list[float]) -> float:
    """Area of a flat [x1, y1, x2, y2, ...] polygon by the shoelace formula."""
    x, y = np.asarray(polygon[0::2], float), np.asarray(polygon[1::2], float)
    return 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))


def xywh_to_xyxy(box: list[float]) -> list[float]:
    x, y, w, h = box
    return [x, y, x + w, y + h]


def _clean_polygons(segmentation: list) -> tuple[list[list[float]], int]:
    """The valid parts of a polygon annotation (>= 3 finite points, positive area) and how many were dropped."""
    kept = []
    for part in segmentation:
        ok = (isinstance(part, list) and len(part) >= 6 and len(part) % 2 == 0
              and all(isinstance(c, (int, float)) and math.isfinite(c) for c in part))
        if ok and polygon_area(part) > 0:
            kept.append([float(c) for c in part])
    return kept, len(segmentation) - len(kept)


def _check_rle(segmentation: dict, height: int, width: int) -> str | None:
    """Why an RLE cannot be used (wrong size, counts not covering the image, unreadable), or None."""
    mask_utils = require_pycocotools()
    if list(segmentation.get("size", [])) != [height, width]:
        return "RLE size differs from the image's"
    counts = segmentation.get("counts")
    if isinstance(counts, list):
        if not all(isinstance(c, int) and c >= 0 for c in counts) or sum(counts) != height * width:
            return "RLE counts do not cover the image"
        return None
    if not isinstance(counts, (str, bytes)):
        return "RLE counts are neither a list nor a string"
    try:
        mask_utils.area(_to_rle(segmentation, height, width))
    except (ValueError, TypeError):
        return "RLE counts are unreadable"
    return None


def _to_rle(segmentation: list | dict, height: int, width: int) -> dict:
    """COCO segmentation (polygons, uncompressed or compressed RLE) -> one compressed RLE."""
    mask_utils = require_pycocotools()
    if isinstance(segmentation, list):  # polygons: rasterised and merged
        return mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
    if isinstance(segmentation["counts"], list):  # uncompressed RLE (crowd regions)
        return mask_utils.frPyObjects(segmentation, height, width)
    counts = segmentation["counts"]
    return {"size": [height, width], "counts": counts.encode("ascii") if isinstance(counts, str) else counts}


def segmentation_to_mask(segmentation: list | dict, height: int, width: int) -> np.ndarray:
    """(height, width) uint8 mask of a COCO segmentation (pycocotools' rasterisation, as COCOeval uses)."""
    return require_pycocotools().decode(_to_rle(segmentation, height, width))


# -- reading and checking a split -----------------------------------------------------------------------------


@dataclass
class CocoSplit:
    """A checked split: usable images, their annotations, the categories, and what was left out and why."""

    annotation_file: Path
    image_dir: Path
    categories: list[dict]  # sorted by id
    images: list[dict]  # usable images, COCO's image records
    annotations: dict[int, list[dict]]  # image id -> its usable annotations (crowd regions included)
    skipped: Counter = field(default_factory=Counter)  # reason -> how many (images or annotations)
    examples: dict[str, str] = field(default_factory=dict)  # reason -> one example, for the message
    masks: bool = True  # whether the annotations carry masks (False: boxes only, no "segmentation" kept)

    @property
    def category_ids(self) -> list[int]:
        return [c["id"] for c in self.categories]

    @property
    def class_names(self) -> list[str]:
        return [str(c.get("name", c["id"])) for c in self.categories]

    def ground_truth(self, image_ids: list[int] | None = None) -> dict[str, Any]:
        """The usable part as a COCO dataset dict (for pycocotools' COCO), restricted to `image_ids` if given."""
        keep = set(image_ids) if image_ids is not None else None
        images = [im for im in self.images if keep is None or im["id"] in keep]
        annotations = [a for im in images for a in self.annotations.get(im["id"], [])]
        return {"images": images, "annotations": annotations, "categories": self.categories}

    def describe_skipped(self) -> str:
        """E.g. '3 annotations with an unknown category id (e.g. id 7 ...); 1 image whose file is missing (...)'."""
        return "; ".join(f"{n} {reason} (e.g. {self.examples[reason]})" for reason, n in sorted(self.skipped.items()))


def _load_json(annotation_file: Path) -> dict[str, Any]:
    if not annotation_file.is_file():
        raise FileNotFoundError(f"No annotation file {annotation_file}: a COCO-format split is "
                                f"annotations/instances_<split>.json with its images in <split>/.")
    try:
        data = json.loads(annotation_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{annotation_file} is not valid JSON: {error}.") from None
    if not isinstance(data, dict) or not all(isinstance(data.get(k), list) for k in ("images", "categories")):
        raise ValueError(f"{annotation_file} is not a COCO instances file: it needs lists 'images', 'annotations' "
                         "and 'categories'.")
    if not data["categories"]:
        raise ValueError(f"{annotation_file} lists no categories.")
    ids = [c.get("id") if isinstance(c, dict) else None for c in data["categories"]]
    if not all(isinstance(i, int) for i in ids) or len(set(ids)) != len(ids):
        raise ValueError(f"{annotation_file}: category ids must be distinct integers, got {ids[:10]}.")
    return data


def _image_problem(image: Any, image_dir: Path, seen: set[int], check_files: bool) -> str | None:
    if not isinstance(image, dict) or not isinstance(image.get("id"), int) or "file_name" not in image:
        return "image records without an integer id or a file_name"
    if image["id"] in seen:
        return "images listed twice (same id)"
    w, h = image.get("width"), image.get("height")
    if not (isinstance(w, int) and isinstance(h, int) and w > 0 and h > 0):
        return "images whose width or height is not a positive integer"
    if check_files and not (image_dir / image["file_name"]).is_file():
        return "images whose file is missing"
    return None


def _has_segmentation(ann: dict) -> bool:
    """Whether an annotation gives a mask at all (absent, null and [] give none; an invalid one is still one)."""
    return ann.get("segmentation") not in (None, [])


def _annotation_problem(ann: Any, images: dict[int, dict], categories: set[int], masks: bool | None) -> str | None:
    """Why an annotation cannot be used, or None. The segmentation is checked when `masks` is True, or is None
    and there is one (an annotation without one is then kept for now: `_settle_masks` decides)."""
    if not isinstance(ann, dict) or not isinstance(ann.get("image_id"), int) or ann["image_id"] not in images:
        return "annotations of an image not in the usable images"
    if not isinstance(ann.get("category_id"), int) or ann["category_id"] not in categories:
        return "annotations with a category id not in the categories"
    box = ann.get("bbox")
    if not (isinstance(box, list) and len(box) == 4 and all(isinstance(c, (int, float)) and math.isfinite(c)
                                                             for c in box)):
        return "annotations without a box of 4 numbers"
    image = images[ann["image_id"]]
    x1, y1, x2, y2 = xywh_to_xyxy(box)
    if box[2] <= 0 or box[3] <= 0 or min(x2, image["width"]) <= max(x1, 0) or min(y2, image["height"]) <= max(y1, 0):
        return "annotations with an empty or degenerate box (no area inside the image)"
    if masks is False or (masks is None and not _has_segmentation(ann)):
        return None
    segmentation = ann.get("segmentation")
    if isinstance(segmentation, list) and segmentation:
        kept, _ = _clean_polygons(segmentation)
        if not kept:
            return "annotations whose polygons are all invalid (fewer than 3 points or zero area)"
    elif isinstance(segmentation, dict):
        return _check_rle(segmentation, image["height"], image["width"])
    else:
        return NO_MASK
    return None


def _note(split: CocoSplit, reason: str, example: str) -> None:
    split.skipped[reason] += 1
    split.examples.setdefault(reason, example)


def read_coco(annotation_file: str | Path, image_dir: str | Path, check_files: bool = True,
              masks: bool | None = True) -> CocoSplit:
    """Read and check a COCO instances file; see the module docstring for what is left out and what is an error.

    masks: True reads masks (annotations without a segmentation are left out); False boxes only (segmentations
    are dropped unchecked); None masks when any annotation has a segmentation, else boxes only.
    """
    annotation_file, image_dir = Path(annotation_file), Path(image_dir)
    data = _load_json(annotation_file)
    categories = sorted(data["categories"], key=lambda c: c["id"])
    split = CocoSplit(annotation_file, image_dir, categories, [], {})
    images: dict[int, dict] = {}
    for image in data["images"]:
        problem = _image_problem(image, image_dir, set(images), check_files)
        if problem:
            _note(split, problem, str(image.get("file_name", image) if isinstance(image, dict) else image)[:80])
        else:
            images[image["id"]] = image
    category_ids = set(split.category_ids)
    for ann in data.get("annotations") or []:
        problem = _annotation_problem(ann, images, category_ids, masks)
        if problem:
            _note(split, problem, f"annotation {ann.get('id') if isinstance(ann, dict) else ann!r}"[:80])
            continue
        ann = dict(ann, iscrowd=int(bool(ann.get("iscrowd", 0))))
        if masks is False or not _has_segmentation(ann):
            ann.pop("segmentation", None)
        elif isinstance(ann["segmentation"], list):
            ann["segmentation"], dropped = _clean_polygons(ann["segmentation"])
            if dropped:
                _note(split, "invalid polygon parts dropped from otherwise valid annotations", f"annotation "
                      f"{ann.get('id')}")
        if not isinstance(ann.get("area"), (int, float)) or ann["area"] <= 0:  # COCOeval's size ranges need it
            ann["area"] = _area(ann, images[ann["image_id"]])
        split.annotations.setdefault(ann["image_id"], []).append(ann)
    split.images = list(images.values())
    _settle_masks(split, masks)
    if not split.images:
        reasons = f": {split.describe_skipped()}" if split.skipped else ""
        raise ValueError(f"{annotation_file} has no usable image{reasons}.")
    return split


def _area(ann: dict, image: dict) -> float:
    """The mask's area in pixels (COCO's definition), or the box's when there is no mask."""
    if "segmentation" not in ann:
        return float(ann["bbox"][2] * ann["bbox"][3])
    return float(require_pycocotools().area(_to_rle(ann["segmentation"], image["height"], image["width"])))


def _settle_masks(split: CocoSplit, masks: bool | None) -> None:
    """Decide whether `split` has masks (None: when any kept annotation has one) and leave out, counted, the
    annotations that lack one when it has."""
    everything = [a for anns in split.annotations.values() for a in anns]
    split.masks = masks if masks is not None else any("segmentation" in a for a in everything)
    if not split.masks or all("segmentation" in a for a in everything):
        return
    for image_id, anns in list(split.annotations.items()):
        for ann in anns:
            if "segmentation" not in ann:
                _note(split, NO_MASK, f"annotation {ann.get('id')}")
        kept = [a for a in anns if "segmentation" in a]
        if kept:
            split.annotations[image_id] = kept
        else:
            del split.annotations[image_id]


def _drop_images(split: CocoSplit, keep: Any, reason: str) -> int:
    kept = [im for im in split.images if keep(im)]
    for image in split.images:
        if not keep(image):
            _note(split, reason, str(image["file_name"]))
    dropped, split.images = len(split.images) - len(kept), kept
    return dropped


def drop_unannotated(split: CocoSplit) -> int:
    """Leave out the images without a non-crowd annotation (nothing to learn from, as in torchvision's reference
    training); return how many."""
    return _drop_images(split, lambda im: any(not a["iscrowd"] for a in split.annotations.get(im["id"], [])),
                        "training images without a usable annotation")


def drop_too_thin(split: CocoSplit, min_size: int, max_size: int) -> int:
    """Leave out the images so elongated that the model's resize (shorter side to `min_size`, longer at most
    `max_size`) would leave their shorter side under 2 pixels (torchvision's resize fails on them); return how
    many."""

    def fits(image: dict) -> bool:
        short, long = sorted((image["width"], image["height"]))
        return short * min(min_size / short, max_size / long) >= 2

    return _drop_images(split, fits, f"images too elongated for the model's resize (to {min_size}, at most "
                                     f"{max_size})")


def aspect_ratio_groups(images: list[dict], k: int) -> list[int]:
    """Each image's aspect-ratio bin, as torchvision's references' `create_aspect_ratio_groups(dataset, k)`: the
    index of width / height among the sorted edges 2^linspace(-1, 1, 2k + 1) (k = 0: the one edge 1, portrait or
    landscape), so 2k + 2 groups; from the records' sizes, which a horizontal flip does not change."""
    edges = (2 ** np.linspace(-1, 1, 2 * k + 1)).tolist() if k > 0 else [1.0]
    return [bisect.bisect_right(edges, image["width"] / image["height"]) for image in images]


# -- the dataset ----------------------------------------------------------------------------------------------


class CocoDetection(torch.utils.data.Dataset):
    """(image (3, H, W) float in [0, 1], target) pairs of a checked split, with augmentation in training.

    The target holds `boxes` (N, 4) xyxy in pixels, `labels` (N,) in 1..K, `masks` (N, H, W) uint8 (training
    on a split with masks only: evaluation compares with the annotation file) and `image_id`. Training leaves
    crowd regions out and flips horizontally with probability `hflip`; with `scale_jitter` (large-scale jitter,
    LSJ) it rescales the image to `crop_size` x a random factor from that range and crops or pads it to
    `crop_size` squared. Other resizing (multi-scale training, the test size) is the model's (see
    models/detection.py).
    """

    def __init__(self, split: CocoSplit, train: bool, hflip: float = 0.5,
                 scale_jitter: tuple[float, float] | None = None, crop_size: int = 1024) -> None:
        self.split, self.train = split, train
        self.hflip, self.scale_jitter, self.crop_size = hflip, scale_jitter, crop_size
        self.label_of = {cid: i + 1 for i, cid in enumerate(split.category_ids)}

    def __len__(self) -> int:
        return len(self.split.images)

    def read_image(self, index: int) -> Image.Image | Unreadable:
        record = self.split.images[index]
        path = self.split.image_dir / record["file_name"]
        try:
            with Image.open(path) as image:
                image = image.convert("RGB")
        except (OSError, SyntaxError, ValueError) as error:
            return Unreadable(f"{path} ({type(error).__name__}: {error})")
        if image.size != (record["width"], record["height"]):
            return Unreadable(f"{path} (image is {image.width}x{image.height}, the annotations say "
                              f"{record['width']}x{record['height']})")
        return image

    def _target(self, record: dict, with_masks: bool) -> dict[str, torch.Tensor]:
        anns = [a for a in self.split.annotations.get(record["id"], []) if not a["iscrowd"]]
        h, w = record["height"], record["width"]
        boxes = torch.tensor([xywh_to_xyxy(a["bbox"]) for a in anns], dtype=torch.float32).reshape(-1, 4)
        boxes[:, 0::2] = boxes[:, 0::2].clamp(0, w)
        boxes[:, 1::2] = boxes[:, 1::2].clamp(0, h)
        target = {"boxes": boxes, "labels": torch.tensor([self.label_of[a["category_id"]] for a in anns],
                                                         dtype=torch.int64),
                  "image_id": torch.tensor(record["id"])}
        if with_masks:
            masks = [segmentation_to_mask(a["segmentation"], h, w) for a in anns]
            target["masks"] = torch.from_numpy(np.stack(masks)) if masks else torch.zeros(0, h, w, dtype=torch.uint8)
        return target

    def __getitem__(self, item: int | tuple[int, int]) -> Any:
        index, seed = item if isinstance(item, tuple) else (item, None)
        image = self.read_image(index)
        if isinstance(image, Unreadable):
            return image
        x = torch.from_numpy(np.array(image)).permute(2, 0, 1).float() / 255  # (3, H, W)
        target = self._target(self.split.images[index], with_masks=self.train and self.split.masks)
        if self.train:
            rng = random.Random(seed if seed is not None else index)
            if rng.random() < self.hflip:
                x, target = _hflip(x, target)
            if self.scale_jitter is not None:
                x, target = _large_scale_jitter(x, target, self.crop_size, self.scale_jitter, rng)
        return x, target


def _hflip(x: torch.Tensor, target: dict) -> tuple[torch.Tensor, dict]:
    width = x.shape[-1]
    boxes = target["boxes"].clone()
    boxes[:, [0, 2]] = width - target["boxes"][:, [2, 0]]
    flipped = {**target, "boxes": boxes}
    if "masks" in target:  # (a box-only split has none)
        flipped["masks"] = target["masks"].flip(-1)
    return x.flip(-1), flipped


def _large_scale_jitter(x: torch.Tensor, target: dict, size: int, ratio_range: tuple[float, float],
                        rng: random.Random) -> tuple[torch.Tensor, dict]:
    """Resize by size x U(ratio_range) / the longer side, then a random size x size crop (zero padded).

    Objects cropped to nothing (a box without area or an empty mask) are left out of the target. A target
    without masks (a box-only split) stays without.
    """
    h, w = x.shape[-2:]
    scale = size * rng.uniform(*ratio_range) / max(h, w)
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    top, left = rng.randint(0, max(0, nh - size)), rng.randint(0, max(0, nw - size))
    pad = (0, max(0, size - nw), 0, max(0, size - nh))
    x = F.interpolate(x[None], size=(nh, nw), mode="bilinear", align_corners=False)[0]  # (3, nh, nw)
    x = F.pad(x[:, top: top + size, left: left + size], pad)
    boxes = target["boxes"] * torch.tensor([nw / w, nh / h, nw / w, nh / h]) - torch.tensor([left, top, left, top])
    boxes[:, 0::2] = boxes[:, 0::2].clamp(0, min(size, nw - left))
    boxes[:, 1::2] = boxes[:, 1::2].clamp(0, min(size, nh - top))
    keep = (boxes[:, 2] > boxes[:, 0] + 1e-3) & (boxes[:, 3] > boxes[:, 1] + 1e-3)
    out = {**target, "boxes": boxes, "labels": target["labels"]}
    if "masks" in target:
        masks = F.interpolate(target["masks"][None].float(), size=(nh, nw), mode="nearest")[0].to(torch.uint8)
        out["masks"] = F.pad(masks[:, top: top + size, left: left + size], pad)
        keep &= out["masks"].flatten(1).sum(1) > 0
    return x, {k: v[keep] if k in ("boxes", "labels", "masks") else v for k, v in out.items()}
