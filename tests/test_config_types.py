"""Every config value is checked against its field's type and rule when the config is made (recipe, flags,
`from_dict`, constructor): a bad one is a ValueError that starts with the key, and on the command line one line
on stderr, exit code 2, and no run folder."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

import weightformer
from weightformer.cli.main import build_parser, main
from weightformer.engine import config as engine_config
from weightformer.engine.config import EngineConfig, field_checks
from weightformer.tasks.classification.config import ClassificationConfig
from weightformer.tasks.detection.config import DetectionConfig
from weightformer.tasks.generation.task import GenerationConfig
from weightformer.tasks.probes.task import ProbeConfig
from weightformer.tasks.segmentation.config import SegmentationConfig

CONFIG_CLASSES = [EngineConfig, ClassificationConfig, SegmentationConfig, DetectionConfig, GenerationConfig,
                  ProbeConfig]
RECIPES = Path(weightformer.__file__).parent / "configs"
RECIPE_CLASSES = {"": ClassificationConfig, "segmentation": SegmentationConfig, "detection": DetectionConfig,
                  "generation": GenerationConfig}  # recipe folder (under configs/) -> its config class

# Values of the wrong type for each declared type. A field whose type is not here fails the test: add the type.
WRONG_TYPE: dict[Any, list[Any]] = {
    int: ["x", 1.5, "1.5", True, [1], None, float("inf")],
    float: ["x", True, [0.1], None, float("nan"), "inf"],
    bool: ["maybe", 1, 0, "true", None, [True]],
    bool | None: ["maybe", 1, 0, "true", [True]],
    str: [5, 1.5, True, ["a"], None, {"a": 1}],
    str | None: [5, True, ["a"], {"a": 1}],
    float | None: ["x", True, [1.0], float("nan")],
    int | None: ["x", 1.5, True, [1]],
    int | str: [1.5, True, [1], None, {"a": 1}],
    list[float]: [0.9, "0.9", ["x"], [True], [None], None, {"a": 1}],
    list[int]: [5, "5", [1.5], ["x"], [True], None],
    list[str]: ["a", [1], [None], None],
    list[str] | None: [["a", 1], 5],  # ("a": a string for resume_override's comma form is tested below)
    list[float] | None: [0.5, ["x"], [True, 1.0]],
    dict[str, Any]: ["x", [1], {1: 2}, None, 5],
    dict[str, Any] | None: ["x", [1], {1: 2}, 5],
}


def _fields(cls: type) -> list[tuple[str, Any, engine_config.Rule]]:
    return [(name, tp, rule) for name, (tp, rule) in field_checks(cls).items()]


def _refusal(cls: type, key: str, value: Any) -> str:
    """The message of the ValueError that `cls` gives for `key: value`; fails if there is none."""
    with pytest.raises(ValueError) as error:
        cls.from_dict({key: value})
    return str(error.value)


@pytest.mark.parametrize("cls", CONFIG_CLASSES, ids=lambda c: c.__name__)
def test_every_field_refuses_values_of_the_wrong_type(cls):
    problems = []
    for name, tp, _ in _fields(cls):
        if tp not in WRONG_TYPE:
            problems.append(f"{name}: no wrong-typed example for {tp} in WRONG_TYPE")
            continue
        if name in ("resume_override", "logger"):  # a string is its comma form (--resume-override epochs,lr)
            continue
        for bad in WRONG_TYPE[tp]:
            try:
                cls.from_dict({name: bad})
                problems.append(f"{name}: {bad!r} accepted")
            except ValueError as error:
                if not str(error).startswith(f"{name} must be ") or f"got {bad!r}" not in str(error):
                    problems.append(f"{name}: {bad!r} refused with {error}")
    assert not problems, "\n".join(problems)


# Ranges stated for users: each value here must be refused (the message starts with the key).
OUT_OF_RANGE = [
    (EngineConfig, "epochs", [0, -1]), (EngineConfig, "batch_size", [0]), (EngineConfig, "accum_steps", [0]),
    (EngineConfig, "base_batch_size", [0]), (EngineConfig, "log_interval", [0]), (EngineConfig, "eval_interval", [0]),
    (EngineConfig, "warmup_epochs", [-1, -0.5]), (EngineConfig, "workers", [-1]), (EngineConfig, "threads", [-1]),
    (EngineConfig, "checkpoint_interval", [-1]), (EngineConfig, "keep_checkpoints", [-1]),
    (EngineConfig, "weight_decay", [-0.05]), (EngineConfig, "min_lr", [-1e-6]), (EngineConfig, "warmup_lr", [-1e-6]),
    (EngineConfig, "lr", [0, -1e-3]), (EngineConfig, "base_lr", [0]), (EngineConfig, "seed", [-1, 2**32]),
    (EngineConfig, "model_ema_decay", [1, 1.5, -0.1]), (EngineConfig, "betas", [[0.9, 1.0], [-0.1, 0.9], [0.9],
                                                                               [0.9, 0.99, 0.999]]),
    (EngineConfig, "clip_grad", [-1]), (EngineConfig, "layer_decay", [0, 1.5]), (EngineConfig, "opt_eps", [-1e-8]),
    (EngineConfig, "decay_rate", [0]), (EngineConfig, "decay_milestones", [[11, 8], [-1]]),
    (EngineConfig, "amp_dtype", ["float32", "fp16"]), (EngineConfig, "sched", ["linear", "step"]),
    (EngineConfig, "device", ["gpu", "cuda:0", "mps"]),
    (ClassificationConfig, "img_size", [0]), (ClassificationConfig, "drop_path", [1, -0.1]),
    (ClassificationConfig, "smoothing", [1, -0.1]), (ClassificationConfig, "mixup", [-0.8]),
    (ClassificationConfig, "cutmix", [-1]), (ClassificationConfig, "reprob", [1.5, -0.25]),
    (ClassificationConfig, "hflip", [1.5]), (ClassificationConfig, "mixup_prob", [2]),
    (ClassificationConfig, "mixup_switch_prob", [-0.5]), (ClassificationConfig, "color_jitter", [-0.4]),
    (ClassificationConfig, "recount", [0]), (ClassificationConfig, "crop_pct", [0, 1.2]),
    (ClassificationConfig, "scale", [[1.0, 0.08], [0.08], [0, 1.0], [0.08, 1.5]]),
    (ClassificationConfig, "mixup_mode", ["rows"]), (ClassificationConfig, "remode", ["zero"]),
    (ClassificationConfig, "interpolation", ["random", "cubic"]),
    (SegmentationConfig, "num_classes", [0]), (SegmentationConfig, "inference", ["sliding"]),
    (SegmentationConfig, "slide_stride", [0]), (SegmentationConfig, "ratio_range", [[2.0, 0.5], [0, 1.0]]),
    (SegmentationConfig, "scale", [[512], [0, 512]]), (SegmentationConfig, "hflip", [-0.5]),
    (SegmentationConfig, "drop_path", [1.0]), (SegmentationConfig, "crop_size", [0]),
    (DetectionConfig, "min_size", [[], [0]]), (DetectionConfig, "anchor_sizes", [[], [0, 32]]),
    (DetectionConfig, "scale_jitter", [[0.5], [0, 2.0]]), (DetectionConfig, "draw_threshold", [1.5, -0.1]),
    (DetectionConfig, "mask_convs", [0]), (DetectionConfig, "box_fcs", [0]), (DetectionConfig, "box_convs", [-1]),
    (DetectionConfig, "num_classes", [0]), (DetectionConfig, "max_size", [0]),
    (GenerationConfig, "judge_scheduler", ["euler"]), (GenerationConfig, "sample_steps", [0]),
    (GenerationConfig, "judge_samples_per_class", [-1]), (GenerationConfig, "samples_per_class", [0]),
    (GenerationConfig, "cfg_scale", [-1]), (GenerationConfig, "image_size", [0]), (GenerationConfig, "hflip", [2]),
    (ProbeConfig, "probe", ["nope"]), (ProbeConfig, "steps", [0]), (ProbeConfig, "val_images", [1]),
    # ProbeConfig changes these defaults only: the base class's rules still apply
    (ProbeConfig, "epochs", [0]), (ProbeConfig, "workers", [-1]), (ProbeConfig, "lr", [0]),
]


@pytest.mark.parametrize("cls, key, values", OUT_OF_RANGE, ids=[f"{c.__name__}.{k}" for c, k, _ in OUT_OF_RANGE])
def test_values_out_of_range_are_refused_naming_the_key(cls, key, values):
    for value in values:
        assert _refusal(cls, key, value).startswith(f"{key} must be "), value


def _outside(rule: engine_config.Rule) -> list[Any]:
    """Scalars just outside `rule`'s bounds or choices."""
    values = [rule.ge - 1 if rule.ge is not None else None, rule.gt, rule.lt, rule.le + 1 if rule.le is not None
              else None, "not-a-choice" if rule.choices is not None else None]
    return [v for v in values if v is not None]


