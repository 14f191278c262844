"""What the causal-LM hook asks of a model family, checked once at construction, and the MoE term SFTTrainer adds.

The hook never reads the logits the model returns: it asks for the final hidden states ``h`` and projects them
through the LM head in the fused kernel, with the logit transform read from the config (as TRL's fused head does)::

    z = c * tanh(s * (h W^T + b) / c)        s = logit_scale (1 if none), c = final_logit_softcapping (none: no tanh)

That is the model's own objective only if its logits are exactly this. :func:`check_logits_path` checks it on one
short training row before anything trains, and refuses, naming the class, a family where they are not (an extra
transform between the last hidden state and the head, as in BERT-style LM heads; hidden states that are not the
head's input). A LoRA adapter on the head itself is refused by SFTTrainer already, for the same reason.

Mixture-of-experts models: SFTTrainer adds ``router_aux_loss_coef * aux_loss`` to the loss (divided by the
accumulation steps when ``num_items_in_batch`` is given), with the load-balancing loss computed as its fused head
computes it, from the router logits of the micro-batch: :func:`router_aux_loss`.
"""

from __future__ import annotations

import torch

__all__ = ["check_logits_path", "router_aux_loss"]


_NO_ROUTER_LOGITS = (
    "SFTTrainer adds a MoE load-balancing loss (router_aux_loss_coef != 0), but its forward returns no router_logits "
    "with output_router_logits=True; set router_aux_loss_coef=0 to train without it"
)


def _refuse(model, why: str) -> ValueError:
    return ValueError(
        f"DynSDPB cannot serve {type(model).__name__} exactly: {why}. The hook computes the loss from the final "
        f"hidden states and the LM head itself, so it refuses rather than train on another objective."
    )


def check_logits_path(
    model, head, transform: tuple[float, float | None], input_ids: list[int], router_logits: bool = False
) -> None:
    """Raise ``ValueError`` naming the model class unless its logits are the projection the fused kernel computes.

    Args:
        model: the model the trainer calls (a PEFT model is fine); put in eval mode for the probe, then restored.
        head: its output embedding (the LM head).
        transform: ``(logit_scale, softcap)`` from :func:`~.fused.logit_transform`.
        input_ids: a short token sequence (a training row) to run the probe on.
        router_logits: the trainer adds the MoE aux loss, so the forward must return router logits too.

    Skipped under DeepSpeed ZeRO-3, where the weights are partitioned until the engine runs the model.
    """
    from transformers.integrations import is_deepspeed_zero3_enabled

    weight, bias = head.weight, head.bias
    if is_deepspeed_zero3_enabled() or weight.numel() == 0 or weight.is_meta:
        return
    device = model.get_input_embeddings().weight.device
    ids = torch.tensor([input_ids], dtype=torch.long, device=device)
    training = model.training
    model.eval()
    try:
        with torch.no_grad():
            extra = {"output_router_logits": True} if router_logits else {}
            out = model(
                input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=False, output_hidden_states=True, **extra
            )
    finally:
        model.train(training)
    if router_logits and getattr(out, "router_logits", None) is None:
        raise _refuse(model, _NO_ROUTER_LOGITS)
    hidden, logits = getattr(out, "hidden_states", None), getattr(out, "logits", None)
    if hidden is None or logits is None or hidden[-1].shape[:-1] != logits.shape[:-1]:
        raise _refuse(
            model, "with output_hidden_states=True its forward returns no final hidden states aligned with its logits"
        )
    scale, softcap = transform
    with torch.no_grad():
        z = torch.nn.functional.linear(hidden[-1].to(weight.device, weight.dtype), weight, bias).float() * scale
        if softcap is not None:
            z = softcap * torch.tanh(z / softcap)
        ref = logits.float().to(z.device)
        finite = ref[torch.isfinite(ref)]
        # Rounding of the head's own dtype; a different path differs by the size of the logits themselves.
        tol = (1e-4 if weight.dtype == torch.float32 else 3e-2) * (1.0 + (finite.abs().max() if finite.numel() else 0))
        diff = torch.where(z == ref, 0.0, (z - ref).abs())  # equal infinities (masked entries) agree
    if not bool((diff <= tol).all()):
        raise _refuse(
            model,
            f"its logits are not the LM head ({type(head).__name__}) applied to the last hidden "
            f"state with the configured logit scale {scale} and softcap {softcap} (they differ by "
            f"up to {diff.nan_to_num(float('inf')).max().item():.3g} on a training row)",
        )


def router_aux_loss(model, outputs, attention_mask: torch.Tensor | None) -> torch.Tensor:
    """The MoE load-balancing loss of one micro-batch, as TRL's fused LM head computes it (transformers >= 5):
    Mixtral's ``load_balancing_loss_func`` over ``outputs.router_logits`` with the text config's ``num_experts`` and
    ``num_experts_per_tok``, padding excluded through ``attention_mask``."""
    from transformers.models.mixtral.modeling_mixtral import load_balancing_loss_func

    router_logits = getattr(outputs, "router_logits", None)
    if router_logits is None:
        raise _refuse(model, _NO_ROUTER_LOGITS)
    text = model.config.get_text_config()
    return load_balancing_loss_func(router_logits, text.num_experts, text.num_experts_per_tok, attention_mask)
