"""Overlapping batches: half of each optimizer step repeats the previous step's fresh half."""

import collections

import pytest

from dynsdpb_selfplay.distill.sampler import OverlapSampler, is_fresh_position


def stream(sampler, epochs):
    steps = []
    for e in range(epochs):
        sampler.set_epoch(e)
        flat = list(sampler)
        assert len(flat) == len(sampler)
        steps += [flat[i : i + sampler.step_batch_size] for i in range(0, len(flat), sampler.step_batch_size)]
    return steps


def fresh(step):
    return [x for i, x in enumerate(step) if is_fresh_position(i)]


def repeats(step):
    return [x for i, x in enumerate(step) if not is_fresh_position(i)]


@pytest.mark.parametrize("n,batch", [(24, 4), (24, 8), (30, 6), (7, 2)])
def test_consecutive_steps_share_exactly_half_across_epochs(n, batch):
    steps = stream(OverlapSampler(n, batch, seed=3), epochs=3)
    for prev, cur in zip(steps, steps[1:], strict=False):
        assert repeats(cur) == fresh(prev)  # position for position, also across epoch boundaries
    assert all(len(s) == batch for s in steps)


def test_every_example_is_fresh_once_per_epoch():
    s = OverlapSampler(24, 8, seed=0)
    for e in range(3):
        s.set_epoch(e)
        steps = s.steps(e)
        assert sorted(x for st in steps for x in fresh(st)) == list(range(24))
        assert len(steps) == 24 // 4


def test_uneven_dataset_is_topped_up_from_the_same_permutation():
    s = OverlapSampler(10, 8, seed=1)  # halves of 4: 3 steps, 2 padded indices
    counts = collections.Counter(x for st in s.steps(0) for x in fresh(st))
    assert set(counts) == set(range(10))
    assert sum(counts.values()) == 12 and sum(c - 1 for c in counts.values()) == 2


def test_deterministic_for_a_seed_and_different_across_seeds_and_epochs():
    a, b, c = OverlapSampler(50, 10, seed=7), OverlapSampler(50, 10, seed=7), OverlapSampler(50, 10, seed=8)
    assert list(a) == list(b)
    assert list(a) != list(c)
    b.set_epoch(1)
    assert list(a) != list(b)


def test_first_step_repeats_nothing_that_was_stored():
    # In epoch 0, step 0 "repeats" the epoch's own last half, which no earlier step has seen.
    s = OverlapSampler(16, 4, seed=0)
    steps = s.steps(0)
    assert repeats(steps[0]) == fresh(steps[-1])


def test_bad_batch_shapes_are_refused():
    with pytest.raises(ValueError, match="even effective batch"):
        OverlapSampler(10, 3)
    with pytest.raises(ValueError, match="fewer than half an effective batch"):
        OverlapSampler(3, 8)