def _on_the_edge(rule: engine_config.Rule) -> list[Any]:
    return [v for v in (rule.ge, rule.le) if v is not None]


@pytest.mark.parametrize("cls", CONFIG_CLASSES, ids=lambda c: c.__name__)
def test_every_declared_bound_and_choice_is_enforced_and_its_edges_admitted(cls):
    """Derived from the rules themselves: each bound refuses the value just past it and admits the bound."""
    defaults = cls()
    for name, _, rule in _fields(cls):
        is_list = isinstance(getattr(defaults, name), list)
        for value, admitted in [(v, False) for v in _outside(rule)] + [(v, True) for v in _on_the_edge(rule)]:
            value = [value] * (rule.length or 1) if is_list else value
            if admitted:
                assert getattr(cls.from_dict({name: value}), name) == value
            else:
                assert _refusal(cls, name, value).startswith(f"{name} must be "), (name, value)


def test_values_convert_where_the_meaning_is_exact():
    cfg = ClassificationConfig.from_dict(dict(epochs="1e2", batch_size=64.0, lr="1e-3", warmup_epochs="2",
                                              betas=(0.9, 0.95), keep_checkpoints="3", clip_grad=None, hflip=1))
    assert cfg.epochs == 100 and isinstance(cfg.epochs, int) and cfg.batch_size == 64 and isinstance(cfg.batch_size,
                                                                                                     int)
    assert cfg.lr == 1e-3 and cfg.warmup_epochs == 2.0 and cfg.betas == [0.9, 0.95] and cfg.keep_checkpoints == 3
    assert cfg.clip_grad is None and cfg.hflip == 1
    for key, value in [("epochs", "1.5"), ("epochs", 1.5), ("epochs", "1e400"), ("lr", "fast")]:
        assert _refusal(ClassificationConfig, key, value).startswith(f"{key} must be ")


