"""Loss helpers against hand-computed numbers, and the fused kernel against the unfused reference."""

import math

import pytest
import torch

from dynsdpb_selfplay.distill.fused import fused_ce_distill
from dynsdpb_selfplay.distill.losses import (
    build_targets,
    distillation_loss,
    kl_to_targets,
    teacher_stats,
)

LN2 = math.log(2.0)


def log(*probs):
    return torch.tensor([probs]).log()


def test_full_kl_hand_computed():
    # p = [1/2, 1/4, 1/4], q = [1/4, 1/2, 1/4]: KL = 1/2 ln 2 + 1/4 ln(1/2) = ln2 / 4
    t = build_targets(log(0.5, 0.25, 0.25), torch.tensor([1.0]), torch.tensor([1.0]))
    kl = kl_to_targets(log(0.25, 0.5, 0.25), t)
    assert kl.item() == pytest.approx(LN2 / 4, rel=1e-6)


def test_temperature_softens_both_sides_and_scales_by_tau_squared():
    # z/2: teacher [ln2, 0, 0] -> [1/2, 1/4, 1/4]; student [0, ln2, 0] -> [1/4, 1/2, 1/4]; KL = ln2/4.
    t = build_targets(torch.tensor([[2 * LN2, 0.0, 0.0]]), torch.tensor([2.0]), torch.tensor([1.0]))
    student = torch.tensor([[0.0, 2 * LN2, 0.0]])
    assert kl_to_targets(student, t).item() == pytest.approx(LN2 / 4, rel=1e-6)
    # L = CE + alpha tau^2 KL / D. CE of label 0 under softmax([0, 2 ln2, 0]) = [1/6, 4/6, 1/6] is ln 6.
    loss, sums = distillation_loss(student, torch.tensor([0]), torch.tensor([0]), t)
    assert sums["ce_sum"].item() == pytest.approx(math.log(6), rel=1e-6)
    assert loss.item() == pytest.approx(math.log(6) + 4 * LN2 / 4, rel=1e-6)


def test_topk_tail_bucket_hand_computed():
    # p = [1/2, 1/4, 1/8, 1/8], k = 1 keeps {0: 1/2} and a tail of 1/2; q uniform: q_0 = 1/4, q_tail = 3/4.
    t = build_targets(log(0.5, 0.25, 0.125, 0.125), torch.tensor([1.0]), torch.tensor([1.0]), topk=1)
    assert t.indices.tolist() == [[0]]
    assert t.tail_logp.exp().item() == pytest.approx(0.5, rel=1e-6)
    kl = kl_to_targets(torch.zeros(1, 4), t)
    assert kl.item() == pytest.approx(0.5 * math.log(2) + 0.5 * math.log(0.5 / 0.75), rel=1e-6)


def test_topk_equals_full_when_k_is_vocab():
    torch.manual_seed(0)
    teacher, student = torch.randn(5, 11), torch.randn(5, 11)
    tau, alpha = torch.rand(5) + 0.5, torch.ones(5)
    full = kl_to_targets(student, build_targets(teacher, tau, alpha))
    topk = kl_to_targets(student, build_targets(teacher, tau, alpha, topk=11))
    torch.testing.assert_close(topk, full)
    larger_k = kl_to_targets(student, build_targets(teacher, tau, alpha, topk=50))
    torch.testing.assert_close(larger_k, full)


def test_no_distilled_tokens_gives_plain_cross_entropy():
    logits, labels = torch.randn(4, 7), torch.tensor([1, 2, 3, 4])
    t = build_targets(torch.randn(0, 7), torch.ones(0), torch.ones(0))
    loss, sums = distillation_loss(logits, labels, torch.zeros(0, dtype=torch.long), t)
    assert sums["kl_sum"].item() == 0.0
    torch.testing.assert_close(loss, torch.nn.functional.cross_entropy(logits, labels))


