"""A NaN/inf loss in one micro-batch: `stop` raises naming the step with the state before it saved (and resuming
replays it exactly); `skip` gives that micro-batch zero gradient, stores nothing from it and logs it."""

import pytest
import torch
from helpers import arithmetic_dataset, build_classifier, make_model, sft_kwargs

from dynsdpb_selfplay import DynSDPBConfig, DynSDPBTrainer
from dynsdpb_selfplay.distill.trainer import TARGETS_FILE
from dynsdpb_selfplay.errors import NonFiniteLossError


def poison(trainer, at_step: int) -> None:
    """NaN embeddings for every forward of optimizer step ``at_step`` (1-based), while training."""
    model = trainer.model

    def hook(module, args, output):
        if model.training and trainer.state.global_step + 1 == at_step and getattr(trainer, "poisoned", True):
            return output * float("nan")
        return output

    model.get_input_embeddings().register_forward_hook(hook)


def lm_trainer(tmp_path, tokenizer, **overrides):
    kw = sft_kwargs(
        tmp_path / "out",
        max_steps=5,
        optim="sgd",
        learning_rate=0.1,
        save_strategy="steps",
        save_steps=10,
        distillation_schedule="static",
        distillation_temperature=2.0,
    )
    kw.update(overrides)
    return DynSDPBTrainer(
        model=make_model(len(tokenizer)),
        args=DynSDPBConfig(**kw),
        train_dataset=arithmetic_dataset(16),
        processing_class=tokenizer,
    )


def losses(trainer):
    return {h["step"]: h["loss"] for h in trainer.state.log_history if "loss" in h}


def test_stop_saves_the_state_before_the_step_and_resume_replays_it(tmp_path, tokenizer):
    reference = lm_trainer(tmp_path / "ref", tokenizer)
    reference.train()
    crashed = lm_trainer(tmp_path, tokenizer)
    poison(crashed, at_step=4)
    with pytest.raises(NonFiniteLossError, match=r"loss is nan at optimizer step 4 \(training-set rows \[") as e:
        crashed.train()
    ckpt = tmp_path / "out" / "checkpoint-3"
    assert str(ckpt) in str(e.value) and (ckpt / "trainer_state.json").exists()
    assert (ckpt / TARGETS_FILE.format(rank=0)).exists()
    for p in crashed.model.parameters():  # nothing of the bad step was applied
        assert torch.isfinite(p).all()
    resumed = lm_trainer(tmp_path, tokenizer)
    resumed.train(resume_from_checkpoint=str(ckpt))
    assert losses(resumed)[4] == pytest.approx(losses(reference)[4], rel=1e-5)  # same batch, same targets
    assert losses(resumed)[5] == pytest.approx(losses(reference)[5], rel=1e-5)


def test_skip_gives_zero_gradient_and_stores_nothing_from_the_bad_micro_batch(tmp_path, tokenizer):
    t = lm_trainer(tmp_path, tokenizer, distillation_on_nonfinite="skip", max_steps=4)
    poison(t, at_step=2)
    weights = {}
    t.add_callback(
        type(
            "Snap",
            (__import__("transformers").TrainerCallback,),
            {
                "on_step_end": lambda self, args, state, control, model=None, **kw: weights.__setitem__(
                    state.global_step, {k: v.detach().clone() for k, v in model.named_parameters()}
                )
            },
        )
    )
    t.train()
    logs = {h["step"]: h for h in t.state.log_history if "loss" in h}
    assert logs[2]["dynsdpb/skipped_nonfinite"] == 1 and "dynsdpb/skipped_nonfinite" not in logs[3]
    for name, value in weights[2].items():  # SGD without momentum: a zero gradient leaves the weights as they were
        torch.testing.assert_close(value, weights[1][name])
    assert logs[3]["dynsdpb/distilled_tokens"] == 0  # step 2 stored no targets for step 3 to distill
    assert logs[4]["dynsdpb/distilled_tokens"] > 0 and all(torch.isfinite(v).all() for v in weights[4].values())


def test_classifier_skip_and_stop(tmp_path, tokenizer):
    t = build_classifier(tmp_path / "skip", tokenizer, max_steps=3, distillation_on_nonfinite="skip")
    poison(t, at_step=2)
    t.train()
    logs = {h["step"]: h for h in t.state.log_history if "loss" in h}
    assert logs[2]["dynsdpb/skipped_nonfinite"] == 1 and logs[3]["dynsdpb/distilled_tokens"] == 0
    t = build_classifier(tmp_path / "stop", tokenizer, max_steps=3)
    poison(t, at_step=2)
    with pytest.raises(NonFiniteLossError, match="optimizer step 2"):
        t.train()


def test_a_masked_vocabulary_entry_trains_with_the_dynamic_schedule(tmp_path, tokenizer):
    # A head whose bias masks one vocabulary entry (-inf logit): probability 0, so 0 * log 0 terms must count as 0.
    # Before, the stored entropy, hence the dynamic alpha, was NaN and the next step's loss NaN.
    model = make_model(len(tokenizer))
    head = torch.nn.Linear(model.config.hidden_size, len(tokenizer), bias=True)
    with torch.no_grad():
        head.weight.copy_(model.lm_head.weight)
        head.bias.zero_()
        head.bias[-1] = float("-inf")
    model.lm_head, model.config.tie_word_embeddings = head, False
    kw = sft_kwargs(tmp_path / "out", max_steps=3, distillation_schedule="dynamic")
    t = DynSDPBTrainer(
        model=model, args=DynSDPBConfig(**kw), train_dataset=arithmetic_dataset(16), processing_class=tokenizer
    )
    t.train()
    logs = [h for h in t.state.log_history if "loss" in h]
    assert len(logs) == 3 and all(torch.isfinite(torch.tensor(h["loss"])) for h in logs)
    assert logs[-1]["dynsdpb/distilled_tokens"] > 0 and 0 < logs[-1]["dynsdpb/alpha"] < 1
    assert all(torch.isfinite(torch.tensor(h["entropy"])) for h in logs)
    assert model.lm_head.bias[-1].item() == float("-inf")