def test_messages_say_what_is_expected_and_what_came():
    assert _refusal(EngineConfig, "epochs", "x") == "epochs must be an integer >= 1, got 'x'"
    assert _refusal(EngineConfig, "betas", 0.9) == "betas must be a list of 2 numbers in [0, 1), got 0.9"
    assert _refusal(EngineConfig, "amp", "maybe") == "amp must be true or false, got 'maybe'"
    assert _refusal(EngineConfig, "sched", "linear") == "sched must be cosine, constant or multistep, got 'linear'"
    assert _refusal(EngineConfig, "lr", -1) == "lr must be null or a number > 0, got -1"
    assert _refusal(EngineConfig, "run_name", 10) == "run_name must be null or a string, got 10 (quote it to make it " \
                                                     "a string)"


def test_cross_field_checks_and_resume_override():
    with pytest.raises(ValueError, match="^decay_milestones must list the epochs"):
        EngineConfig(sched="multistep")
    assert EngineConfig.from_dict({"resume_override": "epochs, lr"}).resume_override == ["epochs", "lr"]
    assert EngineConfig(resume_override=["all"]).resume_override == ["all"]
    assert ProbeConfig(resume_override=["world_size", "steps"]).resume_override == ["world_size", "steps"]
    with pytest.raises(ValueError, match="^resume_override must list config keys, world_size or all, got epoch$"):
        EngineConfig.from_dict({"resume_override": "epoch"})


