"""The training phase of a round: DynSDPB (or plain SFT for ablations) on the round's rows, resumable.

The trainer checkpoints into ``round_r/trainer`` every ``save_steps``; an interrupted phase resumes from the last
checkpoint (DynSDPB restores its stored targets too). The round's final weights are saved in the precision they were
trained in (fp32 master weights), merged if LoRA was used, as a plain safetensors directory ``round_r/model`` that the
next round continues from exactly and every engine can load or reload in place (in its own dtype), and the trainer's
per-step log as ``round_r/trainer/log_history.jsonl``, so the checkpoints can go once the phase is done
(:func:`drop_checkpoints`).

With ``training.lora_handoff: adapter``, ``round_r/model`` is the LoRA adapter alone (PEFT's adapter directory, fp32,
naming the base model): the engine serves it on the base weights, and the next round (``init: continue``) trains
that same adapter on, instead of a new one on merged weights.

``training.report_to: tensorboard`` logs every round's steps under ``RUN_DIR/tensorboard/round_<r>``, with the run
name ``<run folder name>/round_<r>``, so one ``tensorboard --logdir RUN_DIR/tensorboard`` shows every round.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

from ..faults import fault_point, instrument_trainer
from ..jsonl import write_jsonl
from ..models import adapter_info
from .config import RunConfig

LOG_HISTORY = "log_history.jsonl"

__all__ = ["build_trainer", "drop_checkpoints", "save_round_model", "tensorboard_dir", "train_round", "training_args"]


def drop_checkpoints(trainer_dir: Path, torn_only: bool = False) -> None:
    """Delete the ``checkpoint-N`` folders under ``trainer_dir``.

    ``torn_only``: just those without their trainer state, saves killed midway (see
    :func:`~dynsdpb_selfplay.distill.trainer.last_complete_checkpoint`); the resumed run writes them again. Otherwise
    all of them, only for a finished phase: the round's model and ``log_history.jsonl`` hold what is kept, and the
    checkpoints (weights, optimizer state, stored targets: about 6x the model's size) were only for resuming it."""
    for folder in Path(trainer_dir).glob("checkpoint-*"):
        if folder.is_dir() and not (torn_only and (folder / "trainer_state.json").is_file()):
            shutil.rmtree(folder)


def _finished(checkpoint: str | None) -> bool:
    """Whether ``checkpoint`` is the last one of its training run (its step count reached the run's)."""
    if checkpoint is None:
        return False
    state = json.loads((Path(checkpoint) / "trainer_state.json").read_text())
    return state["global_step"] >= state["max_steps"] > 0


def _round_loss(log_history: list[dict]) -> float | None:
    """Mean training loss over the round's steps from the logged per-step losses. Unlike ``TrainOutput.training_loss``
    (the steps of the last ``train()`` call only) it does not change when the phase resumed from a checkpoint: the
    log history before the checkpoint comes back with the trainer state."""
    total = steps = last = 0
    for h in log_history:
        if "loss" in h and "step" in h:
            total += h["loss"] * (h["step"] - last)
            steps += h["step"] - last
            last = h["step"]
    return total / steps if steps else None


def training_args(cfg: RunConfig, trainer_dir: Path):
    """The round's ``DynSDPBConfig`` (``training.trainer: dynsdpb``) or ``SFTConfig`` (``sft``): the run config's
    ``training:`` fields over the rounds' defaults, in ``trainer_dir``, named ``<run folder>/round_<r>``."""
    trainer_dir = Path(trainer_dir)
    run_name = f"{trainer_dir.parent.parent.name}/{trainer_dir.parent.name}"
    return cfg.training.trainer_config(str(trainer_dir), cfg.seed, run_name)


def save_round_model(trainer, tokenizer, out_dir: Path, merge: bool = True) -> Path:
    """Write the trained weights (LoRA merged, or with ``merge=False`` the LoRA adapter alone) to ``out_dir``
    atomically, in the precision they were trained in.

    The weights are fp32 master weights (bf16 autocast computes in bf16 but updates fp32 parameters). Rounding them
    to bf16 here would undo most of a fine-tuning update, whose steps are far smaller than a bf16 step of the weights
    they change (measured: 8 DynSDPB steps at lr 3e-5 on SmolLM2-135M kept 31% of their update after bf16
    rounding). The next round's training continues from exactly these weights; an engine still loads them in its
    own dtype."""
    from peft import PeftModel

    model = trainer.accelerator.unwrap_model(trainer.model)
    final = model.merge_and_unload() if merge and isinstance(model, PeftModel) else model
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    final.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    fault_point(point="model_tmp")
    shutil.rmtree(out_dir, ignore_errors=True)
    os.replace(tmp, out_dir)
    return out_dir


def tensorboard_dir(trainer_dir: Path) -> Path:
    """Where round ``r``'s TensorBoard events go: ``RUN_DIR/tensorboard/round_<r>`` (``trainer_dir`` is
    ``RUN_DIR/round_<r>/trainer``)."""
    trainer_dir = Path(trainer_dir)
    return trainer_dir.parent.parent / "tensorboard" / trainer_dir.parent.name


def build_trainer(rows: list[dict], init_model: str, trainer_dir: Path, cfg: RunConfig) -> tuple[object, dict]:
    """The round's trainer over ``rows``, starting from ``init_model`` (fp32 master weights), or ``None`` and why not.
    ``init_model`` may be a LoRA adapter directory (``training.lora_handoff: adapter``): its base model with that
    adapter, trainable.

    Returns ``(trainer, info)``; ``info`` has ``rows`` and how many rows ``max_length`` dropped or cut, and
    ``skipped`` (the reason) when there is nothing to train: too few rows for half a batch, or no row left with a
    completion token once cut to ``training.max_length``."""
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTTrainer

    from ..distill.trainer import DatasetTooSmallError, DynSDPBTrainer
    from ..memory import check_memory, training_need

    t, args = cfg.training, training_args(cfg, trainer_dir)
    info = {"rows": len(rows)}
    step_batch = args.per_device_train_batch_size * args.gradient_accumulation_steps
    if len(rows) < max(step_batch // 2, 1):
        return None, {**info, "skipped": f"{len(rows)} training rows, fewer than half a batch ({step_batch})"}
    adapter = adapter_info(init_model)
    base = init_model if adapter is None else adapter["base_model_name_or_path"]
    if not torch.cuda.is_available():  # on a GPU the model and its optimizer live in GPU memory
        check_memory(training_need(base, args.per_device_train_batch_size, args.max_length, t.lora is not None))
    remote = cfg.engine.trust_remote_code  # one switch for the run: the engine and the trainer load the same model
    tokenizer = AutoTokenizer.from_pretrained(base, trust_remote_code=remote)
    # fp32 master weights whatever the checkpoint's dtype: bf16 autocast computes in bf16 but updates these.
    model = AutoModelForCausalLM.from_pretrained(
        base, dtype=torch.float32, use_safetensors=True, trust_remote_code=remote
    )
    peft_config = None
    if adapter is not None:  # the previous round's adapter, trained on
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, init_model, is_trainable=True)
    elif t.lora is not None:
        peft_config = t.lora.peft_config()
    cls = DynSDPBTrainer if t.trainer == "dynsdpb" else SFTTrainer
    try:
        trainer = cls(
            model=model,
            args=args,
            train_dataset=Dataset.from_list(rows),
            processing_class=tokenizer,
            peft_config=peft_config,
        )
    except DatasetTooSmallError as e:
        return None, {**info, "skipped": f"training.max_length={args.max_length} drops rows whose prompt fills it: {e}"}
    for callback in trainer.callback_handler.callbacks:
        if type(callback).__name__ == "TensorBoardCallback":
            callback.logging_dir = str(tensorboard_dir(trainer_dir))
    # TRL cuts every row to max_length and drops those left without a completion token (prompt too long).
    lengths = [len(ids) for ids in trainer.train_dataset["input_ids"]]
    info.update(
        dropped_over_max_length=len(rows) - len(lengths), cut_at_max_length=sum(n >= args.max_length for n in lengths)
    )
    if not lengths:
        return None, {
            **info,
            "skipped": f"every prompt fills training.max_length={args.max_length}; no completion token is left",
        }
    return trainer, info


def train_round(rows: list[dict], init_model: str, out_dir: Path, trainer_dir: Path, cfg: RunConfig) -> dict:
    """Fine-tune ``init_model`` on ``rows``; returns a summary (``model`` is the directory of the new weights)."""
    from transformers import TrainerCallback, TrainerState

    from ..distill.trainer import last_complete_checkpoint

    t = cfg.training
    trainer, fit = build_trainer(rows, init_model, trainer_dir, cfg)
    if trainer is None:
        return {"model": init_model, **fit}
    tokenizer = trainer.processing_class

    class ResumeTokenCount(TrainerCallback):
        """TRL counts the trained tokens (``num_tokens`` in the logs) from 0 in every ``train()`` call: continue the
        count of the checkpoint being resumed (its log history is restored by now)."""

        def on_train_begin(self, args, state, control, **kw):
            counts = [h["num_tokens"] for h in state.log_history if "num_tokens" in h]
            if counts and hasattr(trainer, "_total_train_tokens"):
                trainer._total_train_tokens = int(counts[-1])

    trainer.add_callback(ResumeTokenCount())
    instrument_trainer(trainer)
    drop_checkpoints(trainer_dir, torn_only=True)
    last = last_complete_checkpoint(str(trainer_dir))
    start = time.perf_counter()
    if _finished(last):
        # Killed after the last step: the checkpoint holds the final weights. (transformers resumed at max_steps
        # would run one step more before it checks the step count.)
        trainer._load_from_checkpoint(last)
        trainer.state = TrainerState.load_from_json(os.path.join(last, "trainer_state.json"))
        result = None
    else:
        result = trainer.train(resume_from_checkpoint=last)
    fault_point(point="trained")
    save_round_model(trainer, tokenizer, out_dir, merge=t.lora_handoff == "merged")
    write_jsonl(trainer_dir / LOG_HISTORY, trainer.state.log_history)
    logs = [h for h in trainer.state.log_history if "loss" in h]
    loss = _round_loss(trainer.state.log_history)
    return {
        "model": str(out_dir),
        "steps": trainer.state.global_step,
        "train_loss": loss if loss is not None or result is None else result.training_loss,
        "last_loss": logs[-1]["loss"] if logs else None,
        "resumed_from": last,
        "train_s": time.perf_counter() - start,
        "trainer": t.trainer,
        **fit,
    }
