"""Publishing any task's model (`weightformer export-weights`, `weightformer.from_pretrained`): safetensors (EMA by
default), a config.json that rebuilds the model without the checkpoint or data, a model card with the run's
metrics; round trips give the very outputs of the checkpoint's model; bad input is refused in one line."""

from __future__ import annotations

import json

import pytest
import timm
import torch

from test_registry import write_checkpoint
from weightformer import from_pretrained
from weightformer.cli.main import main
from weightformer.models import CheckpointMismatchError, save_pretrained
from weightformer.tasks import TaskSpec, export_weights, load_pretrained, load_run_model, register, unregister

ROUND_TRIP = ["classification", "segmentation", "detection", "generation", "probe"]


def _outputs(model: torch.nn.Module, task: str) -> list[torch.Tensor]:
    """The model's outputs on a fixed input of its task, as a flat list of tensors."""
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        if task == "generation":
            x = torch.randn(2, model.in_channels, 8, 8, generator=gen)
            return [model(x, torch.tensor([3, 700]), torch.tensor([0, 2]))]
        if task == "detection":  # Mask R-CNN: one dict of boxes, labels, scores, masks per image
            images = [torch.rand(3, 64, 64, generator=gen), torch.rand(3, 48, 64, generator=gen)]
            return [v for found in model(images) for v in found.values()] + list(model.rcnn.backbone(
                torch.rand(1, 3, 64, 64, generator=gen)).values())
        size = {"classification": 16, "segmentation": 64, "probe": 32}[task]
        return [model(torch.randn(2, 3, size, size, generator=gen))]


