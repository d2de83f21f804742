"""End-to-end training runs on a tiny generated dataset: learning, exact resume after SIGKILL, eval, predict, plot."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
import torch.nn.functional as F
import yaml

import weightformer
from train_helpers import tiny_config, tiny_dataset
from weightformer.cli.main import main
from weightformer.engine import fit
from weightformer.tasks.classification import ClassificationTask, train
from weightformer.tasks.classification.data import FolderDataset, eval_transform


def _train_loss(model, data_dir):
    dataset = FolderDataset(str(data_dir / "train"), transform=eval_transform(16, crop_pct=1.0))
    images = torch.stack([dataset[i][0] for i in range(len(dataset))])
    targets = torch.tensor([t for _, t in dataset.samples])
    model.eval()
    with torch.no_grad():
        return F.cross_entropy(model(images), targets).item()


def test_two_training_steps_lower_the_loss(tmp_path):
    data = tiny_dataset(tmp_path / "data")
    torch.manual_seed(0)
    init = weightformer.create_model("weightformer_tiny", num_classes=9, embed_dim=32, depth=3, patch_size=4)
    torch.save({"model": init.state_dict()}, tmp_path / "init.pth")
    cfg = tiny_config(data, tmp_path / "runs", batch_size=18, lr=1e-2, min_lr=1e-2, scale=[1.0, 1.0], smoothing=0.0,
                      model_kwargs=dict(embed_dim=32, depth=3, patch_size=4),
                      initial_checkpoint=str(tmp_path / "init.pth"))
    result = train(cfg)
    assert result["run_dir"] == tmp_path / "runs" / "synthetic"
    records = [json.loads(line) for line in (result["run_dir"] / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["kind"] == "train"] == [1, 2]
    assert _train_loss(result["model"], data) < _train_loss(init, data) - 0.02  # deterministic: no noise to beat


# 36 images, batch 4: 9 steps per epoch, a checkpoint every 2 steps; the signal lands in epoch 2 (or soon after).
_INTERRUPTED = dict(batch_size=4, epochs=4, checkpoint_interval=2, keep_checkpoints=3, drop_path=0.1)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """The tiny dataset and the weights of the run the interrupted runs below must reproduce."""
    root = tmp_path_factory.mktemp("uninterrupted")
    data = tiny_dataset(root / "data")
    return data, train(tiny_config(data, root / "ref", **_INTERRUPTED))["model"].state_dict()


def _start_and_signal(config_file, checkpoints, sig):
    """Start `weightformer train` in a subprocess; send `sig` once it has written step 12 (epoch 2, batch 3)."""
    process = subprocess.Popen([sys.executable, "-m", "weightformer", "train", "--config", str(config_file)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ})
    try:
        deadline = time.time() + 120
        while not (checkpoints / "step-00000012.pth").exists():
            assert process.poll() is None, process.stderr.read().decode()
            assert time.time() < deadline, "the training subprocess made no progress"
            time.sleep(0.002)
        process.send_signal(sig)
        out, err = process.communicate(timeout=120)
    finally:
        process.kill()
    return process.returncode, out.decode(), err.decode()


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_a_killed_or_preempted_run_resumes_to_identical_weights(tmp_path, uninterrupted, sig):
    data, reference = uninterrupted
    cfg = tiny_config(data, tmp_path / "runs", **_INTERRUPTED)
    config_file = tmp_path / "run.yaml"
    config_file.write_text(yaml.safe_dump(cfg.to_dict()))
    checkpoints = tmp_path / "runs" / "synthetic" / "checkpoints"
    code, out, err = _start_and_signal(config_file, checkpoints, sig)
    assert not (checkpoints / "step-00000036.pth").exists()  # stopped before the end of training
    latest = torch.load(checkpoints / "last.pth", weights_only=True)
    if sig == signal.SIGKILL:
        assert code == -signal.SIGKILL
        # last.pth follows step-12 a moment after it is written: the kill may land in between.
        assert latest["step"] in (10, 12) and latest["epoch"] == 1
        assert latest["samples_in_epoch"] > 0  # the resumption below starts mid-epoch
    else:  # what SLURM and cloud schedulers send: a checkpoint at the next step boundary, then exit 0
        assert code == 0, err
        assert "Stopped by SIGTERM" in out and f"Preempted at step {latest['step']}" in out
        assert 12 <= latest["step"] < 36 and "Traceback" not in err

    resumed = train(tiny_config(data, tmp_path / "runs", resume="auto", **_INTERRUPTED))
    assert resumed["run_dir"] == tmp_path / "runs" / "synthetic"
    state = resumed["model"].state_dict()
    assert state.keys() == reference.keys()
    for key in reference:
        assert torch.equal(state[key], reference[key]), key
    kept = sorted(p.name for p in checkpoints.glob("step-*.pth"))
    assert len(kept) == 3 and kept[-1] == "step-00000036.pth"  # pruned to keep_checkpoints
    assert (checkpoints / "best.pth").is_file()


class _RecordingTask(ClassificationTask):
    """The classification task, noting the targets its loss sees and the precision of the logits."""

    def build_model(self):
        model = super().build_model()
        self.targets, self.logit_dtypes = [], []
        model.head.register_forward_hook(lambda module, args, out: self.logit_dtypes.append(out.dtype))
        criterion = self.criterion
        self.criterion = lambda logits, targets: (self.targets.append(targets.detach()), criterion(logits, targets))[1]
        return model


def test_mixup_cutmix_fp16_and_tensorboard_on_the_classifier(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    data = tiny_dataset(tmp_path / "data")
    sorted((data / "train").rglob("*.png"))[7].write_bytes(b"")  # an empty file: unreadable
    sorted((data / "val").rglob("*.png"))[2].write_bytes(b"not a png")
    cfg = tiny_config(data, tmp_path / "runs", batch_size=4, mixup=0.8, cutmix=1.0, smoothing=0.1, amp=True,
                      amp_dtype="float16", tensorboard=True)
    task = _RecordingTask(cfg)
    result = fit(task)
    # The batch that held the unreadable image had 3 images: batch-mode Mixup pairs them, so one more is dropped,
    # and both are counted.
    assert (result["skipped_samples"], result["dropped_samples"]) == (1, 1)
    assert result["val_skipped_samples"] == 1 and result["val_images"] == 17
    assert all(t.ndim == 2 and len(t) % 2 == 0 for t in task.targets)  # soft targets (B, K), even batches
    mixed = torch.cat(task.targets)
    torch.testing.assert_close(mixed.sum(dim=1), torch.ones(len(mixed)))
    assert (mixed.max(dim=1).values < 0.85).any()  # two classes mixed in, not only label smoothing
    assert set(task.logit_dtypes[: len(task.targets)]) == {torch.float16}  # autocast in training
    last = torch.load(result["run_dir"] / "checkpoints" / "last.pth", weights_only=True)
    assert last["scaler"]["scale"] > 0 and last["counts"] == {"skipped_samples": 1, "dropped_samples": 1}

    events = EventAccumulator(str(result["run_dir"] / "tensorboard"))
    events.Reload()
    logged = [json.loads(line) for line in (result["run_dir"] / "metrics.jsonl").read_text().splitlines()]
    train_losses = [r["loss"] for r in logged if r["kind"] == "train"]
    assert [e.value for e in events.Scalars("train/loss")] == pytest.approx(train_losses, rel=1e-6)
    assert events.Scalars("epoch/val_top1")[0].value == pytest.approx(result["val_top1"], rel=1e-6)


def test_eval_predict_and_plot_on_a_trained_checkpoint(tmp_path, capsys):
    data = tiny_dataset(tmp_path / "data")
    result = train(tiny_config(data, tmp_path / "runs", epochs=2, batch_size=9))
    checkpoint = result["run_dir"] / "checkpoints" / "last.pth"
    capsys.readouterr()  # drop the training log

    assert main(["eval", str(checkpoint), "--data-dir", str(data), "--workers", "0", "--json"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    # The same model, transform and images as the run's own last evaluation.
    assert metrics["top1"] == pytest.approx(result["val_top1"]) and metrics["images"] == 18
    assert metrics["top5"] == pytest.approx(result["val_top5"])

    image = next((data / "val" / "circle-left-of-square").glob("*.png"))
    assert main(["predict", str(image), "--checkpoint", str(checkpoint)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == str(image) and len(lines) == 6
    assert all(line.strip().split()[-1] in result["class_names"] for line in lines[1:])

    assert main(["plot", str(result["run_dir"])]) == 0
    png = result["run_dir"] / "curves.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    assert main(["eval", str(checkpoint), "--data-dir", str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err
