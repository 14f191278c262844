"""Stored targets: explicit alignment, budget, and safetensors round trip."""

import pytest
import torch

from dynsdpb_selfplay.distill.losses import build_targets
from dynsdpb_selfplay.distill.store import StoreBudgetError, StoredSample, TargetStore, align_positions


def sample(tokens, positions, vocab=5, topk=None):
    n = len(positions)
    targets = build_targets(torch.randn(n, vocab), torch.full((n,), 2.0), torch.ones(n), topk)
    return StoredSample(torch.tensor(tokens), torch.tensor(positions), targets)


def test_identical_sequences_align_every_position():
    s = sample([5, 6, 7, 8, 9], [2, 3])
    cur, prev = align_positions(s, torch.tensor([5, 6, 7, 8, 9]), torch.tensor([2, 3]))
    assert cur.tolist() == [0, 1] and prev.tolist() == [0, 1]


def test_truncated_and_extended_sequences_keep_only_shared_predictions():
    s = sample([5, 6, 7, 8, 9], [1, 2, 3])
    cur, prev = align_positions(s, torch.tensor([5, 6, 7]), torch.tensor([1]))  # truncated now
    assert cur.tolist() == [0] and prev.tolist() == [0]
    cur, prev = align_positions(s, torch.tensor([5, 6, 7, 8, 9, 4]), torch.tensor([1, 2, 3, 4]))  # longer now
    assert cur.tolist() == [0, 1, 2] and prev.tolist() == [0, 1, 2]  # position 4 was never stored


def test_a_changed_token_drops_every_prediction_from_it_on():
    s = sample([5, 6, 7, 8, 9], [1, 2, 3])
    # Token 3 differs: position 2 predicted token 3 (now different target) and position 3 sees another context.
    cur, prev = align_positions(s, torch.tensor([5, 6, 7, 1, 9]), torch.tensor([1, 2, 3]))
    assert cur.tolist() == [0] and prev.tolist() == [0]


def test_shifted_label_positions_match_by_position_not_by_order():
    s = sample([5, 6, 7, 8, 9], [2, 3])
    cur, prev = align_positions(s, torch.tensor([5, 6, 7, 8, 9]), torch.tensor([1, 2, 3]))
    assert cur.tolist() == [1, 2] and prev.tolist() == [0, 1]


def test_double_buffer_serves_last_steps_writes_only():
    store = TargetStore(10**9, vocab_size=5, topk=None)
    store.put(1, sample([1, 2], [0]))
    assert store.get(1) is None  # written this step, readable next step
    store.advance()
    assert store.get(1) is not None
    store.advance()
    assert store.get(1) is None and store.nbytes == 0


def test_budget_is_enforced_with_a_message_naming_the_option():
    store = TargetStore(100, vocab_size=5, topk=None)
    with pytest.raises(StoreBudgetError, match="distillation_store_mb"):
        store.put(1, sample([1, 2, 3, 4, 5, 6], [0, 1, 2, 3, 4]))


@pytest.mark.parametrize("topk", [None, 2])
def test_save_and_load_round_trip(tmp_path, topk):
    store = TargetStore(10**9, vocab_size=5, topk=topk)
    store.put(3, sample([1, 2, 3], [0, 1], topk=topk))
    store.put(11, sample([4, 4], [0], topk=topk))
    path = tmp_path / "t.safetensors"
    store.save(str(path))
    other = TargetStore(10**9, vocab_size=5, topk=topk)
    other.load(str(path))
    other.advance()
    for key in (3, 11):
        a, b = store.current[key], other.get(key)
        assert torch.equal(a.tokens, b.tokens) and torch.equal(a.positions, b.positions)
        torch.testing.assert_close(a.targets.logp, b.targets.logp)
        if topk:
            assert torch.equal(a.targets.indices, b.targets.indices)


def test_load_refuses_another_vocabulary_or_storage_mode(tmp_path):
    store = TargetStore(10**9, vocab_size=5, topk=None)
    store.put(0, sample([1, 2], [0]))
    path = str(tmp_path / "t.safetensors")
    store.save(path)
    with pytest.raises(ValueError, match="vocabulary of 5 tokens, the model has 7"):
        TargetStore(10**9, vocab_size=7, topk=None).load(path)
    with pytest.raises(ValueError, match="distillation_topk"):
        TargetStore(10**9, vocab_size=5, topk=4).load(path)
