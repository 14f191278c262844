"""DynSDPB inside TRL's SFTTrainer, on a tiny random Llama: batches, targets, loss, logging, resume, bad config."""

import copy
import shutil
import warnings

import pytest
import torch
from helpers import (
    arithmetic_dataset,
    assert_repeats_previous_fresh_half,
    logged,
    make_model,
    params,
    plain_overlap,
    recording,
    sft_kwargs,
    steps_of,
)
from trl import SFTConfig, SFTTrainer

from dynsdpb_selfplay import DynSDPBConfig, DynSDPBTrainer, attach_dynsdpb
from dynsdpb_selfplay.distill.sampler import is_fresh_position
from dynsdpb_selfplay.distill.trainer import TARGETS_FILE

RecordingTrainer = recording(DynSDPBTrainer)
PlainOverlapTrainer = plain_overlap(SFTTrainer)


class PlainOverlapFreshLabelsOnly(PlainOverlapTrainer):
    """Plain CE on the same overlapping batches with the repeated half's labels masked after the first step (whose
    repeated half holds rows not yet stored), counted by transformers' own ``num_items_in_batch``."""

    def get_batch_samples(self, epoch_iterator, num_batches, device):
        batches, _ = super().get_batch_samples(epoch_iterator, num_batches, device)
        if self.state.global_step > 0:
            position = 0
            for batch in batches:
                for row in range(batch["labels"].shape[0]):
                    if not is_fresh_position(position):
                        batch["labels"][row] = -100
                    position += 1
        return batches, self._get_num_items_in_batch(batches, device)


def run(tmp_path, tokenizer, n=16, trainer_cls=RecordingTrainer, dataset=None, **overrides):
    kw = sft_kwargs(tmp_path / "out", **overrides)
    cfg_cls = DynSDPBConfig if issubclass(trainer_cls, DynSDPBTrainer) else SFTConfig
    trainer = trainer_cls(
        model=make_model(len(tokenizer)),
        args=cfg_cls(**kw),
        train_dataset=dataset if dataset is not None else arithmetic_dataset(n),
        processing_class=tokenizer,
    )
    trainer.train()
    return trainer


# ----------------------------------------------------------------------------------------------- batches
@pytest.mark.parametrize("micro,accum", [(4, 1), (2, 2), (1, 4)])
def test_each_step_repeats_the_previous_steps_fresh_half(tmp_path, tokenizer, micro, accum):
    t = run(tmp_path, tokenizer, per_device_train_batch_size=micro, gradient_accumulation_steps=accum, max_steps=10)
    steps = steps_of(t.seen, accum)
    assert len(steps) == 10 and all(len(s) == 4 for s in steps)
    assert_repeats_previous_fresh_half(steps)
    # 16 examples, halves of 2: steps 0..7 are epoch 0 and see every example once as fresh; 8, 9 carry over.
    assert sorted(x for s in steps[:8] for i, x in enumerate(s) if is_fresh_position(i)) == list(range(16))
    distilled = logged(t, "dynsdpb/distilled_tokens")
    assert distilled[0] == 0 and all(d > 0 for d in distilled[1:])


@pytest.mark.parametrize("repeated_ce_weight", [1.0, 0.5])
def test_gradient_accumulation_gives_the_same_losses_and_weights(tmp_path, tokenizer, repeated_ce_weight):
    # SGD: parameter differences are then lr * gradient differences, not amplified by Adam's normalization.
    base = dict(
        max_steps=5,
        distillation_schedule="static",
        distillation_temperature=2.0,
        learning_rate=0.5,
        optim="sgd",
        distillation_repeated_ce_weight=repeated_ce_weight,
    )
    runs = [
        run(tmp_path / f"{m}x{a}", tokenizer, per_device_train_batch_size=m, gradient_accumulation_steps=a, **base)
        for m, a in [(4, 1), (2, 2), (1, 4)]
    ]
    ref_loss, ref_params = logged(runs[0]), params(runs[0])
    assert max(logged(runs[0], "dynsdpb/kd_loss")) > 0
    for other in runs[1:]:
        assert logged(other) == pytest.approx(ref_loss, rel=1e-5)
        for name, value in params(other).items():
            torch.testing.assert_close(value, ref_params[name], rtol=1e-5, atol=1e-6)
    assert logged(runs[2], "dynsdpb/alpha") == pytest.approx(logged(runs[0], "dynsdpb/alpha"))


