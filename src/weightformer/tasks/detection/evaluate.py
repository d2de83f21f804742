"""COCO metrics of a detector: predictions as COCO results (boxes, RLE masks) scored by pycocotools' COCOeval.

Box AP and mask AP are COCOeval's own numbers (AP over IoU 0.50:0.95, AP50, AP75, AP for small / medium /
large objects), in percent as COCO results are quoted; on box-only data there is box AP alone. Only the images
that were evaluated count (an unreadable image is skipped and counted, not scored as all misses), against the
annotations `read_coco` kept. Under torch.distributed each rank predicts its share and rank 0 scores the joined
results (CocoMetric).

Evaluation runs in batches (`detect eval --batch-size`, the validation loop at the run's batch size): torchvision's
transform resizes each image on its own, then pads the batch to its largest image (rounded up to 32). Images of
one size, as the embedded dataset's, give the same predictions in any batch; images of different sizes see
more padding than alone, which the backbone's global statistics (WeightFormer's predictors pool over the padded
map, as attention attends to it) notice, so their predictions, and the AP, can move slightly with the batch size.
"""

from __future__ import annotations

import contextlib
import io
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ...engine.distributed import Dist, resolve_device
from ...engine.evaluation import evaluate
from ...engine.metrics import Metric
from ..loader import RunModel, load_run_model
from .data import CocoSplit, require_pycocotools

__all__ = ["METRIC_NAMES", "to_coco_results", "coco_metrics", "CocoMetric", "categories", "evaluate_checkpoint",
           "format_metrics", "predict_images"]

METRIC_NAMES = ("ap", "ap50", "ap75", "aps", "apm", "apl")  # COCOeval.stats[0:6]


def to_coco_results(output: dict[str, torch.Tensor], image_id: int, category_ids: list[int],
                    mask_threshold: float = 0.5) -> tuple[list[dict], list[dict]]:
    """One image's predictions -> (box results, mask results) in COCO's results format.

    output: `boxes` (N, 4) xyxy, `labels` (N,) in 1..K, `scores` (N,), optionally `masks` (N, 1, H, W) in [0, 1].
    Masks are thresholded at `mask_threshold` and run-length encoded with pycocotools (the RLE is what COCOeval
    scores; the box of a mask result is the mask's own).
    """
    mask_utils = require_pycocotools()
    boxes = output["boxes"].float().cpu().numpy()
    scores, labels = output["scores"].float().cpu().tolist(), output["labels"].cpu().tolist()
    xywh = np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=1).tolist()  # (N, 4)
    box_results = [{"image_id": image_id, "category_id": category_ids[label - 1], "bbox": [round(c, 2) for c in b],
                    "score": s} for b, label, s in zip(xywh, labels, scores, strict=True)]
    mask_results = []
    if "masks" in output:
        binary = (output["masks"][:, 0] > mask_threshold).cpu().numpy().astype(np.uint8)  # (N, H, W)
        rles = mask_utils.encode(np.asfortranarray(binary.transpose(1, 2, 0))) if len(binary) else []
        for rle, label, s in zip(rles, labels, scores, strict=True):
            mask_results.append({"image_id": image_id, "category_id": category_ids[label - 1], "score": s,
                                 "segmentation": {"size": rle["size"], "counts": rle["counts"].decode("ascii")}})
    return box_results, mask_results


def coco_metrics(ground_truth: dict[str, Any], results: list[dict], iou_type: str,
                 image_ids: list[int] | None = None) -> dict[str, float]:
    """COCOeval's AP, AP50, AP75, APs, APm, APl (percent; NaN where no object of that size exists) of `results`
    against the COCO dataset dict `ground_truth`, over `image_ids` (default: all its images)."""
    require_pycocotools()
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    if not results:  # COCO.loadRes cannot load an empty list: nothing detected scores 0
        return dict.fromkeys(METRIC_NAMES, 0.0)
    quiet = io.StringIO()  # pycocotools prints as it goes; our table comes from the numbers
    with contextlib.redirect_stdout(quiet):
        gt = COCO()
        gt.dataset = {"info": {}, **ground_truth}
        gt.createIndex()
        dt = gt.loadRes([dict(r) for r in results])  # loadRes adds fields (area, id) to what it gets
        evaluator = COCOeval(gt, dt, iou_type)
        if image_ids is not None:
            evaluator.params.imgIds = sorted(image_ids)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    stats = evaluator.stats[: len(METRIC_NAMES)]
    return {name: 100 * float(v) if v >= 0 else float("nan") for name, v in zip(METRIC_NAMES, stats, strict=True)}


class CocoMetric(Metric):
    """COCO box and mask AP (`bbox_*`, `segm_*`) of the detections of the images seen, scored by COCOeval; box AP
    alone (no `segm_*`) on a box-only split.

    The results are lists joined over processes; rank 0 alone runs COCOeval on the whole set."""

    compute_on_primary = True

    def __init__(self, split: CocoSplit) -> None:
        super().__init__()
        self.split = split
        self.add_state("boxes", [], reduce="cat")
        self.add_state("masks", [], reduce="cat")
        self.add_state("image_ids", [], reduce="cat")

    def update(self, outputs: list[dict[str, torch.Tensor]], targets: list[dict[str, Any]]) -> None:
        for output, target in zip(outputs, targets, strict=True):
            image_id = int(target["image_id"])
            if not self.split.masks:  # (a mask model scored on box-only data: its masks have nothing to meet)
                output = {k: v for k, v in output.items() if k != "masks"}
            boxes, masks = to_coco_results(output, image_id, self.split.category_ids)
            self.boxes += boxes
            self.masks += masks
            self.image_ids.append(image_id)

    def compute(self) -> dict[str, float]:
        ground_truth = self.split.ground_truth(self.image_ids)
        values = {f"bbox_{k}": v for k, v in coco_metrics(ground_truth, self.boxes, "bbox", self.image_ids).items()}
        if self.split.masks:
            mask = coco_metrics(ground_truth, self.masks, "segm", self.image_ids)
            values.update({f"segm_{k}": v for k, v in mask.items()})
        return {**values, "detections": len(self.boxes)}


