"""The alpha/tau rules on hand-made teacher statistics."""

import math

import pytest
import torch

from dynsdpb_selfplay.distill.losses import TeacherStats
from dynsdpb_selfplay.distill.schedules import DynamicSchedule, StaticSchedule, make_schedule


def stats(entropy, margin, correct):
    return TeacherStats(torch.tensor(entropy), torch.tensor(margin), torch.tensor(correct))


def test_static_is_constant():
    alpha, tau = StaticSchedule(alpha0=0.7, tau0=2.5)(stats([0.1, 0.9], [0.8, 0.0], [True, False]))
    assert alpha.tolist() == pytest.approx([0.7, 0.7]) and tau.tolist() == pytest.approx([2.5, 2.5])


def test_dynamic_hand_computed():
    # alpha = a0 (1 - u) c, tau = tmin + (t0 - tmin) m, with a0 = 2, t0 = 3, tmin = 1, c = 1 or 0.5.
    s = stats([0.0, 0.25, 1.0, 0.5], [1.0, 0.5, 0.0, 0.2], [True, False, True, False])
    alpha, tau = DynamicSchedule(alpha0=2.0, tau0=3.0, tau_min=1.0, wrong_top1_weight=0.5)(s)
    assert alpha.tolist() == pytest.approx([2.0, 2 * 0.75 * 0.5, 0.0, 2 * 0.5 * 0.5])
    assert tau.tolist() == pytest.approx([3.0, 2.0, 1.0, 1.4])


def test_parameters_are_checked_once_where_they_are_set():
    from dynsdpb_selfplay.distill.config import DistillationArguments

    with pytest.raises(ValueError, match="distillation_min_temperature"):
        DistillationArguments(distillation_temperature=1.0, distillation_min_temperature=2.0)
    with pytest.raises(ValueError, match="distillation_wrong_top1_weight"):
        DistillationArguments(distillation_wrong_top1_weight=1.5)


def test_make_schedule_from_the_arguments():
    from dynsdpb_selfplay.distill.config import DistillationArguments

    args = lambda **kw: DistillationArguments(distillation_temperature=2.0, **kw)  # noqa: E731
    assert make_schedule(args(distillation_schedule="static")) == StaticSchedule(1.0, 2.0)
    assert make_schedule(args(distillation_min_temperature=0.5, distillation_wrong_top1_weight=0.25)) == (
        DynamicSchedule(1.0, 2.0, 0.5, 0.25)
    )
    custom = make_schedule(
        args(distillation_alpha=3.0, distillation_schedule=lambda st, a0, t0: (st.margin * a0, st.margin * 0 + t0))
    )
    alpha, tau = custom(stats([0.1], [0.5], [True]))
    assert alpha.tolist() == [1.5] and tau.tolist() == [2.0]
    with pytest.raises(ValueError, match="distillation_schedule"):
        DistillationArguments(distillation_schedule="sometimes")


def test_topk_uncertainty_hand_computed():
    from dynsdpb_selfplay.distill.losses import teacher_stats

    # p = softmax(log [4, 2, 1, 1] / 8): top-2 renormalised = [2/3, 1/3], top-4 = p itself.
    logits = torch.tensor([[4.0, 2.0, 1.0, 1.0], [1.0, 1.0, 1.0, 1.0]]).log()
    labels = torch.tensor([0, 3])
    full = teacher_stats(logits, labels)
    h = 1.75 * math.log(2)  # H([1/2, 1/4, 1/8, 1/8]) = 1.75 bits
    assert full.entropy.tolist() == pytest.approx([h / math.log(4), 1.0])
    top2 = teacher_stats(logits, labels, uncertainty_topk=2)
    h2 = -(2 / 3 * math.log(2 / 3) + 1 / 3 * math.log(1 / 3))
    assert top2.entropy.tolist() == pytest.approx([h2 / math.log(2), 1.0])
    assert top2.margin.tolist() == full.margin.tolist() == pytest.approx([0.25, 0.0])
    assert top2.top1_correct.tolist() == [True, False]
    # k beyond the vocabulary is the whole vocabulary.
    assert teacher_stats(logits, labels, uncertainty_topk=99).entropy.tolist() == pytest.approx(full.entropy.tolist())


def test_new_options_are_validated_with_their_names():
    from dynsdpb_selfplay.distill.config import DistillationArguments

    with pytest.raises(ValueError, match="distillation_progress"):
        DistillationArguments(distillation_progress="cosine")
    with pytest.raises(ValueError, match="distillation_uncertainty_topk"):
        DistillationArguments(distillation_uncertainty_topk=1)
    with pytest.raises(ValueError, match="distillation_repeated_ce_weight=1.5: must be in"):
        DistillationArguments(distillation_repeated_ce_weight=1.5)
    with pytest.raises(ValueError, match="distillation_repeated_ce_weight=0.0: below 1 needs distillation_alpha > 0"):
        DistillationArguments(distillation_repeated_ce_weight=0.0, distillation_alpha=0.0)