# -------------------------------------------------------------------------------------------- the loss
def test_alpha_zero_equals_plain_cross_entropy_on_the_same_batches(tmp_path, tokenizer):
    dyn = run(tmp_path / "d", tokenizer, distillation_alpha=0.0, max_steps=6)
    plain = run(tmp_path / "p", tokenizer, trainer_cls=PlainOverlapTrainer, max_steps=6)
    assert logged(dyn) == pytest.approx(logged(plain), rel=1e-5)
    assert logged(dyn, "mean_token_accuracy") == pytest.approx(logged(plain, "mean_token_accuracy"), rel=1e-6)
    assert logged(dyn, "entropy") == pytest.approx(logged(plain, "entropy"), rel=1e-4)
    for name, value in params(dyn).items():
        torch.testing.assert_close(value, params(plain)[name], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("micro,accum", [(4, 1), (2, 2)])
def test_no_ce_on_repeated_rows_equals_plain_ce_on_the_fresh_rows_alone(tmp_path, tokenizer, micro, accum):
    # distillation_repeated_ce_weight = 0 with a negligible distillation term: each step is the CE of its fresh half
    # alone, divided by the fresh label tokens (transformers' own count once the repeated labels are masked).
    common = dict(
        max_steps=6,
        learning_rate=0.5,
        optim="sgd",
        per_device_train_batch_size=micro,
        gradient_accumulation_steps=accum,
    )
    dyn = run(
        tmp_path / "d",
        tokenizer,
        distillation_repeated_ce_weight=0.0,
        distillation_alpha=1e-30,
        distillation_schedule="static",
        **common,
    )
    plain = run(tmp_path / "p", tokenizer, trainer_cls=PlainOverlapFreshLabelsOnly, **common)
    full = run(tmp_path / "f", tokenizer, distillation_alpha=1e-30, distillation_schedule="static", **common)
    assert logged(dyn) == pytest.approx(logged(plain), rel=1e-5)
    assert logged(dyn)[0] == pytest.approx(logged(full)[0], rel=1e-6)  # nothing is repeated yet at step 1
    assert logged(dyn)[1:] != pytest.approx(logged(full)[1:], rel=1e-3)
    for name, value in params(dyn).items():
        torch.testing.assert_close(value, params(plain)[name], rtol=1e-4, atol=1e-6)


def test_first_step_is_plain_ce_and_later_steps_log_the_distillation(tmp_path, tokenizer):
    t = run(tmp_path, tokenizer, max_steps=4, distillation_schedule="static", distillation_temperature=2.0)
    logs = [h for h in t.state.log_history if "loss" in h]
    for key in ("dynsdpb/kl", "dynsdpb/alpha", "dynsdpb/temperature", "dynsdpb/ce"):
        assert all(key in h for h in logs), key
    first, later = logs[0], logs[1:]
    assert first["dynsdpb/distilled_tokens"] == 0 and first["dynsdpb/kd_loss"] == 0
    assert first["loss"] == pytest.approx(first["dynsdpb/ce"], rel=1e-5)
    for h in later:
        assert h["dynsdpb/kl"] > 0 and h["dynsdpb/alpha"] == pytest.approx(1.0)
        assert h["dynsdpb/temperature"] == pytest.approx(2.0) and h["dynsdpb/aligned_fraction"] == 1.0
        assert h["loss"] == pytest.approx(h["dynsdpb/ce"] + h["dynsdpb/kd_loss"], rel=1e-4)


def test_stored_targets_are_the_previous_steps_predictions(tmp_path, tokenizer):
    model = make_model(len(tokenizer))
    before = copy.deepcopy(model)
    kw = sft_kwargs(tmp_path, max_steps=1, distillation_schedule="static", distillation_temperature=2.0)
    trainer = DynSDPBTrainer(
        model=model, args=DynSDPBConfig(**kw), train_dataset=arithmetic_dataset(16), processing_class=tokenizer
    )
    trainer.train()
    stored = trainer._dynsdpb_store.current
    assert len(stored) == 2  # the fresh half of the one step
    for key, record in stored.items():
        row = trainer.train_dataset[key]
        assert record.tokens.tolist() == row["input_ids"]
        labelled = [t for t in range(len(row["input_ids"]) - 1) if row["labels"][t + 1] != -100]
        assert record.positions.tolist() == labelled
        with torch.no_grad():
            logits = before(input_ids=torch.tensor([row["input_ids"]])).logits[0, record.positions]
        torch.testing.assert_close(record.targets.logp, torch.log_softmax(logits / 2.0, -1), rtol=1e-4, atol=1e-5)
        assert torch.all(record.targets.tau == 2.0)


def test_topk_store_trains_and_reports_tail_mass(tmp_path, tokenizer):
    t = run(tmp_path, tokenizer, max_steps=3, distillation_topk=8, distillation_temperature=1.0)
    tail = logged(t, "dynsdpb/tail_mass")
    assert len(tail) == 3 and 0 < tail[-1] < 1
    assert all(torch.isfinite(torch.tensor(logged(t))))


# ------------------------------------------------------------------------------------- integrations
def test_attach_on_an_unmodified_sft_trainer_with_lora(tmp_path, tokenizer):
    from peft import LoraConfig

    trainer = SFTTrainer(
        model=make_model(len(tokenizer)),
        args=SFTConfig(**sft_kwargs(tmp_path, max_steps=3)),
        train_dataset=arithmetic_dataset(16),
        processing_class=tokenizer,
        peft_config=LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]),
    )
    base = {k: v.detach().clone() for k, v in trainer.model.named_parameters() if "lora" not in k}
    lora = {k: v.detach().clone() for k, v in trainer.model.named_parameters() if "lora_B" in k}
    assert attach_dynsdpb(trainer, distillation_temperature=2.0, distillation_schedule="dynamic") is trainer
    assert isinstance(trainer, SFTTrainer)
    trainer.train()
    after = dict(trainer.model.named_parameters())
    assert all(torch.equal(after[k], v) for k, v in base.items())
    assert any(not torch.equal(after[k], v) for k, v in lora.items())
    assert logged(trainer, "dynsdpb/distilled_tokens")[-1] > 0


