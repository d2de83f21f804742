"""Every command answers bad input (missing, empty, corrupt or wrong-kind files and values) in one line naming
the file and the problem: exit code 2, no traceback, nothing written."""

from __future__ import annotations

import pytest
import torch

from gen_helpers import write_dit_checkpoint
from train_helpers import tiny_config, tiny_dataset
from weightformer.cli.main import main
from weightformer.tasks import tasks
from weightformer.tasks.classification import train


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A trained checkpoint, its dataset, and a shelf of bad files."""
    root = tmp_path_factory.mktemp("files")
    data = tiny_dataset(root / "data")
    run = train(tiny_config(data, root / "runs", epochs=1, batch_size=9))
    bad = root / "bad"
    bad.mkdir()
    (bad / "empty.pth").write_bytes(b"")
    (bad / "random.pth").write_bytes(bytes(range(256)) * 8)
    good = (run["run_dir"] / "checkpoints" / "last.pth").read_bytes()
    (bad / "truncated.pth").write_bytes(good[: len(good) // 2])
    torch.save({"model": {"weight": torch.ones(1)}, "extra": torch.nn.Identity()}, bad / "pickled.pth")
    torch.save({"model": torch.nn.Linear(3, 2).state_dict()}, bad / "other-architecture.pth")
    write_dit_checkpoint(bad / "dit.pth")
    write_dit_checkpoint(bad / "dit-latent.pth", vae="ema")
    (bad / "empty.yaml").write_text("")
    (bad / "corrupt.yaml").write_text("epochs: [1, 2\n")
    (bad / "list.yaml").write_text("- epochs\n- 3\n")
    (bad / "binary.yaml").write_bytes(b"\xff\xfe\x00garbage")
    (bad / "empty.png").write_bytes(b"")
    (bad / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n but then nothing")
    (bad / "a-folder").mkdir()
    (bad / "a-file").write_text("not a folder")
    (bad / "empty-dataset").mkdir()
    (bad / "run-empty").mkdir()
    (bad / "run-empty" / "metrics.jsonl").write_text("")
    (bad / "run-corrupt").mkdir()
    (bad / "run-corrupt" / "metrics.jsonl").write_bytes(b"\x00\x01 binary \x02\n{}\n")
    return {"data": data, "checkpoint": run["run_dir"] / "checkpoints" / "last.pth", "bad": bad, "root": root,
            "image": next((data / "val").rglob("*.png"))}


def _train(files, *args):
    return ["train", "--data-dir", str(files["data"]), "--output-dir", str(files["root"] / "failed-runs"),
            "--model-kwargs", "{embed_dim: 16, depth: 3, patch_size: 4}", "--img-size", "16", "--workers", "0",
            "--synthetic", "{}", "--batch-size", "4", *args]


B = "{bad}"  # a placeholder for the folder of bad files
CASES = {
    # train: the recipe file
    "train-config-missing": (lambda f: ["train", "--config", f"{B}/missing.yaml"],
                             "No config file at {bad}/missing.yaml"),
    "train-config-empty": (lambda f: ["train", "--config", f"{B}/empty.yaml"], "empty.yaml is empty"),
    "train-config-corrupt": (lambda f: ["train", "--config", f"{B}/corrupt.yaml"], "corrupt.yaml is not valid YAML"),
    "train-config-binary": (lambda f: ["train", "--config", f"{B}/binary.yaml"], "binary.yaml is not"),
    "train-config-list": (lambda f: ["train", "--config", f"{B}/list.yaml"], "list.yaml must hold a mapping"),
    "train-unknown-key": (lambda f: _train(f, "--epoch", "3"), "unrecognized arguments: --epoch"),
    # train: the dataset
    "train-data-missing": (lambda f: _train(f, "--data-dir", f"{B}/nowhere"), "{bad}/nowhere does not exist"),
    "train-data-file": (lambda f: _train(f, "--data-dir", f"{B}/a-file"), "{bad}/a-file is a file"),
    "train-data-empty": (lambda f: _train(f, "--data-dir", f"{B}/empty-dataset"), "No 'train' split"),
    # train: weights to start from, checkpoints to resume from
    "train-initial-random": (lambda f: _train(f, "--initial-checkpoint", f"{B}/random.pth"),
                             "random.pth is not a checkpoint"),
    "train-initial-other": (lambda f: _train(f, "--initial-checkpoint", f"{B}/other-architecture.pth"),
                            "other-architecture.pth does not fit"),
    "train-resume-empty": (lambda f: _train(f, "--resume", f"{B}/empty.pth"), "empty.pth is empty"),
    "train-resume-weights": (lambda f: _train(f, "--resume", f"{B}/other-architecture.pth"),
                             "other-architecture.pth is not a training checkpoint"),
    "train-resume-missing": (lambda f: _train(f, "--resume", f"{B}/missing.pth"), "No checkpoint file at"),
    # eval
    "eval-checkpoint-missing": (lambda f: ["eval", f"{B}/missing.pth", "--data-dir", str(f["data"])],
                                "No checkpoint file at {bad}/missing.pth"),
    "eval-checkpoint-empty": (lambda f: ["eval", f"{B}/empty.pth", "--data-dir", str(f["data"])], "empty.pth is empty"),
    "eval-checkpoint-random": (lambda f: ["eval", f"{B}/random.pth", "--data-dir", str(f["data"])],
                               "random.pth is not a checkpoint"),
    "eval-checkpoint-truncated": (lambda f: ["eval", f"{B}/truncated.pth", "--data-dir", str(f["data"])],
                                  "truncated.pth is a damaged or truncated PyTorch file"),
    "eval-checkpoint-folder": (lambda f: ["eval", f"{B}/a-folder", "--data-dir", str(f["data"])],
                               "a-folder is a folder, not a checkpoint file"),
    "eval-checkpoint-pickled": (lambda f: ["eval", f"{B}/pickled.pth", "--data-dir", str(f["data"])],
                                "pickled.pth holds pickled Python objects"),
    "eval-data-file": (lambda f: ["eval", str(f["checkpoint"]), "--data-dir", f"{B}/a-file"], "a-file is a file"),
    # predict
    "predict-image-missing": (lambda f: ["predict", f"{B}/missing.png", "--checkpoint", str(f["checkpoint"])],
                              "No image file at {bad}/missing.png"),
    "predict-image-empty": (lambda f: ["predict", f"{B}/empty.png", "--checkpoint", str(f["checkpoint"])],
                            "empty.png is not a readable image (empty file)"),
    "predict-image-corrupt": (lambda f: ["predict", f"{B}/corrupt.png", "--checkpoint", str(f["checkpoint"])],
                              "corrupt.png is not a readable image"),
    "predict-image-folder": (lambda f: ["predict", f"{B}/a-folder", "--checkpoint", str(f["checkpoint"])],
                             "a-folder is a folder, not an image file"),
    "predict-checkpoint-random": (lambda f: ["predict", str(f["image"]), "--checkpoint", f"{B}/random.pth"],
                                  "random.pth is not a checkpoint"),
    "predict-checkpoint-other": (lambda f: ["predict", str(f["image"]), "--checkpoint", f"{B}/other-architecture.pth",
                                            "--model", "weightformer_tiny"], "other-architecture.pth does not fit"),
    # plot
    "plot-missing": (lambda f: ["plot", f"{B}/no-run"], "No metrics at {bad}/no-run/metrics.jsonl"),
    "plot-file": (lambda f: ["plot", f"{B}/a-file"], "a-file is a file"),
    "plot-empty": (lambda f: ["plot", f"{B}/run-empty"], "metrics.jsonl holds no metrics"),
    "plot-corrupt": (lambda f: ["plot", f"{B}/run-corrupt"], "metrics.jsonl line 1 is not a JSON record"),
    # bench
    "bench-out-under-a-file": (lambda f: ["bench", "--device", "cpu", "-o", f"{B}/a-file/result"],
                               "{bad}/a-file is a file, not a folder"),
    "bench-resolution": (lambda f: ["bench", "--device", "cpu", "--resolutions", "100", "-o", f"{B}/r"],
                         "multiples of the patch size 16"),
    "bench-resolution-zero": (lambda f: ["bench", "--device", "cpu", "--resolutions", "0", "-o", f"{B}/r"],
                              "got 0"),
    # detect
    "detect-train-no-data-dir": (lambda f: ["detect", "train", "--data-dir", "null", "--output-dir",
                                            str(f["root"] / "failed-runs")],
                                 "No dataset: set data_dir"),
    "detect-train-no-annotations": (lambda f: ["detect", "train", "--data-dir", f"{B}/empty-dataset", "--output-dir",
                                               str(f["root"] / "failed-runs"), "--workers", "0"],
                                    "No annotation file {bad}/empty-dataset/annotations/instances_train2017.json"),
    "detect-predict-classifier": (lambda f: ["detect", "predict", str(f["image"]), "--checkpoint",
                                             str(f["checkpoint"])],
                                  "is a classification checkpoint, not a detection one"),
    "detect-eval-not-coco": (lambda f: ["detect", "eval", str(f["checkpoint"]), "--data-dir", f"{B}/a-file"],
                             "No annotation file"),
    # dit
    "dit-train-size": (lambda f: ["dit", "train", "--data-dir", str(f["data"]), "--output-dir",
                                  str(f["root"] / "failed-runs"), "--image-size", "15"],
                       "image_size 15 must be a multiple of the patch size 2"),
    "dit-sample-classifier": (lambda f: ["dit", "sample", str(f["checkpoint"]), "-o", f"{B}/s"],
                              "is a classification checkpoint, not a WeightFormer-DiT one"),
    "dit-sample-weights": (lambda f: ["dit", "sample", f"{B}/other-architecture.pth", "-o", f"{B}/s"],
                           "is not a training checkpoint of this package, not a WeightFormer-DiT one"),
    "dit-sample-class": (lambda f: ["dit", "sample", f"{B}/dit.pth", "--classes", "1", "3", "-o", f"{B}/s"],
                         "Class ids must lie in 0..2 (the checkpoint has 3 classes); got 3"),
    "dit-sample-vae": (lambda f: ["dit", "sample", f"{B}/dit-latent.pth", "-o", f"{B}/s"],
                       "VAE stabilityai/sd-vae-ft-ema is not in the local Hugging Face cache"),
    "dit-fid-samples": (lambda f: ["dit", "fid", f"{B}/missing.npz", str(f["data"]), "--classifier",
                                   str(f["checkpoint"])], "missing.npz is neither an .npz of samples"),
    "dit-fid-generator": (lambda f: ["dit", "fid", f"{B}/x.npz", str(f["data"]), "--classifier", f"{B}/dit.pth"],
                          "dit.pth is a generation checkpoint; --classifier takes a classifier's"),
    # summary
    "summary-unknown-model": (lambda f: ["summary", "weightformer_huge"], "invalid choice: 'weightformer_huge'"),
    "summary-size": (lambda f: ["summary", "weightformer_tiny", "--img-size", "225"], "multiples of the patch size 16"),
    "summary-size-text": (lambda f: ["summary", "weightformer_tiny", "--img-size", "big"], "invalid int value: 'big'"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_gets_one_line_and_exit_code_2(case, files, capsys):
    make_argv, expected = CASES[case]
    bad = str(files["bad"])
    argv = [a.replace(B, bad) for a in make_argv(files)]
    before = sorted(p.name for p in files["bad"].iterdir())
    try:
        code = main(argv)
    except SystemExit as exit_:  # argparse's usage errors
        code = exit_.code
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err
    # Said by the command as typed: `weightformer train`, `weightformer detect predict`.
    command = " ".join(argv[:2] if argv[0] in {spec.command for spec in tasks() if spec.verbs} else argv[:1])
    lines = [line for line in err.splitlines() if line.startswith(f"weightformer {argv[0]}")]
    assert len(lines) == 1 and lines[0].startswith(f"weightformer {command}: error: "), err
    assert expected.replace(B, bad) in lines[0], lines[0]
    assert sorted(p.name for p in files["bad"].iterdir()) == before  # nothing written beside the inputs
    assert not (files["root"] / "failed-runs").exists()  # a run that cannot start leaves no folder