def test_weighted_cross_entropy_hand_computed():
    # Row 0: CE of label 0 under softmax([0, 2 ln2, 0]) = ln 6; row 1: uniform over 3, CE = ln 3. Row 1 distilled.
    logits = torch.tensor([[0.0, 2 * LN2, 0.0], [0.0, 0.0, 0.0]])
    labels, kd_rows = torch.tensor([0, 2]), torch.tensor([1])
    t = build_targets(torch.tensor([[2 * LN2, 0.0, 0.0]]), torch.tensor([1.0]), torch.tensor([0.5]))
    kd = 0.5 * kl_to_targets(logits[1:], t).item()  # p = [4/6, 1/6, 1/6], q uniform
    assert kd == pytest.approx(0.5 * (4 / 6 * math.log(2) + 2 / 6 * math.log(0.5)), rel=1e-6)
    for w, ce in [
        (1.0, (math.log(6) + math.log(3)) / 2),
        (0.25, (math.log(6) + 0.25 * math.log(3)) / 1.25),
        (0.0, math.log(6)),
    ]:
        loss, sums = distillation_loss(logits, labels, kd_rows, t, ce_weight=torch.tensor([1.0, w]))
        assert loss.item() == pytest.approx(ce + kd, rel=1e-6), w
        assert sums["ce_sum"].item() == pytest.approx(math.log(6) + math.log(3), rel=1e-6)  # unweighted metric
    # An explicit normalizer is used as given (the step's weighted count under accumulation).
    loss, _ = distillation_loss(logits, labels, kd_rows, t, num_items=4.0, ce_weight=torch.tensor([1.0, 0.0]))
    assert loss.item() == pytest.approx(math.log(6) / 4 + kd, rel=1e-6)


def test_gradients_reach_the_student_only():
    teacher = torch.randn(3, 5, requires_grad=True)
    t = build_targets(teacher, torch.full((3,), 2.0), torch.ones(3))
    assert not t.logp.requires_grad
    student = torch.randn(3, 5, requires_grad=True)
    kl_to_targets(student, t).sum().backward()
    assert teacher.grad is None
    assert student.grad is not None and student.grad.abs().sum() > 0


def test_identical_distributions_have_zero_kl_and_zero_gradient():
    z = torch.randn(4, 9)
    student = z.clone().requires_grad_(True)
    kl = kl_to_targets(student, build_targets(z, torch.full((4,), 3.0), torch.ones(4)))
    kl.sum().backward()
    assert kl.abs().max().item() < 1e-6
    assert student.grad.abs().max().item() < 1e-6


def test_teacher_stats_hand_computed():
    stats = teacher_stats(log(0.5, 0.25, 0.25), torch.tensor([0]))
    assert stats.entropy.item() == pytest.approx(1.5 * LN2 / math.log(3), rel=1e-6)
    assert stats.margin.item() == pytest.approx(0.25, rel=1e-6)
    assert stats.top1_correct.tolist() == [True]
    assert teacher_stats(log(0.5, 0.25, 0.25), torch.tensor([2])).top1_correct.tolist() == [False]


# ------------------------------------------------------------------------------------------ fused kernel
def _case(topk, seed=0, n=13, h=8, v=50):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n, h, generator=g, requires_grad=True)
    weight = torch.randn(v, h, generator=g, requires_grad=True)
    bias = torch.randn(v, generator=g, requires_grad=True)
    labels = torch.randint(0, v, (n,), generator=g)
    kd_rows = torch.tensor([1, 4, 5, 11])
    tau = torch.tensor([1.0, 2.0, 3.0, 1.5])
    targets = build_targets(torch.randn(4, v, generator=g), tau, torch.tensor([1.0, 0.5, 0.2, 0.9]), topk)
    return hidden, weight, bias, labels, kd_rows, targets


def _grads(loss, *params):
    return torch.autograd.grad(loss, params)


