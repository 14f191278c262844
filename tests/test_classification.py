"""DynSDPB on a plain transformers.Trainer over a tiny random BERT classifier: the class distribution of each
repeated sample is distilled through the same sampler, store and loss module as the causal-LM path."""

import copy

import pytest
import torch
import torch.nn.functional as F
from helpers import (
    assert_repeats_previous_fresh_half,
    classification_dataset,
    logged,
    make_classifier,
    make_model,
    params,
    plain_overlap,
    recording,
    steps_of,
)
from helpers import (
    build_classifier as build,
)
from helpers import (
    classifier_kwargs as kwargs,
)
from transformers import DataCollatorWithPadding, Trainer, TrainerCallback, TrainingArguments

from dynsdpb_selfplay import DynSDPBClassificationTrainer, attach_dynsdpb
from dynsdpb_selfplay.distill.sampler import OverlapSampler, is_fresh_position
from dynsdpb_selfplay.distill.trainer import INDEX_COLUMN, TARGETS_FILE

Recording = recording(DynSDPBClassificationTrainer)
PlainOverlap = plain_overlap(Trainer)


class WeightsAtStepBegin(TrainerCallback):
    def __init__(self):
        self.weights = []

    def on_step_begin(self, args, state, control, model=None, **kwargs):
        self.weights.append(copy.deepcopy(model.state_dict()))


def run(*args, **kw):
    trainer = build(*args, **kw)
    trainer.train()
    return trainer


@pytest.mark.parametrize("micro,accum", [(4, 1), (2, 2), (1, 4)])
def test_each_step_repeats_the_previous_steps_fresh_half(tmp_path, tokenizer, micro, accum):
    t = run(tmp_path, tokenizer, per_device_train_batch_size=micro, gradient_accumulation_steps=accum, max_steps=10)
    steps = steps_of(t.seen, accum)
    assert len(steps) == 10 and all(len(s) == 4 for s in steps)
    assert_repeats_previous_fresh_half(steps)
    assert sorted(x for s in steps[:8] for i, x in enumerate(s) if is_fresh_position(i)) == list(range(16))
    distilled = logged(t, "dynsdpb/distilled_tokens")  # a "token" is a sample here: 2 repeated per step
    assert distilled == [0] + [2] * 9


@pytest.mark.parametrize("w", [1.0, 0.25])
def test_first_step_is_plain_ce_and_later_steps_match_a_hand_computed_loss(tmp_path, tokenizer, w):
    record = WeightsAtStepBegin()
    tau, alpha = 2.0, 0.7
    t = build(
        tmp_path,
        tokenizer,
        max_steps=3,
        callbacks=[record],
        distillation_schedule="static",
        distillation_temperature=tau,
        distillation_alpha=alpha,
        distillation_repeated_ce_weight=w,
    )
    t.train()
    t.seen = []
    logs = [h for h in t.state.log_history if "loss" in h]
    assert logs[0]["dynsdpb/distilled_tokens"] == 0 and logs[0]["dynsdpb/kd_loss"] == 0
    assert logs[0]["loss"] == pytest.approx(logs[0]["dynsdpb/ce"], rel=1e-5)
    model = make_classifier(len(tokenizer))
    collate = DataCollatorWithPadding(tokenizer)
    ds = t.train_dataset.remove_columns(["id"])
    sampler = list(OverlapSampler(len(ds), 4, seed=0))
    for step in (1, 2):
        rows = sampler[4 * step : 4 * step + 4]
        batch = collate([{k: v for k, v in ds[i].items() if k != INDEX_COLUMN} for i in rows])
        labels = batch.pop("labels")
        with torch.no_grad():
            model.load_state_dict(record.weights[step - 1])
            z_prev = model(**batch).logits
            model.load_state_dict(record.weights[step])
            z = model(**batch).logits
        repeated = [i for i in range(4) if not is_fresh_position(i)]
        p = F.softmax(z_prev[repeated] / tau, -1)
        q = F.log_softmax(z[repeated] / tau, -1)
        kl = (p * (p.log() - q)).sum(-1)
        ce_weight = torch.tensor([1.0 if is_fresh_position(i) else w for i in range(4)])
        ce = F.cross_entropy(z, labels, reduction="none")
        expected = (ce_weight * ce).sum() / ce_weight.sum() + (alpha * tau**2 * kl).mean()
        h = logs[step]
        assert h["loss"] == pytest.approx(expected.item(), rel=1e-4)
        assert h["dynsdpb/ce"] == pytest.approx(ce.mean().item(), rel=1e-4)  # the metric stays unweighted
        assert h["dynsdpb/kl"] == pytest.approx(kl.mean().item(), rel=1e-3)
        assert h["dynsdpb/alpha"] == pytest.approx(alpha) and h["dynsdpb/temperature"] == pytest.approx(tau)
        if w == 1.0:
            assert h["loss"] == pytest.approx(h["dynsdpb/ce"] + h["dynsdpb/kd_loss"], rel=1e-4)


