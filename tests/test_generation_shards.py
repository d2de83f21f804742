"""Sampling at scale: an interrupted `dit sample` resumes without redrawing finished shards and gives the same
samples; a run with other settings is refused; a process holds at most one shard, and the merge one batch.
(One process against two, with other shard sizes: tests/test_generation_sample.py.)"""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

from gen_helpers import read_npz
from weightformer.cli.main import main
from weightformer.tasks.generation import sample as sample_module
from weightformer.tasks.generation.sample import sample_to_files
from weightformer.tasks.generation.shards import ShardPlan, draw_shards, merge_shards


def _counting_sampler(monkeypatch, stop_at: int | None = None) -> list[int]:
    """Count the batches drawn; with stop_at, interrupt the run (as Ctrl-C would) when that batch begins."""
    calls: list[int] = []
    make = sample_module.make_sampler

    def counting(*args, **kwargs):
        sampler = make(*args, **kwargs)

        def run(*a, **k):
            calls.append(1)
            if stop_at is not None and len(calls) == stop_at:
                raise KeyboardInterrupt
            return sampler(*a, **k)

        return run

    monkeypatch.setattr(sample_module, "make_sampler", counting)
    return calls


def test_an_interrupted_run_resumes_without_redrawing_finished_shards(dit_checkpoint, tmp_path, monkeypatch, capsys,
                                                                       one_thread):
    settings = dict(num_samples=11, steps=2, cfg_scale=2.0, seed=1, batch_size=2, shard_batches=2)  # 3 shards
    whole = sample_to_files(dit_checkpoint, tmp_path / "whole", **settings)
    assert whole["shards"] == 3 and whole["drawn_batches"] == 6 and whole["resumed_shards"] == 0
    out = tmp_path / "out"
    with monkeypatch.context() as patch:
        _counting_sampler(patch, stop_at=6)  # shards 0 and 1 written, stopped within shard 2
        with pytest.raises(KeyboardInterrupt):
            sample_to_files(dit_checkpoint, out, **settings)
    assert sorted(p.name for p in (out / "shards").iterdir()) == ["run.json", "shard000000.npz", "shard000001.npz"]
    assert not (out / "samples.npz").exists()
    # Another seed would mix two sets of samples: refused in one line, nothing touched.
    argv = ["dit", "sample", str(dit_checkpoint), "-o", str(out), "--num-samples", "11", "--steps", "2", "--cfg-scale",
            "2", "--seed", "2", "--batch-size", "2", "--shard-batches", "2"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "holds the shards of an unfinished run with other settings (seed 1 there, 2 now)" in \
        err[0], err
    # A damaged shard is drawn again; the intact one is not.
    damaged = out / "shards" / "shard000001.npz"
    damaged.write_bytes(damaged.read_bytes()[:100])
    calls = _counting_sampler(monkeypatch)
    resumed = sample_to_files(dit_checkpoint, out, **settings)
    assert len(calls) == 4 and resumed["drawn_batches"] == 4 and resumed["resumed_shards"] == 1
    for a, b in zip(read_npz(whole["npz"]), read_npz(resumed["npz"]), strict=True):
        assert np.array_equal(a, b)
    assert sorted(p.name for p in out.iterdir()) == ["samples.npz", "samples.png"]  # shards gone


def test_a_process_holds_one_shard_and_the_merge_one_batch(tmp_path):
    """draw_shards keeps one shard's buffer (40 images of 64x64) and merge_shards one batch (10) and the grid's
    picks: traced peaks, against the 4.9 MB of all 400 images."""
    plan = ShardPlan(num_samples=400, batch_size=10, shard_batches=4)
    image = 64 * 64 * 3
    labels = np.arange(400) % 3

    def draw(b: int) -> np.ndarray:
        return np.full((len(range(b * 10, min(b * 10 + 10, 400))), 64, 64, 3), b, np.uint8)

    tracemalloc.start()
    draw_shards(range(plan.num_shards), plan, draw, labels, tmp_path)
    drawing_peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.reset_peak()
    grids = []
    merge_shards(tmp_path, plan, labels, tmp_path / "samples.npz", tmp_path / "grid.png",
                 lambda tiles, path: grids.append(tiles))
    merge_peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    shard, batch, grid = 40 * image, 10 * image, 3 * 8 * image
    assert drawing_peak < shard + batch + 64_000, drawing_peak
    assert merge_peak < 5 * batch + grid + 64_000, merge_peak  # a batch, and zipfile's copies of it as it is read
    images, stored = read_npz(tmp_path / "samples.npz")
    assert np.array_equal(images[:, 0, 0, 0], np.arange(400) // 10) and np.array_equal(stored, labels)
    assert grids[0].shape == (3, 8, 64, 64, 3)  # a row per class
    assert grids[0][0, :, 0, 0, 0].tolist() == [0, 0, 0, 0, 1, 1, 1, 2]  # samples 0, 3, ..., 21 of class 0