@pytest.mark.parametrize("topk", [None, 5, 50])
@pytest.mark.parametrize("softcap", [None, 7.0])
@pytest.mark.parametrize("chunk_size", [1, 3, 1000])
@pytest.mark.parametrize("repeated_ce_weight", [None, 0.25])
def test_fused_matches_reference_values_and_gradients(topk, softcap, chunk_size, repeated_ce_weight):
    hidden, weight, bias, labels, kd_rows, targets = _case(topk)
    z = torch.nn.functional.linear(hidden, weight, bias) * 0.5
    if softcap is not None:
        z = softcap * torch.tanh(z / softcap)
    ce_weight = None
    if repeated_ce_weight is not None:
        ce_weight = torch.ones(len(labels))
        ce_weight[[1, 2, 4, 5, 11]] = repeated_ce_weight
    ref, _ = distillation_loss(z, labels, kd_rows, targets, num_items=20, num_distilled=6, ce_weight=ce_weight)
    ref_grads = _grads(ref, hidden, weight, bias)
    loss, out = fused_ce_distill(
        hidden,
        weight,
        bias,
        labels,
        num_items=20,
        kd_rows=kd_rows,
        kd_targets=targets,
        num_distilled=6,
        logit_scale=0.5,
        softcap=softcap,
        chunk_size=chunk_size,
        ce_weight=ce_weight,
    )
    torch.testing.assert_close(loss, ref, rtol=1e-5, atol=1e-6)
    for got, want in zip(_grads(loss, hidden, weight, bias), ref_grads, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)
    assert out.kl_sum.item() == pytest.approx(kl_to_targets(z[kd_rows], targets).sum().item(), rel=1e-5)


def test_fused_chunked_equals_unchunked_including_stored_targets():
    hidden, weight, bias, labels, kd_rows, targets = _case(None, seed=1)
    store_rows = torch.tensor([0, 2, 3, 12])

    def make(z, p, lse, y):
        return build_targets(z, torch.full((len(z),), 2.0), torch.ones(len(z)), topk=4)

    results = []
    for chunk in (2, 5, 64):
        loss, out = fused_ce_distill(
            hidden,
            weight,
            None,
            labels,
            num_items=13,
            kd_rows=kd_rows,
            kd_targets=targets,
            num_distilled=4,
            store_rows=store_rows,
            make_targets=make,
            chunk_size=chunk,
        )
        stored = type(out.stored[0]).cat(out.stored)
        results.append((loss.detach(), stored.logp, stored.indices, stored.tail_logp))
    for other in results[1:]:
        for a, b in zip(results[0], other, strict=True):
            torch.testing.assert_close(a, b)
    # What is stored is the detached prediction of exactly the store rows.
    z = torch.nn.functional.linear(hidden, weight)[store_rows]
    expected = build_targets(z, torch.full((4,), 2.0), torch.ones(4), topk=4)
    torch.testing.assert_close(results[0][1], expected.logp)


def test_fused_all_masked_gives_a_differentiable_zero():
    weight = torch.randn(7, 4, requires_grad=True)
    hidden = torch.randn(0, 4, requires_grad=True)
    loss, out = fused_ce_distill(hidden, weight, None, torch.zeros(0, dtype=torch.long), num_items=0)
    loss.backward()
    assert loss.item() == 0.0 and out.ce_sum.item() == 0.0
    assert torch.equal(weight.grad, torch.zeros_like(weight))


def test_fused_skips_weight_gradient_for_a_frozen_head():
    hidden, weight, _, labels, kd_rows, targets = _case(None)
    weight.requires_grad_(False)
    loss, _ = fused_ce_distill(hidden, weight, None, labels, num_items=13, kd_rows=kd_rows, kd_targets=targets)
    loss.backward()
    assert weight.grad is None and hidden.grad is not None


def test_fused_under_bf16_autocast_is_close_to_fp32():
    hidden, weight, bias, labels, kd_rows, targets = _case(None, v=300)
    exact, _ = fused_ce_distill(hidden, weight, bias, labels, num_items=13, kd_rows=kd_rows, kd_targets=targets)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        approx, _ = fused_ce_distill(hidden, weight, bias, labels, num_items=13, kd_rows=kd_rows, kd_targets=targets)
    assert approx.dtype == torch.float32
    assert approx.item() == pytest.approx(exact.item(), rel=2e-2)