def test_alpha_zero_equals_plain_training_on_the_same_batches(tmp_path, tokenizer):
    dyn = run(tmp_path / "d", tokenizer, max_steps=6, distillation_alpha=0.0)
    plain = run(tmp_path / "p", tokenizer, trainer_cls=PlainOverlap, max_steps=6)
    assert logged(dyn) == pytest.approx(logged(plain), rel=1e-5)
    for name, value in params(dyn).items():
        torch.testing.assert_close(value, params(plain)[name], rtol=1e-4, atol=1e-6)


def test_gradient_accumulation_gives_the_same_losses_and_weights(tmp_path, tokenizer):
    base = dict(max_steps=5, learning_rate=0.5, optim="sgd")
    runs = [
        run(tmp_path / f"{m}x{a}", tokenizer, per_device_train_batch_size=m, gradient_accumulation_steps=a, **base)
        for m, a in [(4, 1), (2, 2), (1, 4)]
    ]
    assert max(logged(runs[0], "dynsdpb/kd_loss")) > 0
    for other in runs[1:]:
        assert logged(other) == pytest.approx(logged(runs[0]), rel=1e-5)
        for name, value in params(other).items():
            torch.testing.assert_close(value, params(runs[0])[name], rtol=1e-5, atol=1e-6)


def test_dynamic_schedule_sets_per_sample_alpha_and_temperature(tmp_path, tokenizer):
    t = run(tmp_path, tokenizer, max_steps=4, distillation_temperature=3.0)
    stored = t._dynsdpb_store.current
    assert len(stored) == 2
    for record in stored.values():
        assert record.targets.logp.shape == (1, 3) and record.positions.tolist() == [0]
        assert 1.0 <= float(record.targets.tau) <= 3.0 and 0 < float(record.targets.alpha) <= 1.0
    later = [h for h in t.state.log_history if "loss" in h][1:]
    assert all(h["dynsdpb/kl"] > 0 and 1.0 <= h["dynsdpb/temperature"] <= 3.0 for h in later)


def test_attach_on_an_unmodified_trainer_and_resume_restores_the_targets(tmp_path, tokenizer):
    def trainer(out, steps):
        t = Trainer(
            model=make_classifier(len(tokenizer)),
            args=TrainingArguments(**kwargs(out, max_steps=steps, save_strategy="steps", save_steps=2)),
            train_dataset=classification_dataset(tokenizer, 16),
            data_collator=DataCollatorWithPadding(tokenizer),
        )
        return attach_dynsdpb(t, distillation_temperature=2.0, distillation_schedule="static")

    full = trainer(tmp_path / "full", 4)
    full.train()
    assert type(full).__name__ == "DynSDPBTrainer" and max(logged(full, "dynsdpb/kl")) > 0
    assert (tmp_path / "full" / "checkpoint-2" / TARGETS_FILE.format(rank=0)).exists()
    resumed = trainer(tmp_path / "full", 4)
    resumed.train(resume_from_checkpoint=str(tmp_path / "full" / "checkpoint-2"))
    assert logged(resumed)[-2:] == pytest.approx(logged(full)[-2:], rel=1e-5)
    step3 = next(h for h in resumed.state.log_history if h.get("step") == 3 and "loss" in h)
    assert step3["dynsdpb/distilled_tokens"] == 2  # the first resumed step distills: its targets were restored


@pytest.mark.parametrize(
    "make,match,error",
    [
        (lambda v: make_classifier(v, num_labels=1), "regression head", ValueError),
        (lambda v: make_classifier(v, problem_type="regression"), "regression head", ValueError),
        (lambda v: make_classifier(v, problem_type="multi_label_classification"), "multi_label", ValueError),
        (lambda v: make_model(v), "needs a sequence classifier", TypeError),
    ],
)
def test_models_without_a_class_distribution_are_refused(tmp_path, tokenizer, make, match, error):
    data = classification_dataset(tokenizer, 8)
    t = Trainer(
        model=make(len(tokenizer)),
        args=TrainingArguments(**kwargs(tmp_path)),
        train_dataset=data,
        data_collator=DataCollatorWithPadding(tokenizer),
    )
    with pytest.raises(error, match=match):
        attach_dynsdpb(t)


def test_classification_trainer_refuses_plain_training_arguments(tmp_path, tokenizer):
    with pytest.raises(TypeError, match="DynSDPBClassificationConfig"):
        DynSDPBClassificationTrainer(
            model=make_classifier(len(tokenizer)),
            args=TrainingArguments(**kwargs(tmp_path)),
            train_dataset=classification_dataset(tokenizer, 8),
        )
