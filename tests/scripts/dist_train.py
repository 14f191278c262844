"""Run by tests/test_distributed.py under torchrun with 2 processes (gloo, CPU).

``dist_train.py OUT MAX_STEPS [RESUME]``: trains DynSDPB on the tiny fixture Llama and writes, per rank, the dataset
rows of every micro-batch and the logged metrics. ``dist_train.py OUT parity FAMILY``: the parity run of a
tests/families.py model (2 rows per rank x accumulation 2, equal-length completions); rank 0 writes the logged
metrics and the final weights."""

import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))  # tests/: helpers, families
sys.path.insert(1, os.path.join(os.path.dirname(__file__), "..", ".."))  # the repo root: benchmarks.tiny

import torch  # noqa: E402
from families import PARITY, build, equal_completion_rows  # noqa: E402
from helpers import arithmetic_dataset, make_model, make_tokenizer, sft_kwargs  # noqa: E402

from dynsdpb_selfplay import DynSDPBConfig, DynSDPBTrainer  # noqa: E402
from dynsdpb_selfplay.distill.trainer import INDEX_COLUMN  # noqa: E402


class Recording(DynSDPBTrainer):
    def compute_loss(self, model, inputs, *args, **kwargs):
        if model.training and INDEX_COLUMN in inputs:
            self.seen = getattr(self, "seen", []) + [inputs[INDEX_COLUMN].tolist()]
        return super().compute_loss(model, inputs, *args, **kwargs)


def main(out_dir: str, max_steps: int, resume: str | None) -> None:
    tok = make_tokenizer()
    kw = sft_kwargs(
        os.path.join(out_dir, "run"),
        per_device_train_batch_size=2,
        gradient_accumulation_steps=1,
        max_steps=max_steps,
        save_strategy="steps",
        save_steps=4,
        ddp_backend="gloo",
    )
    trainer = Recording(
        model=make_model(len(tok)), args=DynSDPBConfig(**kw), train_dataset=arithmetic_dataset(16), processing_class=tok
    )
    trainer.train(resume_from_checkpoint=resume)
    rank = trainer.args.process_index
    record = {
        "rank": rank,
        "world": trainer.args.world_size,
        "seen": trainer.seen,
        "logs": [h for h in trainer.state.log_history if "loss" in h],
    }
    tag = "resumed" if resume else "full"
    with open(os.path.join(out_dir, f"{tag}-rank{rank}.json"), "w") as f:
        json.dump(record, f)
    tear_down()


def parity(out_dir: str, family: str) -> None:
    tok = make_tokenizer()
    kw = sft_kwargs(
        os.path.join(out_dir, f"run-{family}"),
        per_device_train_batch_size=2,
        gradient_accumulation_steps=2,
        ddp_backend="gloo",
        **PARITY,
    )
    trainer = DynSDPBTrainer(
        model=build(family, len(tok)),
        args=DynSDPBConfig(**kw),
        train_dataset=equal_completion_rows(),
        processing_class=tok,
    )
    trainer.train()
    if trainer.args.process_index == 0:
        with open(os.path.join(out_dir, f"parity-{family}.json"), "w") as f:
            json.dump(
                {
                    "world": trainer.args.world_size,
                    "accepts_loss_kwargs": trainer.model_accepts_loss_kwargs,
                    "logs": [h for h in trainer.state.log_history if "loss" in h],
                },
                f,
            )
        weights = {k: v.detach().cpu() for k, v in trainer.model.named_parameters()}
        torch.save(weights, os.path.join(out_dir, f"parity-{family}.pt"))
    tear_down()


def tear_down() -> None:
    # Wait for the other rank, then leave without running gloo's destructors. Left to the interpreter's exit, its
    # threads can abort the process (SIGABRT, "terminate called without an active exception"; seen once in CI), and
    # destroy_process_group() can deadlock: it joins gloo's worker threads holding the GIL while one of them frees a
    # finished all-gather whose tensor needs the GIL (seen here: a rank hung until the test's 300 s timeout).
    import torch.distributed as dist

    if dist.is_initialized():
        dist.barrier()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    if sys.argv[2] == "parity":
        parity(sys.argv[1], sys.argv[3])
    else:
        main(sys.argv[1], int(sys.argv[2]), sys.argv[3] if len(sys.argv) > 3 else None)