def format_metrics(metrics: dict[str, float], prefix: str = "") -> str:
    """The table of COCO metrics, e.g. for `bbox_ap` ... `segm_apl` (or `val_bbox_ap` with a prefix): a box row,
    and a mask row when there are mask metrics."""
    header = f"{'':6}" + "".join(f"{name.upper():>8}" for name in METRIC_NAMES)
    rows = [header]
    for kind, title in (("bbox", "box"), ("segm", "mask")):
        if kind == "segm" and f"{prefix}segm_ap" not in metrics:
            continue
        values = [metrics.get(f"{prefix}{kind}_{name}", float("nan")) for name in METRIC_NAMES]
        rows.append(f"{title:6}" + "".join(f"{v:8.1f}" if v == v else f"{'-':>8}" for v in values))
    return "\n".join(rows)


def categories(run: RunModel) -> tuple[list[str], list[int]]:
    """(class names, COCO category ids) a detection checkpoint saved (numbered 1..K if it saved none)."""
    count = run.config.num_classes
    return (run.extras.get("class_names") or [str(i + 1) for i in range(count)],
            run.extras.get("category_ids") or list(range(1, count + 1)))


def evaluate_checkpoint(checkpoint: str | Path, data_dir: str | Path, split: str = "val2017", device: str = "auto",
                        batch_size: int = 1, workers: int = 0, ema: bool = True) -> dict[str, Any]:
    """COCO metrics of a checkpoint of `weightformer detect train` (its EMA weights unless `ema=False`) on
    <data_dir>/annotations/instances_<split>.json, `batch_size` images at a time (see the module docstring) read
    by `workers` processes; also returns what `read_coco` left out, as `left_out`.

    A box-only checkpoint, or a file without masks, gives box AP alone."""
    from ...engine.data import EpochSampler, make_loader
    from ...models.checkpoint import read_state_dict
    from .data import CocoDetection, drop_too_thin, read_coco, split_paths
    from .task import DetectionTask, _test_size

    state = read_state_dict(checkpoint)
    # A mask model scores masks where the file has them (None: decided by the file), a box model boxes only.
    # (The data is read before the model is built, so that a bad data folder is the error reported first.)
    coco = read_coco(*split_paths(data_dir, split), masks=None if state.get("masks") is not False else False)
    run = load_run_model(checkpoint, "detection", ema, state=state)
    model, cfg, (_, category_ids) = run.model, run.config, categories(run)
    drop_too_thin(coco, *_test_size(cfg))
    if coco.category_ids != category_ids:
        raise ValueError(f"The categories of {coco.annotation_file} ({coco.category_ids[:10]}) are not the "
                         f"checkpoint's ({category_ids[:10]}).")
    dataset = CocoDetection(coco, train=False)
    loader = make_loader(dataset, EpochSampler(len(dataset), shuffle=False), batch_size, workers, collate_lists)
    task = DetectionTask(cfg)
    task.val_split = coco
    dev = resolve_device(device)
    metrics = evaluate(task, model.to(dev), loader, Dist(device=dev))
    return {**metrics, "left_out": coco.describe_skipped()}


def collate_lists(samples: list[Any]) -> tuple[Any, int]:
    """(images, targets) lists: each image keeps its own size (the model batches and resizes)."""
    return ([s[0] for s in samples], [s[1] for s in samples]), len(samples)


@torch.no_grad()
def predict_images(checkpoint: str | Path, images: list[str | Path], out_dir: str | Path, threshold: float = 0.5,
                   device: str = "auto", ema: bool = True) -> list[tuple[Path, list[tuple[str, float, list[float]]]]]:
    """Detect objects in each image (with the checkpoint's EMA weights unless `ema=False`); draw boxes and masks
    of score >= `threshold` on it (enlarged to 256 pixels when smaller), to <out_dir>/<stem>-detections.png;
    return, per image, the PNG's path and its (class, score, xyxy box in the image's pixels) list."""
    from ..classification.evaluate import _open_image
    from .report import draw_detections

    dev = resolve_device(device)
    run = load_run_model(checkpoint, "detection", ema, dev)
    model, (names, _) = run.model, categories(run)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    results = []
    for path in images:
        image = _open_image(path)
        x = torch.from_numpy(np.array(image)).permute(2, 0, 1).float().div(255)  # (3, H, W) in [0, 1]
        output = {k: v.cpu() for k, v in model([x.to(dev)])[0].items()}
        keep = output["scores"] >= threshold
        boxes, labels, scores = output["boxes"][keep], output["labels"][keep], output["scores"][keep]
        masks = output["masks"][keep, 0] if "masks" in output else None  # (a box-only model draws boxes)
        drawn = draw_detections(image, boxes, labels, names, scores, masks,
                                scale=max(1.0, 256 / max(image.size)))  # small images enlarged: labels readable
        target = out_dir / f"{Path(path).stem}-detections.png"
        drawn.save(target)
        found = [(names[int(label) - 1], float(score), [round(c, 1) for c in box])
                 for box, label, score in zip(boxes.tolist(), labels.tolist(), scores.tolist(), strict=True)]
        results.append((target, found))
    return results