def test_bf16_autocast_and_gradient_checkpointing(tmp_path, tokenizer):
    t = run(tmp_path, tokenizer, max_steps=3, bf16=True, gradient_checkpointing=True)
    assert all(torch.isfinite(torch.tensor(logged(t))))
    assert logged(t, "dynsdpb/kl")[-1] > 0


@pytest.mark.parametrize("kind", ["messages", "conversational_prompt_completion"])
def test_conversational_data(tmp_path, tokenizer, kind):
    from datasets import Dataset

    rows = []
    for r in arithmetic_dataset(12):
        user, assistant = {"role": "user", "content": r["prompt"]}, {"role": "assistant", "content": r["completion"]}
        rows.append(
            {"messages": [user, assistant]} if kind == "messages" else {"prompt": [user], "completion": [assistant]}
        )
    t = run(tmp_path, tokenizer, dataset=Dataset.from_list(rows), max_steps=3)
    assert logged(t, "dynsdpb/distilled_tokens")[-1] > 0


def test_eval_uses_plain_loss(tmp_path, tokenizer):
    t = run(tmp_path, tokenizer, max_steps=2)
    metrics = t.evaluate(arithmetic_dataset(6, seed=5))
    assert metrics["eval_loss"] > 0 and "eval_dynsdpb/kl" not in metrics


