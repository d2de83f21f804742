"""The task registry and what derives from it: recipes, the one checkpoint loader (EMA weights by default, for
every task), the command line (verbs, shortcuts, flags that mean the same everywhere), timm baselines through
the same engine, and a task added with one registry line."""

from __future__ import annotations

import argparse
import json

import pytest
import torch

from train_helpers import tiny_dataset
from weightformer.cli.main import build_parser, main
from weightformer.engine.distributed import DEVICES
from weightformer.tasks import (
    TaskSpec,
    get_task,
    list_recipes,
    load_config,
    load_run_model,
    register,
    tasks,
    unregister,
)

# Tiny models of every task, as the task's config describes them (recipe, overrides) and the extras its
# checkpoints save beside the weights.
TINY = {
    "classification": ("synthetic", dict(model_kwargs=dict(embed_dim=16, depth=3, patch_size=4), img_size=16),
                       dict(class_names=[f"c{i}" for i in range(5)])),
    "segmentation": ("synthetic", dict(model_kwargs=dict(embed_dim=16, depth=2), out_channels=8, head_channels=8),
                     {}),
    "detection": ("synthetic", dict(model_kwargs=dict(embed_dim=16, depth=2), out_channels=8, head_channels=8,
                                    box_fc=16, min_size=[64], max_size=64), dict(class_names=["a", "b", "c"])),
    "generation": ("synthetic", dict(model_kwargs=dict(hidden_size=16, depth=2, mlp_ratio=2.0), image_size=8),
                   dict(class_names=["a", "b", "c"])),
    "probe": (None, dict(model="static", sizes=dict(width=16, depth=2, patch=4), resolution=32), {}),
}


def write_checkpoint(path, task: str, ema: bool = True, **overrides):
    """A checkpoint in the engine's layout, built by hand: trained weights, and EMA weights that differ."""
    recipe, values, extras = TINY[task]
    spec = get_task(task)
    cfg = load_config(spec, recipe, **{**values, **overrides})
    torch.manual_seed(0)
    weights = spec.build_checkpoint_model(cfg, extras).state_dict()
    averaged = {f"module.{k}": v + 1 if v.is_floating_point() else v for k, v in weights.items()}
    torch.save(dict(model=weights, ema=averaged if ema else None, optimizer={}, epoch=1, step=3,
                    config=cfg.to_dict(), task=spec.name, **extras), path)
    return path, weights, {k.removeprefix("module."): v for k, v in averaged.items()}


def _assert_weights(model, expected):
    state = model.state_dict()
    assert state.keys() == expected.keys()
    for name, value in expected.items():
        assert torch.equal(state[name], value), name


def test_every_task_is_declared_once_with_its_recipes():
    names = [spec.name for spec in tasks()]
    assert names == ["classification", "segmentation", "detection", "generation", "probe"]
    assert [spec.command for spec in tasks()] == ["classify", "segment", "detect", "dit", "probe"]
    for spec in tasks():
        assert spec.task_class.name == spec.name  # what the engine saves under "task"
        if spec.default_recipe is not None:
            assert spec.default_recipe in list_recipes(spec)
            assert isinstance(load_config(spec), spec.config_class)
    assert {"tiny", "small", "base", "synthetic"} <= set(list_recipes("classification"))
    assert load_config("detection", "coco-3x").epochs == 36
    with pytest.raises(ValueError, match="Unknown task 'nope'"):
        load_config("nope")


@pytest.mark.parametrize("task", sorted(TINY))
def test_every_task_loads_ema_weights_by_default_and_trained_ones_on_request(task, tmp_path):
    path, weights, averaged = write_checkpoint(tmp_path / "run.pth", task)
    run = load_run_model(path)
    assert run.task.name == task and run.ema and isinstance(run.config, run.task.config_class)
    assert not run.model.training and run.extras["step"] == 3
    _assert_weights(run.model, averaged)
    run = load_run_model(path, task, ema=False)
    assert not run.ema
    _assert_weights(run.model, weights)


def test_without_ema_weights_the_trained_ones_load(tmp_path):
    path, weights, _ = write_checkpoint(tmp_path / "run.pth", "classification", ema=False)
    run = load_run_model(path)
    assert not run.ema
    _assert_weights(run.model, weights)


def test_the_loader_refuses_other_files_in_one_line(tmp_path):
    path, _, _ = write_checkpoint(tmp_path / "seg.pth", "segmentation")
    with pytest.raises(ValueError, match="seg.pth is a segmentation checkpoint, not a detection one: pass a "
                                         "checkpoint written by `weightformer detect train`"):
        load_run_model(path, "detection")
    torch.save({"model": torch.nn.Linear(2, 2).state_dict()}, tmp_path / "weights.pth")
    with pytest.raises(ValueError, match="not a training checkpoint of this package, not a WeightFormer-DiT one"):
        load_run_model(tmp_path / "weights.pth", "generation")
    state = torch.load(path, weights_only=True)
    torch.save({**state, "task": "painting"}, tmp_path / "painting.pth")
    with pytest.raises(ValueError, match="painting.pth: Unknown task 'painting'"):
        load_run_model(tmp_path / "painting.pth")


def test_checkpoints_that_name_no_task_are_classification_ones(tmp_path):
    path, _, averaged = write_checkpoint(tmp_path / "run.pth", "classification")
    state = torch.load(path, weights_only=True)
    del state["task"]
    torch.save(state, tmp_path / "old.pth")
    run = load_run_model(tmp_path / "old.pth")
    assert run.task.name == "classification"
    _assert_weights(run.model, averaged)


