"""What the tests share: tiny offline models, tokenizer and data (nothing touches the network), a tiny on-disk
model, run configs for the rounds, and the classifier trainer the classification tests build."""

from __future__ import annotations

import os
import random
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402
import yaml  # noqa: E402
from datasets import Dataset  # noqa: E402
from transformers import LlamaConfig, LlamaForCausalLM  # noqa: E402

# The tiny tokenizer, fast SFT settings and the plain overlapping trainer are shared with the benchmarks.
from benchmarks.tiny import CHAT_TEMPLATE, make_tokenizer, plain_overlap, sft_kwargs  # noqa: E402, F401


def make_model(vocab_size: int, seed: int = 0, hidden: int = 32, layers: int = 2) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        tie_word_embeddings=True,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    return LlamaForCausalLM(config)


def arithmetic_rows(n: int, seed: int = 0) -> list[dict]:
    """``n`` prompt/completion rows of small additions, with unique ids and varied lengths."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        a, b = rng.randint(0, 99), rng.randint(0, 999)
        pad = " please" * rng.randint(0, 3)
        rows.append(
            {"id": f"q{i}", "prompt": f"What is {a}+{b}{pad}?", "completion": f" {a}+{b}={a + b}. #### {a + b}"}
        )
    return rows


def arithmetic_dataset(n: int, seed: int = 0) -> Dataset:
    return Dataset.from_list(arithmetic_rows(n, seed))


def make_classifier(vocab_size: int, num_labels: int = 3, seed: int = 0, **config):
    """A tiny random BERT sequence classifier without dropout (so runs are comparable step for step)."""
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    kw = dict(
        vocab_size=vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=128,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        num_labels=num_labels,
        pad_token_id=0,
    )
    kw.update(config)
    return BertForSequenceClassification(BertConfig(**kw))


def classification_rows(n: int, seed: int = 0) -> list[dict]:
    """``n`` strings over ``abc`` of varied length, labelled by their most frequent letter (ties: first)."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        text = "".join(rng.choice("abc") for _ in range(rng.randint(4, 20)))
        rows.append({"id": f"s{i}", "text": text, "label": max(range(3), key=lambda c: text.count("abc"[c]))})
    return rows


def classification_dataset(tokenizer, n: int, seed: int = 0) -> Dataset:
    """Tokenized :func:`classification_rows` (``input_ids``, ``attention_mask``, ``label``)."""
    ds = Dataset.from_list(classification_rows(n, seed))
    return ds.map(lambda row: tokenizer(row["text"]), remove_columns=["text"])


def recording(trainer_cls):
    """``trainer_cls`` that records the dataset rows (``dynsdpb_index``) of every training micro-batch in ``.seen``."""
    from dynsdpb_selfplay.distill.batching import INDEX_COLUMN

    class Recording(trainer_cls):
        def compute_loss(self, model, inputs, *args, **kwargs):
            if model.training and INDEX_COLUMN in inputs:
                self.seen = getattr(self, "seen", []) + [inputs[INDEX_COLUMN].tolist()]
            return super().compute_loss(model, inputs, *args, **kwargs)

    return Recording


def logged(trainer, key: str = "loss") -> list:
    """Every value of ``key`` in the trainer's log history, in logging order."""
    return [h[key] for h in trainer.state.log_history if key in h]


def params(trainer) -> dict:
    """A detached copy of every parameter of the trainer's model, by name."""
    return {k: v.detach().clone() for k, v in trainer.model.named_parameters()}


def steps_of(seen: list[list[int]], accum: int) -> list[list[int]]:
    """Recorded micro-batch rows grouped into optimizer steps of ``accum`` micro-batches."""
    return [sum(seen[i : i + accum], []) for i in range(0, len(seen), accum)]


def assert_repeats_previous_fresh_half(steps: list[list[int]]) -> None:
    """Each step's repeated positions hold, in order, the previous step's fresh rows."""
    from dynsdpb_selfplay.distill.sampler import is_fresh_position

    for prev, cur in zip(steps, steps[1:], strict=False):
        assert [x for i, x in enumerate(cur) if not is_fresh_position(i)] == [
            x for i, x in enumerate(prev) if is_fresh_position(i)
        ]


REPO = Path(__file__).resolve().parent.parent


def save_tiny_model(path: Path, seed: int = 0) -> Path:
    """A random 2-layer Llama (head_dim 32, which vLLM's CPU attention supports) with the char tokenizer.

    Weights are drawn wider than the default init so greedy decoding produces varied text rather than one repeated
    character, which makes agreement tests meaningful."""
    tok = make_tokenizer()
    model = make_model(len(tok), seed=seed, hidden=128)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0.0, 0.2)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


# ------------------------------------------------------------------------------------------------ rounds
def round_config(model: str, **overrides) -> dict:
    """A small run config of the rounds on ``model`` (EchoTask, the transformers engine); ``overrides`` as
    ``"section.key": value`` or top-level ``key=value``."""
    cfg = {
        "model": model,
        "pipeline": "self_training",
        "rounds": 2,
        "seed": 0,
        "task": {"name": "round_fixtures:EchoTask", "train_limit": 8, "eval_limit": 6},
        "generation": {"n": 2, "temperature": 1.0, "max_new_tokens": 12, "chunk_size": 4},
        "filtering": {"max_per_question": 2},
        "training": {
            "per_device_train_batch_size": 2,
            "learning_rate": 1e-3,
            "max_steps": 4,
            "save_steps": 2,
            "max_length": 64,
            "bf16": False,
        },
        "engine": {"backend": "hf", "dtype": "float32"},
    }
    for key, value in overrides.items():
        section, _, field = key.partition(".")
        if field:
            cfg[section] = {**cfg.get(section, {}), field: value}
        else:
            cfg[key] = value
    return cfg


def write_config(tmp_path, cfg, name="run.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(cfg))
    return path


# ---------------------------------------------------------------------------------------- classification
def classifier_kwargs(output_dir, **overrides) -> dict:
    """TrainingArguments keyword arguments for a classifier: ``sft_kwargs`` less SFT's ``max_length``."""
    kw = {k: v for k, v in sft_kwargs(output_dir).items() if k != "max_length"}
    kw.update(overrides)
    return kw


def build_classifier(tmp_path, tokenizer, trainer_cls=None, n=16, num_labels=3, callbacks=None, **overrides):
    """A tiny BERT classifier trainer (a recording DynSDPB trainer unless ``trainer_cls``) on ``n`` rows."""
    from transformers import DataCollatorWithPadding, TrainingArguments

    from dynsdpb_selfplay import DynSDPBClassificationConfig, DynSDPBClassificationTrainer

    trainer_cls = trainer_cls or recording(DynSDPBClassificationTrainer)
    dynsdpb = issubclass(trainer_cls, DynSDPBClassificationTrainer)
    cfg_cls = DynSDPBClassificationConfig if dynsdpb else TrainingArguments
    return trainer_cls(
        model=make_classifier(len(tokenizer), num_labels),
        args=cfg_cls(**classifier_kwargs(tmp_path / "out", **overrides)),
        train_dataset=classification_dataset(tokenizer, n),
        data_collator=DataCollatorWithPadding(tokenizer),
        callbacks=callbacks,
    )