# ------------------------------------------------------------------------------------ numerical edge cases
def test_topk_gradient_stays_finite_when_the_students_tail_mass_is_tiny():
    # Teacher (k = 1): p = 1/2 on token 0, 1/2 in the tail. Student: z_0 = 120, so q_tail = 15 e^-120 ~ 1e-51: the
    # ratio p_tail / q_tail (~1e51) overflows fp32 although the gradient, q_v - p_tail q_v / q_tail, is O(1).
    v = 16
    hidden = torch.zeros(1, 4)
    hidden[0, 0] = 1.0
    hidden.requires_grad_(True)
    weight = torch.zeros(v, 4)
    weight[0, 0] = 120.0
    weight.requires_grad_(True)
    teacher = torch.zeros(1, v)
    teacher[0, 0] = math.log(v - 1)
    targets = build_targets(teacher, torch.ones(1), torch.ones(1), topk=1)
    labels, rows = torch.tensor([0]), torch.tensor([0])
    ref, _ = distillation_loss(hidden @ weight.T, labels, rows, targets)
    loss, _ = fused_ce_distill(hidden, weight, None, labels, num_items=1, kd_rows=rows, kd_targets=targets)
    torch.testing.assert_close(loss, ref)
    grads = _grads(loss, hidden, weight)
    for got, want in zip(grads, _grads(ref, hidden, weight), strict=True):
        assert torch.isfinite(got).all()
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)
    # Hand value: dL/dz_v = q_v - p_tail q_v / q_tail = -1/30 off the top-k, q_0 - p_0 = 1/2 on it; h = e_0.
    assert grads[1][:, 0].tolist() == pytest.approx([0.5] + [-1 / 30] * (v - 1), rel=1e-5)


@pytest.mark.parametrize("topk", [None, 5])
def test_a_masked_vocabulary_entry_keeps_loss_gradients_and_statistics_finite(topk):
    # A logit of -inf (a vocabulary entry masked by the head's bias) has probability 0; 0 * log 0 must count as 0.
    from dynsdpb_selfplay.distill.config import DistillationArguments
    from dynsdpb_selfplay.distill.losses import teacher_stats_from_softmax
    from dynsdpb_selfplay.distill.schedules import make_schedule

    hidden, weight, bias, _, kd_rows, _ = _case(None)
    n, v = hidden.shape[0], weight.shape[0]
    with torch.no_grad():
        bias[-1] = float("-inf")
    labels = torch.arange(n) % (v - 1)  # never the masked entry
    teacher_z = torch.nn.functional.linear(torch.randn(len(kd_rows), hidden.shape[1]), weight, bias).detach()
    targets = build_targets(teacher_z, torch.tensor([1.0, 2.0, 3.0, 1.5]), torch.ones(4), topk)
    assert torch.isinf(targets.logp).any() or topk is not None

    stats = teacher_stats(teacher_z, labels[: len(kd_rows)])
    assert torch.isfinite(stats.entropy).all() and 0 < stats.entropy.min()
    z = torch.nn.functional.linear(hidden, weight, bias)
    ref, ref_sums = distillation_loss(z, labels, kd_rows, targets, num_items=n, num_distilled=4)
    assert torch.isfinite(ref) and torch.isfinite(ref_sums["kl_sum"])
    ref_grads = _grads(ref, hidden, weight, bias)

    schedule = make_schedule(DistillationArguments(distillation_schedule="dynamic"))

    def make(z, p, lse, y):
        alpha, tau = schedule(teacher_stats_from_softmax(z, p, lse, y))
        return build_targets(z, tau, alpha, topk)

    loss, out = fused_ce_distill(
        hidden,
        weight,
        bias,
        labels,
        num_items=n,
        kd_rows=kd_rows,
        kd_targets=targets,
        num_distilled=4,
        store_rows=torch.tensor([0, 2]),
        make_targets=make,
    )
    torch.testing.assert_close(loss, ref, rtol=1e-5, atol=1e-6)
    for got, want in zip(_grads(loss, hidden, weight, bias), ref_grads, strict=True):
        assert torch.isfinite(got).all()
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)
    assert torch.isfinite(out.entropy_sum) and torch.isfinite(out.kl_sum)
    stored = out.stored[0]
    assert torch.isfinite(stored.alpha).all() and torch.isfinite(stored.tau).all() and stored.alpha.min() > 0