def _leaf_parsers(parser: argparse.ArgumentParser, prog: str = "weightformer"):
    """(command as typed, parser) of every command that runs."""
    actions = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not actions:
        yield prog, parser
        return
    for name, sub in actions[0].choices.items():
        yield from _leaf_parsers(sub, f"{prog} {name}")


def test_flags_mean_the_same_in_every_command():
    leaves = dict(_leaf_parsers(build_parser()))
    for verb in ("train", "eval", "predict"):  # a shortcut has the very flags of its task's verb
        shortcut, verb = leaves[f"weightformer {verb}"], leaves[f"weightformer classify {verb}"]
        assert [(a.option_strings, a.dest, a.default) for a in shortcut._actions] == \
            [(a.option_strings, a.dest, a.default) for a in verb._actions]
    runs_a_model = [p for p in leaves if p.split()[-1] in ("eval", "predict", "sample", "fid", "extract")]
    runs_a_model += ["weightformer bench", "weightformer erf", "weightformer probe"]
    for prog, parser in leaves.items():
        flags = {s: a for a in parser._actions for s in a.option_strings}
        if "--json" in flags:
            assert flags["--json"].nargs == 0, prog  # a flag: files are -o's
        if "-o" in flags or "--output" in flags or "--out" in flags:
            assert flags["-o"] is flags["--output"] is flags["--out"], prog
            assert flags["-o"].dest == "output", prog
        if prog in runs_a_model:
            assert tuple(flags["--device"].choices) == DEVICES, prog
        if prog.split()[-1] in ("eval", "predict", "sample", "fid"):
            assert flags["--ema"].default is True and "--no-ema" in flags, prog


def test_usage_errors_name_the_command_and_verb(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["segment", "eval", "x.pth", "--data-dir", "d", "--bogus"])
    assert exit_.value.code == 2
    assert capsys.readouterr().err.startswith("weightformer segment eval: error: unrecognized arguments: --bogus")


def test_classify_predict_takes_the_ema_weights_unless_told_otherwise(tmp_path, capsys):
    path, _, _ = write_checkpoint(tmp_path / "run.pth", "classification")
    image = next((tiny_dataset(tmp_path / "data") / "val").rglob("*.png"))
    printed = {}
    for argv in (["classify", "predict"], ["predict"], ["classify", "predict", "--no-ema"]):
        assert main([*argv, str(image), "--checkpoint", str(path), "--device", "cpu", "--top-k", "5"]) == 0
        printed[" ".join(argv)] = capsys.readouterr().out
    assert printed["classify predict"] == printed["predict"] != printed["classify predict --no-ema"]


def test_a_timm_baseline_trains_through_the_same_engine_and_evaluates(tmp_path, capsys):
    data = tiny_dataset(tmp_path / "data")
    argv = ["train", "--model", "deit_tiny_patch16_224", "--model-kwargs", "{patch_size: 4, depth: 1, embed_dim: 16, "
            "num_heads: 2}", "--img-size", "16", "--data-dir", str(data), "--output-dir", str(tmp_path / "runs"),
            "--epochs", "1", "--batch-size", "9", "--workers", "0", "--progress", "false", "--tensorboard", "false",
            "--model-ema", "true", "--crop-pct", "1.0"]
    assert main(argv) == 0
    assert "Done: val top-1" in capsys.readouterr().out
    checkpoint = tmp_path / "runs" / "synthetic" / "checkpoints" / "last.pth"
    run = load_run_model(checkpoint)
    assert type(run.model).__name__ == "VisionTransformer" and len(run.model.blocks) == 1 and run.ema
    assert main(["eval", str(checkpoint), "--data-dir", str(data), "--workers", "0", "--json", "--device", "cpu"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["model"] == "deit_tiny_patch16_224" and metrics["images"] == 18
    image = next((data / "val").rglob("*.png"))
    assert main(["classify", "predict", str(image), "--checkpoint", str(checkpoint)]) == 0


def test_convolutional_timm_models_are_built_without_img_size():
    from weightformer.models import create_model

    model = create_model("test_resnet", num_classes=3, img_size=32, drop_path_rate=0.1)
    assert model.eval()(torch.randn(1, 3, 32, 32)).shape == (1, 3)


@pytest.fixture
def numbers_task():
    """The engine tests' NumbersTask, added with one registry line (and removed afterwards)."""
    spec = register(TaskSpec("numbers", "numbers", "engine_helpers", "NumbersConfig", "NumbersTask",
                             help="regress numbers"))
    yield spec
    unregister(spec.name)


def test_a_task_added_with_one_registry_line_gets_its_command_and_its_checkpoints_load(numbers_task, tmp_path,
                                                                                        capsys):
    assert "numbers" in build_parser().format_help()
    with pytest.raises(ValueError, match="clashes"):
        register(TaskSpec("numbers", "other", "engine_helpers", "NumbersConfig", "NumbersTask", help=""))
    argv = ["numbers", "train", "--output-dir", str(tmp_path), "--epochs", "1", "--batch-size", "3", "--workers",
            "0", "--warmup-epochs", "0", "--amp", "false", "--progress", "false", "--tensorboard", "false",
            "--model-ema", "true", "--lr", "0.05"]
    assert main(argv) == 0
    assert "Done: val loss" in capsys.readouterr().out
    run = load_run_model(tmp_path / "custom" / "checkpoints" / "last.pth", "numbers")
    assert isinstance(run.model, torch.nn.Linear) and run.ema and type(run.config).__name__ == "NumbersConfig"
    with pytest.raises(ValueError, match="is a numbers checkpoint, not a classification one"):
        load_run_model(tmp_path / "custom" / "checkpoints" / "last.pth", "classification")