def _assert_same(a: list[torch.Tensor], b: list[torch.Tensor]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert torch.equal(x, y)


@pytest.mark.parametrize("task", ROUND_TRIP)
def test_every_task_round_trips_through_an_exported_folder(task, tmp_path):
    path, _, averaged = write_checkpoint(tmp_path / "run.pth", task)
    exported = export_weights(path, tmp_path / "out")
    assert exported.ema and exported.task.name == task and exported.step == 3
    files = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert files == ["README.md", "config.json", "model.safetensors"]
    model = from_pretrained(tmp_path / "out", device="cpu")
    assert not model.training
    state = model.state_dict()
    assert state.keys() == averaged.keys() and all(torch.equal(state[k], v) for k, v in averaged.items())
    _assert_same(_outputs(model, task), _outputs(load_run_model(path).model, task))
    run = load_pretrained(tmp_path / "out", task)  # with its config and extras
    assert run.ema and type(run.config) is type(load_run_model(path).config)
    assert run.extras.get("class_names") == load_run_model(path).extras.get("class_names")


def test_no_ema_exports_the_trained_weights(tmp_path):
    path, weights, _ = write_checkpoint(tmp_path / "run.pth", "generation")
    assert not export_weights(path, tmp_path / "out", ema=False).ema
    state = from_pretrained(tmp_path / "out").state_dict()
    assert all(torch.equal(state[k], v) for k, v in weights.items())
    assert json.loads((tmp_path / "out" / "config.json").read_text())["weightformer"]["weights"] == "trained"


def test_the_classifier_folder_is_still_timms_hub_layout(tmp_path):
    path, _, _ = write_checkpoint(tmp_path / "run.pth", "classification")
    export_weights(path, tmp_path / "out")
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["architecture"] == "weightformer_tiny" and config["num_classes"] == 5
    assert config["label_names"] == [f"c{i}" for i in range(5)]
    timm_model = timm.create_model(f"local-dir:{tmp_path / 'out'}", pretrained=True).eval()
    _assert_same(_outputs(timm_model, "classification"), _outputs(load_run_model(path).model, "classification"))
    card = (tmp_path / "out" / "README.md").read_text()
    assert "pipeline_tag: image-classification" in card and "local-dir:out" in card


@pytest.fixture
def numbers_task():
    spec = register(TaskSpec("numbers", "numbers", "engine_helpers", "NumbersConfig", "NumbersTask",
                             help="regress numbers"))
    yield spec
    unregister(spec.name)


def test_export_weights_of_a_trained_run_takes_its_best_checkpoint_and_logged_metrics(numbers_task, tmp_path,
                                                                                      capsys):
    argv = ["numbers", "train", "--output-dir", str(tmp_path), "--epochs", "2", "--batch-size", "3", "--workers",
            "0", "--warmup-epochs", "0", "--amp", "false", "--progress", "false", "--tensorboard", "false",
            "--model-ema", "true", "--lr", "0.05"]
    assert main(argv) == 0
    run_dir = tmp_path / "custom"
    epochs = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    epochs = [line for line in epochs if line["kind"] == "epoch"]
    best = torch.load(run_dir / "checkpoints" / "best.pth", weights_only=True)
    logged = next(line for line in epochs if line["step"] == best["step"])
    capsys.readouterr()
    assert main(["export-weights", str(run_dir), "-o", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert "Exported the EMA weights of" in out and "best.pth, the run's best validation checkpoint" in out
    card = (tmp_path / "out" / "README.md").read_text()
    assert f"| val_ema_loss | {logged['val_ema_loss']:.6g} |" in card and f"step {best['step']}" in card
    config = json.loads((tmp_path / "out" / "config.json").read_text())["weightformer"]
    assert config["metrics"]["val_loss"] == logged["val_loss"] and config["source"]["step"] == best["step"]
    model = from_pretrained(tmp_path / "out", "numbers")
    expected = load_run_model(run_dir / "checkpoints" / "best.pth").model
    assert torch.equal(model.weight, expected.weight) and torch.equal(model.bias, expected.bias)
    (run_dir / "checkpoints" / "best.pth").unlink()  # no evaluation yet: the latest checkpoint, said so
    assert main(["export-weights", str(run_dir), "-o", str(tmp_path / "last"), "--no-ema", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["chosen"].startswith("last.pth") and result["weights"] == "trained"


def _fails(argv: list[str], capsys) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    return err


def test_bad_input_is_refused_in_one_line(tmp_path, capsys):
    (tmp_path / "noise.pth").write_bytes(b"\x00not a checkpoint" * 8)
    assert "noise.pth is not a checkpoint" in _fails(["export-weights", str(tmp_path / "noise.pth"), "-o",
                                                      str(tmp_path / "x")], capsys)
    assert not (tmp_path / "x").exists()
    (tmp_path / "empty-run").mkdir()
    assert "empty-run is not a run folder" in _fails(["export-weights", str(tmp_path / "empty-run"), "-o",
                                                      str(tmp_path / "x")], capsys)
    torch.save({"model": torch.nn.Linear(2, 2).state_dict()}, tmp_path / "weights.pth")
    assert "not a training checkpoint of this package" in _fails(
        ["export-weights", str(tmp_path / "weights.pth"), "-o", str(tmp_path / "x")], capsys)
    seg, _, _ = write_checkpoint(tmp_path / "seg.pth", "segmentation")
    (tmp_path / "file").write_text("")
    assert "is a file: -o names the folder" in _fails(["export-weights", str(seg), "-o", str(tmp_path / "file")],
                                                      capsys)
    export_weights(seg, tmp_path / "seg")
    assert "is an exported folder already" in _fails(["export-weights", str(tmp_path / "seg"), "-o",
                                                      str(tmp_path / "x")], capsys)


def test_from_pretrained_refuses_another_task_a_missing_config_and_other_weights(tmp_path):
    seg, _, _ = write_checkpoint(tmp_path / "seg.pth", "segmentation")
    export_weights(seg, tmp_path / "seg")
    with pytest.raises(ValueError, match="seg holds a segmentation model, not a detection one"):
        from_pretrained(tmp_path / "seg", task="detection")
    classifier = save_pretrained(timm.create_model("weightformer_tiny", embed_dim=16, depth=2), tmp_path / "cls")
    with pytest.raises(ValueError, match=r"cls holds a classifier \(timm's or the release's Hub layout\), not a "
                                         "WeightFormer-DiT model"):
        from_pretrained(classifier, task="generation")
    with pytest.raises(ValueError, match="not written by `weightformer export-weights`"):
        load_pretrained(classifier)
    (tmp_path / "seg" / "model.safetensors").replace(tmp_path / "seg.safetensors")
    (classifier / "model.safetensors").replace(tmp_path / "seg" / "model.safetensors")  # another architecture
    with pytest.raises(CheckpointMismatchError, match="seg/model.safetensors does not fit this"):
        from_pretrained(tmp_path / "seg")
    (tmp_path / "seg" / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match="seg has no config.json"):
        from_pretrained(tmp_path / "seg")
    with pytest.raises(ValueError, match="seg.pth is a file, not a Hub folder"):
        from_pretrained(seg)
