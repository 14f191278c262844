"""Tiny random models of the families a TRL user brings, built offline from configs (hidden 32, 2 layers).

``build(name, vocab_size)`` returns the model ``AutoModelForCausalLM`` resolves to on that family's config, with
dropout off so runs compare step for step. Each family is here for what it exercises in the DynSDPB hook:

* ``llama``, ``qwen3``, ``mistral``, ``phi3``: dense decoders that accept loss kwargs (the usual path).
* ``gemma2``: final logit soft-capping (``z = c * tanh(s / c)``) applied by the fused kernel.
* ``gemma4``: a Gemma 4 config resolves to ``Gemma4ForConditionalGeneration``, whose ``accepts_loss_kwargs`` is
  False: transformers passes ``num_items_in_batch=None`` and divides each micro-batch loss by the accumulation steps.
* ``mixtral``, ``qwen2_moe`` (with a shared expert): mixture of experts; SFTTrainer adds
  ``router_aux_loss_coef * aux_loss`` (coefficient 0.5 here, so it is not lost in rounding).
"""

from __future__ import annotations

import torch
import transformers
from transformers import AutoModelForCausalLM

from benchmarks.tiny import equal_completion_rows  # noqa: F401  (shared with the benchmarks)

_DENSE = dict(
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=256,
    pad_token_id=0,
    bos_token_id=1,
    eos_token_id=2,
    attention_dropout=0.0,
)


def _config(name: str, vocab_size: int):
    c = dict(_DENSE, vocab_size=vocab_size)
    if name == "llama":
        return transformers.LlamaConfig(**c)
    if name == "qwen3":
        return transformers.Qwen3Config(**c, head_dim=8)
    if name == "mistral":
        return transformers.MistralConfig(**c)
    if name == "phi3":
        return transformers.Phi3Config(**c, resid_pdrop=0.0, embd_pdrop=0.0)
    if name == "gemma2":
        return transformers.Gemma2Config(**c, head_dim=8, final_logit_softcapping=30.0)
    if name == "gemma4":
        text = transformers.Gemma4TextConfig(
            **c,
            head_dim=8,
            global_head_dim=8,
            vocab_size_per_layer_input=vocab_size,
            hidden_size_per_layer_input=8,
            final_logit_softcapping=30.0,
            layer_types=["sliding_attention", "full_attention"],
        )
        return transformers.Gemma4Config(text_config=text, vision_config=None, audio_config=None)
    if name == "mixtral":
        return transformers.MixtralConfig(**c, num_local_experts=4, num_experts_per_tok=2, router_aux_loss_coef=0.5)
    if name == "qwen2_moe":
        return transformers.Qwen2MoeConfig(
            **c,
            num_experts=4,
            num_experts_per_tok=2,
            moe_intermediate_size=32,
            shared_expert_intermediate_size=32,
            router_aux_loss_coef=0.5,
        )
    raise KeyError(name)


# The parity runs of test_families and test_distributed: static rule, SGD (weight differences are then lr times
# gradient differences, not amplified by Adam's normalisation).
PARITY = dict(max_steps=3, optim="sgd", learning_rate=0.2, distillation_schedule="static", distillation_temperature=2.0)

FAMILIES = ("llama", "qwen3", "mistral", "phi3", "gemma2", "gemma4", "mixtral", "qwen2_moe")
MOE = ("mixtral", "qwen2_moe")


def build(name: str, vocab_size: int, seed: int = 0):
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(_config(name, vocab_size))
