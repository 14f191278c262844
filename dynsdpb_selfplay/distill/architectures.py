"""What the causal-LM hook needs from a model family beyond a dense decoder.

Mixture-of-experts models: SFTTrainer adds ``router_aux_loss_coef * aux_loss`` to the loss (divided by the
accumulation steps when ``num_items_in_batch`` is given), with the load-balancing loss computed as its fused head
computes it, from the router logits of the micro-batch: :func:`router_aux_loss`.
"""

from __future__ import annotations

import torch

__all__ = ["router_aux_loss"]


_NO_ROUTER_LOGITS = (
    "SFTTrainer adds a MoE load-balancing loss (router_aux_loss_coef != 0), but its forward returns no router_logits "
    "with output_router_logits=True; set router_aux_loss_coef=0 to train without it"
)


def _refuse(model, why: str) -> ValueError:
    return ValueError(
        f"DynSDPB cannot serve {type(model).__name__} exactly: {why}. The hook computes the loss from the final "
        f"hidden states and the LM head itself, so it refuses rather than train on another objective."
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
