"""DynSDPB on every model family of tests/families.py: the same objective whatever the architecture.

For each family, on the same overlapping batches (static schedule, alpha 1, tau 2, SGD, 3 steps):

* ``distillation_alpha=0`` reproduces plain ``SFTTrainer`` (losses, weights, metrics, the MoE aux loss);
* the loss and the weights equal a naive recomputation from the model's own logits: TRL's CE, plus
  ``sum alpha tau^2 KL(softmax(z_prev / tau) || softmax(z / tau)) / D`` over the step's distilled tokens, plus TRL's
  ``router_aux_loss_coef * aux_loss`` for MoE;
* (micro-batch 4, accumulation 1) == (2, 2) == (1, 4) in losses and weights.

Completions have equal lengths (prompts vary, so rows are padded): on a model without loss kwargs TRL's CE is the mean
of the micro-batches' means, which then equals the step mean, so the comparisons are exact for every family. The MoE
load-balancing loss is a per-micro-batch statistic in SFTTrainer itself, so the accumulation comparison turns it off
(``router_aux_loss_coef=0``); the other two comparisons keep it.
"""

from __future__ import annotations

import pytest
import torch
from families import FAMILIES, MOE, build, equal_completion_rows
from helpers import logged, params, plain_overlap, sft_kwargs
from trl import SFTConfig, SFTTrainer

from dynsdpb_selfplay import DynSDPBConfig, DynSDPBTrainer
from dynsdpb_selfplay.distill.batching import INDEX_COLUMN

TAU, LR, STEPS = 2.0, 0.2, 3
SHAPES = [(4, 1), (2, 2), (1, 4)]


def recording(trainer_cls):
    """``trainer_cls`` keeping a copy of every training micro-batch's tensors (for the naive recomputation)."""

    class Recording(trainer_cls):
        def compute_loss(self, model, inputs, *args, **kwargs):
            if model.training and INDEX_COLUMN in inputs:
                keep = ("input_ids", "attention_mask", "labels", INDEX_COLUMN)
                self.batches = getattr(self, "batches", []) + [{k: inputs[k].detach().clone() for k in keep}]
            return super().compute_loss(model, inputs, *args, **kwargs)

    return Recording


def train(family, tmp, tokenizer, trainer_cls, micro=2, accum=2, **overrides):
    kw = sft_kwargs(
        tmp,
        per_device_train_batch_size=micro,
        gradient_accumulation_steps=accum,
        max_steps=STEPS,
        optim="sgd",
        learning_rate=LR,
        **overrides,
    )
    config_cls = DynSDPBConfig if issubclass(trainer_cls, DynSDPBTrainer) else SFTConfig
    if config_cls is DynSDPBConfig:
        kw.setdefault("distillation_schedule", "static")
        kw.setdefault("distillation_temperature", TAU)
    trainer = trainer_cls(
        model=build(family, len(tokenizer)),
        args=config_cls(**kw),
        train_dataset=equal_completion_rows(),
        processing_class=tokenizer,
    )
    trainer.train()
    return trainer


def assert_same_params(a: dict, b: dict, rtol=1e-5, atol=1e-6):
    assert a.keys() == b.keys()
    for name, value in a.items():
        torch.testing.assert_close(value, b[name], rtol=rtol, atol=atol, msg=lambda m, n=name: f"{n}: {m}")


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # Hidden size 32: threads only add synchronisation, which on a loaded machine costs more than the matmuls.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module", params=FAMILIES)
def runs(request, tmp_path_factory, tokenizer):
    family = request.param
    tmp = tmp_path_factory.mktemp(family)
    no_aux = {"router_aux_loss_coef": 0.0} if family in MOE else {}
    out = {"family": family}
    out["shapes"] = {
        (m, a): train(family, tmp / f"{m}x{a}", tokenizer, DynSDPBTrainer, m, a, **no_aux) for m, a in SHAPES
    }
    out["naive"] = train(family, tmp / "naive", tokenizer, recording(DynSDPBTrainer))
    out["alpha0"] = train(family, tmp / "alpha0", tokenizer, DynSDPBTrainer, distillation_alpha=0.0)
    out["sft"] = train(family, tmp / "sft", tokenizer, plain_overlap(SFTTrainer))
    return out


