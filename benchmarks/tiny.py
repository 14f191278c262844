"""Offline stand-ins the step benchmark and ``scripts/gpu_check.py`` train with: a character-level tokenizer with a
chat template, fast deterministic ``SFTConfig`` settings, a plain trainer fed DynSDPB's overlapping batches, and
prompt/completion rows of equal completion length. Nothing here downloads anything.

The test suite has the same helpers in ``tests/helpers.py`` and ``tests/families.py``; benchmarks and scripts take
them from here so that nothing outside ``tests/`` imports from it."""

from __future__ import annotations

import random

__all__ = ["CHAT_TEMPLATE", "equal_completion_rows", "make_tokenizer", "plain_overlap", "sft_kwargs"]

CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
SPECIALS = ["<pad>", "<s>", "<|end|>", "<|user|>", "<|assistant|>", "<|system|>"]
CHARS = list("0123456789+-*=?.,:;!#$%()<>/ abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ\n")


def make_tokenizer():
    """A character-level tokenizer with a chat template, pad and eos tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(SPECIALS + CHARS)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<pad>"))
    tok.pre_tokenizer = pre_tokenizers.Split("", behavior="isolated")
    tok.decoder = decoders.Fuse()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", eos_token="<|end|>", bos_token="<s>", unk_token="<pad>"
    )
    fast.add_special_tokens({"additional_special_tokens": SPECIALS[3:]})
    fast.chat_template = CHAT_TEMPLATE
    return fast


def sft_kwargs(output_dir, **overrides) -> dict:
    """SFTConfig keyword arguments for fast, deterministic CPU runs."""
    kw = dict(
        output_dir=str(output_dir),
        use_cpu=True,
        bf16=False,
        report_to="none",
        logging_steps=1,
        save_strategy="no",
        per_device_train_batch_size=4,
        gradient_accumulation_steps=1,
        learning_rate=5e-3,
        lr_scheduler_type="constant",
        max_steps=4,
        seed=0,
        max_length=64,
        dataloader_num_workers=0,
        disable_tqdm=True,
        gradient_checkpointing=False,
    )
    kw.update(overrides)
    return kw


def plain_overlap(trainer_cls):
    """``trainer_cls`` (plain, no DynSDPB) fed the very same overlapping batches, for alpha = 0 comparisons."""
    from dynsdpb_selfplay.distill.sampler import OverlapSampler

    class PlainOverlap(trainer_cls):
        def _get_train_sampler(self, train_dataset=None):
            a = self.args
            step = a.per_device_train_batch_size * a.gradient_accumulation_steps
            return OverlapSampler(len(self.train_dataset), step)

    return PlainOverlap


def equal_completion_rows(n: int = 16, seed: int = 0):
    """Prompt/completion rows whose prompts vary in length (so batches are padded) and whose completions all have
    the same number of tokens: every micro-batch of a given size then holds the same number of label tokens, and the
    per-micro-batch mean CE that transformers uses for models without loss kwargs equals the step's mean."""
    from datasets import Dataset

    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        a, b = rng.randint(0, 99), rng.randint(0, 999)
        rows.append(
            {
                "prompt": f"What is {a}+{b}" + " please" * rng.randint(0, 3) + "?",
                "completion": f" {a:02d}+{b:03d}={a + b:04d}",
            }
        )
    return Dataset.from_list(rows)


def random_lora(model, rank: int, std: float, seed: int = 0):
    """``model`` with a LoRA adapter of ``rank`` on q, k, v, o (alpha 2 x rank) whose B matrices are drawn from
    N(0, std^2) (peft starts B at zero, which would make the adapter a no-op): a non-trivial adapter to hand over."""
    import torch
    from peft import LoraConfig, get_peft_model

    lora = LoraConfig(
        r=rank, lora_alpha=2 * rank, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"], init_lora_weights=False
    )
    model = get_peft_model(model, lora)
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, std)
    return model
