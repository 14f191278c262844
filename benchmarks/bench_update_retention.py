"""How much of a round's training update reaches the next round: the saved model against the weights in memory.

A round trains fp32 master weights and saves them for the next round (``training.init: continue``) and the engine.
This trains one round's worth of DynSDPB steps on SmolLM2-135M-Instruct (the demo's learning rate and batch) and
compares three sets of weights entry by entry: the start ``w0``, the trained ``w1`` (in memory) and the saved-then-
reloaded ``w_saved``. It reports, for the saved weights and for the same weights rounded to bf16 (what rounds saved
before), the share of the update kept, ``<w_saved - w0, w1 - w0> / |w1 - w0|^2`` (the projection of the handed-on
update on the true one; 1 = all of it) and the share of changed entries that are back at their start value.

    .venv/bin/python -m benchmarks.bench_update_retention --out benchmarks/results/update_retention.json
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from benchmarks.common import gold_rows, save
from dynsdpb_selfplay.rounds.handoff import update_share


def retention(w0: dict, w1: dict, handed: dict) -> dict:
    """Share of the update ``w1 - w0`` that ``handed`` carries (the projection the rounds record, ``update_share``),
    and of changed entries reverted to their start value."""
    changed = reverted = 0
    for name, start in w0.items():
        moved = w1[name] != start
        changed += int(moved.sum())
        reverted += int((moved & (handed[name].float() == start.float())).sum())
    return {
        "update_share": update_share(w0, w1, handed)["update_share"],
        "changed_entries": changed,
        "reverted_share": reverted / changed if changed else float("nan"),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--rows", type=int, default=16, help="arith (1-step) gold solutions trained on")
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--learning-rate", type=float, default=3e-5, help="the demo's")
    p.add_argument("--out", help="JSON result path")
    args = p.parse_args()

    import torch
    from safetensors.torch import load_file

    from dynsdpb_selfplay.models import resolve_model
    from dynsdpb_selfplay.rounds import training
    from dynsdpb_selfplay.rounds.config import from_dict
    from dynsdpb_selfplay.tasks import get_task

    base = resolve_model(args.model)
    task = get_task("arith", steps=1)
    rows = gold_rows(task, task.get_format(name="chat-0shot"), task.load("train", limit=args.rows))
    cfg = from_dict(
        {
            "model": base,
            "task": {"name": "arith", "options": {"steps": 1}},
            "training": {
                "learning_rate": args.learning_rate,
                "max_steps": args.steps,
                "per_device_train_batch_size": 4,
                "max_length": 384,
                "save_steps": 1000,
            },
        }
    )
    trained = {}
    save_model = training.save_round_model

    def keep(trainer, tokenizer, out_dir, **kw):
        trained.update({k: v.detach().clone() for k, v in trainer.model.state_dict().items()})
        return save_model(trainer, tokenizer, out_dir, **kw)

    training.save_round_model = keep
    with tempfile.TemporaryDirectory() as d:
        start = time.perf_counter()
        info = training.train_round(rows, base, Path(d) / "model", Path(d) / "trainer", cfg)
        train_s = time.perf_counter() - start
        saved = load_file(str(Path(info["model"]) / "model.safetensors"))
        saved_dtypes = sorted({str(v.dtype) for v in saved.values()})
        saved_bytes = sum(f.stat().st_size for f in Path(info["model"]).glob("*.safetensors"))
    w0 = {k: v.float() for k, v in load_file(str(Path(base) / "model.safetensors")).items()}
    trained = {k: trained[k] for k in w0}  # the tied LM head is saved once, under the embedding's name
    saved = {k: saved[k].float() for k in w0}
    as_bf16 = {k: v.to(torch.bfloat16).float() for k, v in trained.items()}
    result = {
        "benchmark": "update_retention",
        "config": vars(args),
        "steps": info["steps"],
        "train_s": train_s,
        "saved_dtypes": saved_dtypes,
        "saved": retention(w0, trained, saved),
        "rounded_to_bf16": retention(w0, trained, as_bf16),
        "saved_bytes": saved_bytes,
        "bf16_bytes": sum(v.numel() * 2 for v in saved.values()),
    }
    print(result)
    save(result, args.out)


if __name__ == "__main__":
    main()