def test_the_constructor_and_load_config_check_too():
    with pytest.raises(ValueError, match="^workers must be an integer >= 0, got -2"):
        ProbeConfig(workers=-2)
    with pytest.raises(ValueError, match="^epochs must be an integer >= 1, got 'x'"):
        engine_config.load_config(ClassificationConfig, RECIPES, "synthetic", epochs="x")


def test_a_field_of_a_type_the_checker_does_not_know_is_a_programming_error():
    @dataclasses.dataclass
    class Odd(EngineConfig):
        pair: tuple[int, int] = (1, 2)

    with pytest.raises(TypeError, match="not supported"):
        Odd()


def _recipe_files() -> list[Path]:
    return sorted(RECIPES.rglob("*.yaml"))


@pytest.mark.parametrize("path", _recipe_files(), ids=lambda p: str(p.relative_to(RECIPES)))
def test_every_bundled_recipe_loads_and_survives_a_checkpoint_round_trip(path):
    cls = RECIPE_CLASSES[str(path.parent.relative_to(RECIPES)).replace(".", "")]
    cfg = engine_config.load_config(cls, path.parent, path.stem)
    assert cls.from_dict(cfg.to_dict()) == cfg  # what evaluate.py does with a checkpoint's saved config


@pytest.mark.parametrize("cls", CONFIG_CLASSES, ids=lambda c: c.__name__)
def test_defaults_pass_their_own_checks(cls):
    assert cls.from_dict(cls().to_dict()) == cls()


# -- the command line ---------------------------------------------------------------------------------------------


def test_flags_are_checked_and_converted():
    args = build_parser().parse_args(["train", "--epochs", "1e2", "--warmup-epochs", "1e1", "--lr", "2e-3",
                                      "--run-name", "010", "--val-split", "2017", "--data-dir", "null",
                                      "--auto-augment", "'rand-m9'", "--amp", "no"])
    cfg = engine_config.config_from_args(args, ClassificationConfig, RECIPES)
    assert cfg.epochs == 100 and isinstance(cfg.epochs, int) and cfg.warmup_epochs == 10 and cfg.lr == 2e-3
    # String fields take the text as typed: YAML would make 010 the number 8 and 2017 an int.
    assert cfg.run_name == "010" and cfg.val_split == "2017" and cfg.data_dir is None
    assert cfg.auto_augment == "rand-m9" and cfg.amp is False


@pytest.mark.parametrize("argv, expected", [
    (["train", "--betas", "0.9"], "betas must be a list of 2 numbers in [0, 1), got 0.9"),
    (["train", "--amp", "maybe"], "amp must be true or false, got 'maybe'"),
    (["train", "--warmup-epochs", "-1"], "warmup_epochs must be a number >= 0, got -1"),
    (["train", "--epochs", "1.5"], "epochs must be an integer >= 1, got 1.5"),
    (["train", "--device", "gpu"], "device must be auto, cpu or cuda, got 'gpu'"),
    (["segment", "train", "--inference", "sliding"], "inference must be whole or slide, got 'sliding'"),
    (["detect", "train", "--min-size", "[]"], "min_size must be a non-empty list of integers >= 1, got []"),
    (["dit", "train", "--judge-scheduler", "euler"], "judge_scheduler must be ddpm, ddim or dpm++, got 'euler'"),
], ids=lambda x: x[-2] if isinstance(x, list) else None)
def test_a_bad_flag_is_one_line_exit_2_and_no_run_folder(argv, expected, tmp_path, capsys):
    # A missing data folder: were the value not refused, the run would stop at once (with another message).
    command = " ".join(argv[: next(i for i, word in enumerate(argv) if word.startswith("--"))])  # e.g. "segment train"
    argv = [*argv, "--output-dir", str(tmp_path / "runs"), "--data-dir", str(tmp_path / "no-data")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err == f"weightformer {command}: error: {expected}\n"
    assert list(tmp_path.iterdir()) == []
