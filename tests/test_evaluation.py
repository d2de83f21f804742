"""Evaluation as an engine step: every task's validation metrics are the same on one process and on two (gloo),
with an unreadable validation sample that only rank 1 sees; and the metric objects reduce as they should."""

from __future__ import annotations

import json
import math
import os
import socket
import warnings

import pytest
import torch
import torch.multiprocessing as mp
from torch.utils.data import Dataset

from weightformer.engine import Dist, EpochSampler, Mean, Unreadable, evaluate, make_loader
from weightformer.engine.metrics import Metric, compute_metrics, reduce_metrics

UNREADABLE = 1  # with two processes, sample 1 goes to rank 1 alone (rank r takes every second sample from r)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _task(name: str, root: str):
    """A small task of each kind on its embedded data, written under `root`."""
    if name == "classification":
        from weightformer.tasks.classification import ClassificationConfig, ClassificationTask

        cfg = ClassificationConfig.from_dict(dict(
            data_dir="synthetic", synthetic=dict(root=root, image_size=16, train_per_class=1, val_per_class=2),
            model="weightformer_tiny", model_kwargs=dict(embed_dim=16, depth=3, patch_size=4), img_size=16,
            mixup=0.0, cutmix=0.0, crop_pct=1.0))
        return ClassificationTask(cfg)
    if name == "probe":
        from weightformer.tasks.probes.task import ProbeConfig, ProbeTask

        cfg = ProbeConfig.from_dict(dict(resolution=32, val_images=9, steps=1, batch_size=2,
                                         sizes=dict(width=16, depth=3, patch=8)))
        return ProbeTask(cfg)
    if name == "segmentation":
        from weightformer.tasks.segmentation import SegmentationConfig, SegmentationTask

        cfg = SegmentationConfig.from_dict(dict(
            data_dir="synthetic", synthetic=dict(root=root, image_size=32, train_images=2, val_images=7),
            num_classes=4, backbone="weightformer_tiny", model_kwargs=dict(embed_dim=16, depth=3), out_channels=8,
            head_channels=8, scale=[32, 32], crop_size=32))
        return SegmentationTask(cfg)
    if name == "detection":
        from weightformer.tasks.detection import DetectionConfig, DetectionTask

        cfg = DetectionConfig.from_dict(dict(
            data_dir="synthetic", synthetic=dict(root=root, image_size=64, train_images=2, val_images=7),
            num_classes=3, backbone="weightformer_tiny", model_kwargs=dict(embed_dim=16, depth=3), out_channels=8,
            head_channels=8, box_fc=16, min_size=[64], max_size=64,
            # An untrained detector's boxes: keep every one, so that COCOeval has something to score.
            rcnn=dict(box_score_thresh=0.0, box_detections_per_img=20, rpn_post_nms_top_n_test=50)))
        return DetectionTask(cfg)
    if name == "generation":
        from weightformer.tasks.generation.task import GenerationConfig, GenerationTask

        cfg = GenerationConfig.from_dict(dict(
            data_dir="synthetic", synthetic=dict(root=root, image_size=16, train_per_class=1, val_per_class=2),
            image_size=16, model="weightformer_dit_s_2", model_kwargs=dict(hidden_size=24, depth=2, num_heads=2)))
        return GenerationTask(cfg)
    raise KeyError(name)


TASKS = ["classification", "probe", "segmentation", "detection", "generation"]


class _OneUnreadable(Dataset):
    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, item):
        index = item[0] if isinstance(item, tuple) else item
        return Unreadable(f"sample {index} (made unreadable by the test)") if index == UNREADABLE else \
            self.dataset[item]


def _evaluate(name: str, root: str, model_path: str, d: Dist) -> dict:
    task = _task(name, root)
    task.prepare_data()
    val = _OneUnreadable(task.build_datasets(d).val)
    model = task.build_model()
    model.load_state_dict(torch.load(model_path, weights_only=True))
    sampler = EpochSampler(len(val), shuffle=False, rank=d.rank, world_size=d.world_size)
    loader = make_loader(val, sampler, 2, 0, lambda samples: task.collate(samples, train=False))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the unreadable sample's warning; its count is checked
        return evaluate(task, model, loader, d)


def _rank(rank: int, port: int, names: list[str], root: str, out: str) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    import torch.distributed as dist

    dist.init_process_group("gloo")
    try:
        d = Dist(rank=rank, local_rank=rank, world_size=2)
        results = {name: _evaluate(name, root, os.path.join(out, f"{name}.pt"), d) for name in names}
        with open(os.path.join(out, f"rank{rank}.json"), "w") as f:
            json.dump(results, f)
    finally:
        dist.destroy_process_group()