# ------------------------------------------------------------------------------------------------ resume
def test_resume_continues_the_same_batches_and_targets(tmp_path, tokenizer):
    kw = dict(max_steps=6, save_strategy="steps", save_steps=3, distillation_schedule="static")
    full = run(tmp_path / "full", tokenizer, **kw)
    ckpt = tmp_path / "full" / "out" / "checkpoint-3"
    assert (ckpt / TARGETS_FILE.format(rank=0)).exists()

    def resume(src):
        t = RecordingTrainer(
            model=make_model(len(tokenizer)),
            args=DynSDPBConfig(**sft_kwargs(tmp_path / "resumed", **kw)),
            train_dataset=arithmetic_dataset(16),
            processing_class=tokenizer,
        )
        t.train(resume_from_checkpoint=str(src))
        return t

    resumed = resume(ckpt)
    assert resumed.seen == full.seen[3:]
    # The resumed log history starts with the checkpoint's first three entries.
    assert logged(resumed)[3:] == pytest.approx(logged(full)[3:], rel=1e-5)
    assert logged(resumed, "dynsdpb/distilled_tokens")[3] > 0

    # Warm restart: a checkpoint without stored targets distills nothing on its first step, then carries on.
    warm_ckpt = tmp_path / "warm"
    shutil.copytree(ckpt, warm_ckpt)
    (warm_ckpt / TARGETS_FILE.format(rank=0)).unlink()
    warm = resume(warm_ckpt)
    distilled = logged(warm, "dynsdpb/distilled_tokens")[3:]
    assert distilled[0] == 0 and all(d > 0 for d in distilled[1:])
    assert warm.seen == full.seen[3:]


# ----------------------------------------------------------------------------------------- bad config
@pytest.mark.parametrize(
    "field,value,match",
    [
        ("distillation_temperature", 0.0, "distillation_temperature"),
        ("distillation_temperature", -1.0, "distillation_temperature"),
        ("distillation_topk", 0, "distillation_topk"),
        ("distillation_alpha", -0.5, "distillation_alpha"),
        ("distillation_schedule", "sometimes", "distillation_schedule"),
        ("distillation_min_temperature", 5.0, "distillation_min_temperature"),
    ],
)
def test_bad_distillation_fields_fail_at_construction(tmp_path, field, value, match):
    with pytest.raises(ValueError, match=match):
        DynSDPBConfig(**sft_kwargs(tmp_path, **{field: value}))


def test_min_temperature_is_validated_only_where_the_schedule_uses_it(tmp_path):
    from dynsdpb_selfplay.distill.config import DistillationArguments

    # The static rule never reads distillation_min_temperature (default 1.0): tau0 < 1 is a valid static setup.
    cfg = DynSDPBConfig(**sft_kwargs(tmp_path, distillation_schedule="static", distillation_temperature=0.5))
    assert cfg.distillation_temperature == 0.5
    assert DistillationArguments(distillation_schedule="static", distillation_temperature=0.5).distillation_alpha == 1
    with pytest.raises(ValueError, match="distillation_min_temperature"):
        DistillationArguments(distillation_schedule="dynamic", distillation_temperature=0.5)
    DistillationArguments(distillation_temperature=0.5, distillation_min_temperature=0.25)  # dynamic, in range


def _sft_trainer(tmp_path, tokenizer, dataset=None, **overrides):
    return SFTTrainer(
        model=make_model(len(tokenizer)),
        args=SFTConfig(**sft_kwargs(tmp_path, **overrides)),
        train_dataset=dataset if dataset is not None else arithmetic_dataset(16),
        processing_class=tokenizer,
    )


@pytest.mark.parametrize(
    "overrides,attach,match",
    [
        ({}, dict(distillation_temperature=0.0), "distillation_temperature"),
        ({}, dict(distillation_topk=0), "distillation_topk"),
        ({"packing": True}, {}, "packing=True"),
        ({"padding_free": True, "max_length": None}, {}, "padding_free=True"),
        ({"per_device_train_batch_size": 3}, {}, "even"),
        ({}, dict(distillation_id_column="uid"), "distillation_id_column='uid'"),
    ],
)
def test_attach_refuses_unsupported_setups_naming_the_option(tmp_path, tokenizer, overrides, attach, match):
    trainer = _sft_trainer(tmp_path, tokenizer, **overrides)
    with pytest.raises(ValueError, match=match):
        attach_dynsdpb(trainer, **attach)


