"""The training engine on a minimal task: positions, signals, resumption rules, counters, run folders, precision."""

from __future__ import annotations

import json
import math

import pytest
import torch

from engine_helpers import NumbersTask, numbers_config
from weightformer.engine import EpochSampler, fit


def _order(n: int, epoch: int, seed: int = 0) -> list[int]:
    sampler = EpochSampler(n, shuffle=True, seed=seed)
    sampler.set_epoch(epoch)
    return [i for i, _ in sampler]


def _run(cfg):
    task = NumbersTask(cfg)
    return fit(task), task


def _records(run_dir, kind):
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["kind"] == kind]


def test_every_epoch_trains_on_its_own_order_once(tmp_path):
    result, task = _run(numbers_config(tmp_path, epochs=2))
    assert result["step"] == 16 and not result["preempted"]
    flat = [i for step in task.seen for i in step]
    assert flat[:24] == _order(24, 0) and flat[24:] == _order(24, 1)
    assert result["val_loss"] < 1.0  # the linear target is learnable: evaluation ran on the final model


def test_sigusr1_writes_a_checkpoint_at_the_step_boundary_and_resume_auto_continues(tmp_path):
    reference, _ = _run(numbers_config(tmp_path / "ref"))
    stopped, first = _run(numbers_config(tmp_path / "run", signal_at_step=5))  # a real signal, mid step 6
    assert stopped["preempted"] and stopped["step"] == 6  # step 6 finishes, then the run stops
    last = torch.load(stopped["run_dir"] / "checkpoints" / "last.pth", weights_only=True)
    assert (last["epoch"], last["samples_in_epoch"], last["step"]) == (0, 18, 6)

    resumed, second = _run(numbers_config(tmp_path / "run", resume="auto"))
    assert resumed["run_dir"] == stopped["run_dir"] and resumed["step"] == 16
    flat = [i for step in first.seen + second.seen for i in step]
    assert flat == _order(24, 0) + _order(24, 1)  # no sample twice, none left out
    for key, value in reference["model"].state_dict().items():
        assert torch.equal(resumed["model"].state_dict()[key], value), key


def test_resume_refuses_a_changed_run_and_lists_each_difference(tmp_path):
    _run(numbers_config(tmp_path, epochs=1))
    with pytest.raises(ValueError) as error:
        _run(numbers_config(tmp_path, epochs=2, lr=0.1, resume="auto"))
    message = str(error.value)
    assert "epochs: 1 -> 2" in message and "lr: 0.05 -> 0.1" in message
    assert "--resume-override epochs,lr" in message
    # Values that do not change what the run computes may change freely.
    result, _ = _run(numbers_config(tmp_path, epochs=1, resume="auto", log_interval=5, checkpoint_interval=3))
    assert result["step"] == 8


def test_an_override_really_applies_the_new_schedule(tmp_path):
    common = dict(sched="cosine", min_lr=0.01, warmup_epochs=0)
    _run(numbers_config(tmp_path, epochs=1, lr=0.05, **common))
    result, _ = _run(numbers_config(tmp_path, epochs=3, lr=0.1, resume="auto", resume_override="epochs,lr",
                                    **common))
    assert result["step"] == 24
    train = {r["step"]: r["lr"] for r in _records(result["run_dir"], "train")}
    # After step 9 of 24, the new cosine (0.1 -> 0.01 over 3 epochs), not the saved one (over 1 epoch, at its floor).
    assert train[9] == pytest.approx(0.01 + 0.5 * (0.1 - 0.01) * (1 + math.cos(math.pi * 9 / 24)))
    last = torch.load(result["run_dir"] / "checkpoints" / "last.pth", weights_only=True)
    assert last["optimizer"]["param_groups"][0]["initial_lr"] == pytest.approx(0.1)


def test_a_step_every_rank_skips_still_writes_its_due_checkpoint(tmp_path):
    unreadable = _order(24, 0)[3]  # batch 1: the 4th step of epoch 1 has nothing to learn from
    cfg = numbers_config(tmp_path, batch_size=1, checkpoint_interval=4, keep_checkpoints=100, unreadable=[unreadable])
    result, task = _run(cfg)
    assert len(task.seen) == 2 * 24 - 2 and result["step"] == 48
    checkpoint = torch.load(result["run_dir"] / "checkpoints" / "step-00000004.pth", weights_only=True)
    assert checkpoint["counts"]["skipped_samples"] == 1 and checkpoint["samples_in_epoch"] == 4
    assert result["skipped_samples"] == 2  # once per epoch
    assert _records(result["run_dir"], "epoch")[-1]["skipped_samples"] == 2


def test_a_new_run_never_writes_into_an_existing_folder(tmp_path):
    (tmp_path / "numbers").mkdir()
    (tmp_path / "numbers" / "metrics.jsonl").write_text('{"kind": "train", "step": 1}\n')  # no checkpoint
    first, _ = _run(numbers_config(tmp_path, epochs=1))
    assert first["run_dir"] == tmp_path / "numbers-2"
    assert (tmp_path / "numbers" / "metrics.jsonl").read_text() == '{"kind": "train", "step": 1}\n'
    second, _ = _run(numbers_config(tmp_path, epochs=1))
    assert second["run_dir"] == tmp_path / "numbers-3"
    resumed, _ = _run(numbers_config(tmp_path, epochs=1, resume="auto"))
    assert resumed["run_dir"] == tmp_path / "numbers-3"  # the newest run that has a checkpoint


def test_fp16_autocast_with_a_grad_scaler(tmp_path):
    result, task = _run(numbers_config(tmp_path, epochs=1, amp=True, amp_dtype="float16"))
    assert set(task.output_dtypes) == {torch.float16}
    last = torch.load(result["run_dir"] / "checkpoints" / "last.pth", weights_only=True)
    scaler = last["scaler"]
    assert scaler and scaler["scale"] <= 65536.0  # an enabled scaler's state (a disabled one saves {})
    assert math.isfinite(result["val_loss"]) and result["val_loss"] < 1.0
    with pytest.raises(ValueError, match="amp_dtype must be float16 or bfloat16"):
        _run(numbers_config(tmp_path, amp=True, amp_dtype="float8"))


def test_resume_from_a_file_that_is_not_a_training_checkpoint_fails_in_one_line(tmp_path):
    weights = tmp_path / "weights.pth"
    torch.save({"model": torch.nn.Linear(3, 1).state_dict()}, weights)
    with pytest.raises(ValueError, match="is not a training checkpoint"):
        _run(numbers_config(tmp_path, resume=str(weights)))
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"\x00\x01garbage" * 10)
    with pytest.raises(ValueError, match="junk.pth is not a checkpoint"):
        _run(numbers_config(tmp_path, resume=str(junk)))


@pytest.mark.parametrize("reuse", [True, False])
def test_cpu_training_keeps_freed_memory_for_reuse_unless_told_not_to(tmp_path, monkeypatch, reuse):
    from weightformer import kernels

    calls = []
    monkeypatch.setattr(kernels, "reuse_freed_cpu_memory", lambda enabled=True: calls.append(enabled) or True)
    _run(numbers_config(tmp_path, epochs=1, reuse_cpu_memory=reuse))
    assert calls == ([True] if reuse else [])