def test_every_task_scores_the_same_on_one_and_two_processes(tmp_path):
    root, out = str(tmp_path / "data"), str(tmp_path)
    single = {}
    for name in TASKS:
        task = _task(name, root)
        task.prepare_data()
        task.build_datasets(Dist())
        torch.manual_seed(0)
        torch.save(task.build_model().state_dict(), tmp_path / f"{name}.pt")
        single[name] = _evaluate(name, root, str(tmp_path / f"{name}.pt"), Dist())
    mp.start_processes(_rank, args=(_free_port(), TASKS, root, out), nprocs=2, start_method="spawn")
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    for name in TASKS:
        assert json.dumps(ranks[1][name]) == json.dumps(ranks[0][name]), f"{name}: the two ranks disagree"
        one, two = single[name], ranks[0][name]
        one.pop("images_per_second"), two.pop("images_per_second")
        assert one["skipped_samples"] == two["skipped_samples"] == 1, name
        assert one["images"] == two["images"] > 2, name
        assert one.keys() == two.keys(), name
        for key, value in one.items():
            if isinstance(value, float) and math.isnan(value):
                assert math.isnan(two[key]), (name, key)
            else:
                assert two[key] == pytest.approx(value, rel=1e-5, abs=1e-6), (name, key, value, two[key])
    # The tasks' own metrics are there: a test of nothing would pass on {"images", "skipped_samples"} alone.
    assert {"top1", "top5", "loss"} <= single["classification"].keys()
    assert {"miou", "macc", "aacc"} <= single["segmentation"].keys()
    assert {"bbox_ap", "segm_ap", "detections"} <= single["detection"].keys()
    assert single["detection"]["detections"] > 0
    assert {"loss", "mse"} <= single["generation"].keys()


def test_no_readable_sample_is_one_line(tmp_path):
    loader = [_collated_unreadable()]
    with pytest.raises(ValueError, match=r"No readable images to evaluate \(1 unreadable\)"), \
            pytest.warns(UserWarning):
        evaluate(_MeanTask(), torch.nn.Identity(), loader, Dist())


def _collated_unreadable():
    from weightformer.engine import Collated

    return Collated(None, 0, ["sample 0 (broken)"], 0)


class _MeanTask:
    def validation_metrics(self):
        return {"mean": Mean("value")}

    def validation_step(self, model, batch, metrics):
        metrics["mean"].update(model(batch))


def test_evaluation_honours_amp_dtype_and_restores_training_mode():
    from weightformer.engine import Collated

    seen = []

    class Recorder(torch.nn.Module):
        def forward(self, x):
            seen.append((torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu"), self.training))
            return x.sum(dim=1)

    model = Recorder().train()
    batch = torch.arange(6.0, dtype=torch.float64).reshape(3, 2)  # per-sample sums 1, 5, 9
    values = evaluate(_MeanTask(), model, [Collated(batch, 3, [], 0)], Dist(), torch.bfloat16)
    assert seen == [(True, torch.bfloat16, False)]
    assert model.training
    assert values["value"] == pytest.approx(5.0) and values["images"] == 3


class _Lists(Metric):
    compute_on_primary = True

    def __init__(self) -> None:
        super().__init__()
        self.add_state("items", [], reduce="cat")
        self.add_state("total", torch.zeros(2))

    def update(self, items: list, values: torch.Tensor) -> None:
        self.items += items
        self.total += values

    def compute(self) -> dict:
        return {"items": sorted(self.items), "total": self.total.tolist()}


def _reduce_rank(rank: int, port: int, out: str) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    import torch.distributed as dist

    dist.init_process_group("gloo")
    try:
        d = Dist(rank=rank, local_rank=rank, world_size=2)
        lists, mean = _Lists(), Mean("m")
        lists.update([f"r{rank}a", f"r{rank}b"][: rank + 1], torch.tensor([1.0, rank + 0.5]))
        mean.update(torch.tensor([float(rank)] * (rank + 2)))  # rank 0: 0, 0; rank 1: 1, 1, 1
        reduce_metrics([lists, mean], d)
        with open(os.path.join(out, f"reduce{rank}.json"), "w") as f:
            json.dump(compute_metrics([lists, mean], d), f)
    finally:
        dist.destroy_process_group()


def test_metric_states_sum_and_join_over_processes(tmp_path):
    mp.start_processes(_reduce_rank, args=(_free_port(), str(tmp_path)), nprocs=2, start_method="spawn")
    for rank in (0, 1):
        values = json.loads((tmp_path / f"reduce{rank}.json").read_text())
        assert values["items"] == ["r0a", "r1a", "r1b"]  # joined; computed on rank 0 and broadcast
        assert values["total"] == [2.0, 2.0]
        assert values["m"] == pytest.approx(3 / 5)