# --------------------------------------------------------------------------------------- naive recomputation
def naive_step_losses(family: str, vocab: int, trainer) -> tuple[list[float], dict]:
    """Replay ``trainer``'s recorded micro-batches on a fresh copy of the model from its logits, and SGD-train it."""
    model = build(family, vocab)
    model.train()
    accepts_loss_kwargs = trainer.model_accepts_loss_kwargs
    aux_coef = trainer.router_aux_loss_coef if trainer.aux_loss_enabled else 0.0
    clip, accum = trainer.args.max_grad_norm, trainer.args.gradient_accumulation_steps
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    batches, previous, losses = trainer.batches, {}, []
    for s in range(0, len(batches), accum):
        step = batches[s : s + accum]
        current, ce, n_tokens, kd, n_kd, aux = {}, [], [], [], 0, []
        for mb in step:
            out = model(
                input_ids=mb["input_ids"],
                attention_mask=mb["attention_mask"],
                use_cache=False,
                **({"output_router_logits": True} if aux_coef else {}),
            )
            mb_ce, mb_n = 0.0, 0
            for b, row in enumerate(mb[INDEX_COLUMN].tolist()):
                mask = mb["labels"][b, 1:] != -100
                z, y = out.logits[b, :-1][mask].float(), mb["labels"][b, 1:][mask]
                mb_ce = mb_ce + torch.nn.functional.cross_entropy(z, y, reduction="sum")
                mb_n += int(mask.sum())
                if row in previous:  # repeated from the previous step: its stored logits are the teacher
                    p = torch.softmax(previous[row] / TAU, -1)
                    lq = torch.log_softmax(z / TAU, -1)
                    kd.append(TAU**2 * (p * (p.log() - lq)).sum())
                    n_kd += len(y)
                current[row] = z.detach()
            ce.append(mb_ce)
            n_tokens.append(mb_n)
            if aux_coef:
                aux.append(out.aux_loss)
        if accepts_loss_kwargs:  # TRL: CE over the step's label tokens
            ce_term = sum(ce) / sum(n_tokens)
        else:  # transformers divides each micro-batch mean by the accumulation steps
            ce_term = sum(c / n for c, n in zip(ce, n_tokens, strict=True)) / len(step)
        loss = ce_term + (sum(kd) / n_kd if kd else 0.0) + (aux_coef * sum(aux) / len(aux) if aux else 0.0)
        opt.zero_grad()
        loss.backward()
        if clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()
        losses.append(loss.item())
        previous = current
    return losses, {k: v.detach() for k, v in model.named_parameters()}


# -------------------------------------------------------------------------------------------------- tests
def test_alpha_zero_reproduces_sft_trainer(runs):
    dyn, sft = runs["alpha0"], runs["sft"]
    assert logged(dyn) == pytest.approx(logged(sft), rel=1e-5)
    assert logged(dyn, "mean_token_accuracy") == pytest.approx(logged(sft, "mean_token_accuracy"), rel=1e-6)
    assert logged(dyn, "entropy") == pytest.approx(logged(sft, "entropy"), rel=1e-4)
    if runs["family"] in MOE:
        assert sft.aux_loss_enabled and len(logged(sft, "aux_loss")) == STEPS
        assert logged(dyn, "aux_loss") == pytest.approx(logged(sft, "aux_loss"), rel=1e-5)
    assert_same_params(params(dyn), params(sft), rtol=1e-4)


def test_loss_and_weights_equal_a_naive_logits_recomputation(runs, tokenizer):
    trainer = runs["naive"]
    losses, weights = naive_step_losses(runs["family"], len(tokenizer), trainer)
    assert len(losses) == STEPS and logged(trainer, "dynsdpb/distilled_tokens")[-1] > 0
    assert logged(trainer) == pytest.approx(losses, rel=1e-5)
    assert_same_params(params(trainer), weights)


def test_accumulation_and_micro_batch_size_do_not_change_the_run(runs):
    ref = runs["shapes"][SHAPES[0]]
    assert max(logged(ref, "dynsdpb/kd_loss")) > 0
    for shape in SHAPES[1:]:
        other = runs["shapes"][shape]
        assert logged(other) == pytest.approx(logged(ref), rel=1e-5), shape
        # The KL between consecutive steps is ~1e-3 here: compare it to the loss's precision, not its own.
        assert logged(other, "dynsdpb/kd_loss") == pytest.approx(logged(ref, "dynsdpb/kd_loss"), abs=1e-6), shape
        assert_same_params(params(other), params(ref))
    for trainer in runs["shapes"].values():  # the KD term enters the loss whole, as logged
        ce, kd = logged(trainer, "dynsdpb/ce"), logged(trainer, "dynsdpb/kd_loss")
        assert logged(trainer) == pytest.approx([c + k for c, k in zip(ce, kd, strict=True)], rel=1e-5)


def test_a_family_whose_logits_are_not_the_heads_projection_is_refused_naming_it(tmp_path, tokenizer):
    # BERT's LM head runs a dense + GELU + LayerNorm transform before the decoder: the fused kernel, which projects
    # the last hidden state through the output embedding, would train another objective.
    from transformers import BertConfig, BertLMHeadModel

    from dynsdpb_selfplay import attach_dynsdpb

    def bert():
        return BertLMHeadModel(
            BertConfig(
                vocab_size=len(tokenizer),
                hidden_size=32,
                num_hidden_layers=1,
                num_attention_heads=4,
                intermediate_size=64,
                is_decoder=True,
            )
        )

    match = r"cannot serve BertLMHeadModel exactly: its logits are not the LM head"
    sft = SFTTrainer(
        model=bert(),
        args=SFTConfig(**sft_kwargs(tmp_path / "a")),
        train_dataset=equal_completion_rows(),
        processing_class=tokenizer,
    )
    with pytest.raises(ValueError, match=match):
        attach_dynsdpb(sft)
    with pytest.raises(ValueError, match=match):
        DynSDPBTrainer(
            model=bert(),
            args=DynSDPBConfig(**sft_kwargs(tmp_path / "b")),
            train_dataset=equal_completion_rows(),
            processing_class=tokenizer,
        )