def test_duplicate_ids_are_refused(tmp_path, tokenizer):
    from datasets import Dataset

    rows = arithmetic_dataset(8).to_list()
    rows[5]["id"] = rows[2]["id"]
    trainer = _sft_trainer(tmp_path, tokenizer, dataset=Dataset.from_list(rows))
    with pytest.raises(ValueError, match="'q2' appears more than once"):
        attach_dynsdpb(trainer, distillation_id_column="id")


def test_unique_id_column_is_accepted(tmp_path, tokenizer):
    trainer = attach_dynsdpb(_sft_trainer(tmp_path, tokenizer), distillation_id_column="id")
    assert trainer.dynsdpb.distillation_id_column == "id"


def test_topk_with_high_temperature_warns(tmp_path, tokenizer):
    with pytest.warns(UserWarning, match="underestimated"):
        attach_dynsdpb(_sft_trainer(tmp_path, tokenizer), distillation_topk=16, distillation_temperature=3.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        attach_dynsdpb(_sft_trainer(tmp_path / "b", tokenizer), distillation_topk=16, distillation_temperature=1.0)


def test_trainer_refuses_a_plain_sft_config(tmp_path, tokenizer):
    with pytest.raises(TypeError, match="DynSDPBConfig"):
        DynSDPBTrainer(model=make_model(len(tokenizer)), args=SFTConfig(**sft_kwargs(tmp_path)))


def test_attach_twice_and_unknown_options_are_refused(tmp_path, tokenizer):
    trainer = attach_dynsdpb(_sft_trainer(tmp_path, tokenizer))
    with pytest.raises(ValueError, match="already attached"):
        attach_dynsdpb(trainer)
    with pytest.raises(TypeError, match="unknown option 'distillation_temprature'"):
        attach_dynsdpb(_sft_trainer(tmp_path / "b", tokenizer), distillation_temprature=2.0)
    # The short spellings of earlier versions name the one spelling there is now.
    with pytest.raises(TypeError, match="'temperature'; did you mean distillation_temperature"):
        attach_dynsdpb(_sft_trainer(tmp_path / "c", tokenizer), temperature=2.0)
    # A config carrying the fields is taken whole; overrides win.
    settings = DynSDPBConfig(output_dir=str(tmp_path / "d"), distillation_temperature=1.5, distillation_topk=8)
    trainer = attach_dynsdpb(_sft_trainer(tmp_path / "e", tokenizer), settings, distillation_topk=4)
    assert trainer.dynsdpb.distillation_temperature == 1.5 and trainer.dynsdpb.distillation_topk == 4


def test_a_training_set_emptied_by_max_length_is_refused_with_the_reason(tmp_path, tokenizer):
    from dynsdpb_selfplay.distill.trainer import DatasetTooSmallError

    with pytest.raises(DatasetTooSmallError, match="max_length=12"):
        attach_dynsdpb(_sft_trainer(tmp_path, tokenizer, max_length=12))


def test_linear_progress_scales_alpha_by_the_step_it_teaches(tmp_path, tokenizer):
    # Static alpha0 = 1: the targets stored during step s teach step s + 1, and carry alpha = (s + 1) / S.
    t = run(tmp_path, tokenizer, max_steps=6, distillation_schedule="static", distillation_progress="linear")
    alphas = logged(t, "dynsdpb/alpha")
    assert alphas[0] == 0  # the first step distills nothing
    assert alphas[1:] == pytest.approx([s / 6 for s in range(2, 7)], rel=1e-6)
    dynamic = run(tmp_path / "d", tokenizer, max_steps=6, distillation_uncertainty_topk=4)
    assert 0 < min(logged(dynamic, "dynsdpb/alpha")[1:]) and max(logged(dynamic, "dynsdpb/alpha")) <= 1
