"""Grouped batches (the engine's EpochSampler given per-sample group ids, as detection's aspect-ratio grouping
uses): every global batch from one group, an order that depends on (seed, epoch) only, exact mid-epoch
resumption, the same steps on every process, and the engine training on it through a signal and a resumption."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from engine_helpers import NumbersTask, numbers_config
from weightformer.engine import Datasets, EpochSampler, fit

GROUPS = [random.Random(5).choice([0, 0, 1, 2]) for _ in range(103)]  # uneven groups: 0 about half


def _steps(sampler: EpochSampler, chunk: int) -> list[list[int]]:
    indices = [i for i, _ in sampler]
    return [indices[k: k + chunk] for k in range(0, len(indices), chunk)]


def test_every_global_batch_holds_one_group_and_the_rest_of_each_group_is_left_over():
    sampler = EpochSampler(103, shuffle=True, seed=3, batch_size=4, groups=GROUPS)
    counts = Counter(GROUPS)
    assert sampler.usable() == sum(n // 4 * 4 for n in counts.values())
    assert sampler.left_over() == sum(n % 4 for n in counts.values()) == 103 - sampler.usable()
    assert sampler.steps() == sampler.usable() // 4
    for epoch in range(3):
        sampler.set_epoch(epoch)
        steps = _steps(sampler, 4)
        assert len(steps) == sampler.steps() and all(len(s) == 4 for s in steps)
        assert all(len({GROUPS[i] for i in step}) == 1 for step in steps)
        seen = [i for step in steps for i in step]
        assert len(set(seen)) == len(seen)  # no sample twice in an epoch
        # Per group, exactly the whole batches it can fill: the samples left over are n mod 4 of each group.
        assert Counter(GROUPS[i] for i in seen) == {g: n // 4 * 4 for g, n in counts.items()}


def test_the_grouped_order_is_a_function_of_seed_and_epoch():
    def order(seed, epoch):
        sampler = EpochSampler(103, shuffle=True, seed=seed, batch_size=4, groups=GROUPS)
        sampler.set_epoch(epoch)
        return list(sampler)

    assert order(3, 1) == order(3, 1)  # a fresh sampler: the same samples, the same per-sample seeds
    assert order(3, 1) != order(3, 2) and order(3, 1) != order(4, 1)
    left_out = [set(range(103)) - {i for i, _ in order(3, e)} for e in range(4)]
    assert len({frozenset(s) for s in left_out}) > 1  # each epoch leaves out other samples
    ungrouped = EpochSampler(103, shuffle=True, seed=3, batch_size=4)
    ungrouped.set_epoch(1)
    seeds = dict(order(3, 1))
    assert all(seeds[i] == s for i, s in ungrouped if i in seeds)  # a sample's seed does not depend on grouping


def test_a_grouped_epoch_resumes_mid_epoch_exactly():
    sampler = EpochSampler(103, shuffle=True, seed=3, batch_size=4, groups=GROUPS)
    sampler.set_epoch(2)
    full = list(sampler)
    for done_steps in (1, 5, sampler.steps() - 1, sampler.steps()):
        resumed = EpochSampler(103, shuffle=True, seed=3, batch_size=4, groups=GROUPS)
        resumed.set_epoch(2, start=4 * done_steps)
        assert list(resumed) == full[4 * done_steps:]
        assert resumed.steps(4 * done_steps) == sampler.steps() - done_steps == len(resumed) // 4


def test_two_processes_take_the_same_grouped_steps_and_share_each_global_batch():
    single = EpochSampler(103, shuffle=True, seed=3, batch_size=6, groups=GROUPS)
    ranks = [EpochSampler(103, shuffle=True, seed=3, rank=r, world_size=2, batch_size=3, groups=GROUPS)
             for r in (0, 1)]
    for epoch in (0, 1):
        for sampler in (single, *ranks):
            sampler.set_epoch(epoch, start=6)  # one global step done
        shares = [_steps(s, 3) for s in ranks]
        assert len(shares[0]) == len(shares[1]) == ranks[0].steps(6) == single.steps(6) > 0
        for (a, b), whole in zip(zip(*shares, strict=True), _steps(single, 6), strict=True):
            # Each step: the two shares make up the global batch of 6 that one process of batch 6 would take.
            assert sorted(a + b) == sorted(whole) and len({GROUPS[i] for i in a + b}) == 1


def test_groups_need_one_id_per_sample_and_a_batch_size():
    with pytest.raises(ValueError, match="one group id per sample"):
        EpochSampler(10, shuffle=True, batch_size=2, groups=[0] * 9)
    with pytest.raises(ValueError, match="groups needs a batch_size"):
        EpochSampler(10, shuffle=False, groups=[0] * 10)


class GroupedNumbersTask(NumbersTask):
    """The engine's minimal task with its samples in 3 uneven groups."""

    def build_datasets(self, d) -> Datasets:
        data = super().build_datasets(d)
        data.groups = [0 if i % 5 < 3 else 1 + i % 2 for i in range(self.cfg.samples)]
        return data


def test_the_engine_trains_grouped_steps_and_resumes_them_exactly(tmp_path):
    cfg = dict(samples=40, batch_size=3, epochs=2)
    reference = GroupedNumbersTask(numbers_config(tmp_path / "ref", **cfg))
    result = fit(reference)
    groups = [0 if i % 5 < 3 else 1 + i % 2 for i in range(40)]
    assert all(len({groups[i] for i in step}) == 1 for step in reference.seen)
    steps = EpochSampler(40, shuffle=True, batch_size=3, groups=groups).steps()
    assert result["step"] == 2 * steps == len(reference.seen) and steps < 40 // 3  # left over: 24%3 + 8%3 + 8%3

    first = GroupedNumbersTask(numbers_config(tmp_path / "run", signal_at_step=4, **cfg))
    stopped = fit(first)
    assert stopped["preempted"] and stopped["step"] == 5
    second = GroupedNumbersTask(numbers_config(tmp_path / "run", resume="auto", **cfg))
    resumed = fit(second)
    assert resumed["step"] == result["step"] and first.seen + second.seen == reference.seen
