"""LoRA rounds: handing the engine merged weights against handing it the adapter (training.lora_handoff).

Per round, what each hand-off costs: writing round_r/model (merging the adapter into fp32 weights and saving them,
against saving the adapter alone), its size on disk, moving it into the running engine (``update_weights``, plus
the first request, which is when vLLM loads an adapter), and the engine's generation speed afterwards (serving a
LoRA adds work per token). Also the share of greedy generations on which both agree (the engine's dtype: bf16 where
the CPU computes it, so merged and unmerged weights round differently). SmolLM2-135M-Instruct, a rank-16 adapter on
q/k/v/o with random non-zero weights (the costs do not depend on the values), one vLLM engine at a time.

    python -m benchmarks.bench_lora_handoff --out benchmarks/results/lora_handoff.json
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from benchmarks.common import save  # noqa: E402
from dynsdpb_selfplay.signals import sigterm_unwinds  # noqa: E402


def disk_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def write_round_models(base: str, out: Path, rank: int) -> dict:
    """The two forms of one round's result, timed as save_round_model writes them (fp32)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from benchmarks.tiny import random_lora

    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    model = random_lora(model, rank, 0.01)
    tokenizer = AutoTokenizer.from_pretrained(base)
    t = time.perf_counter()
    model.save_pretrained(out / "adapter")
    tokenizer.save_pretrained(out / "adapter")
    adapter_s = time.perf_counter() - t
    t = time.perf_counter()
    model.merge_and_unload().save_pretrained(out / "merged", safe_serialization=True)
    tokenizer.save_pretrained(out / "merged")
    merged_s = time.perf_counter() - t
    return {
        "merged": {"save_s": merged_s, "disk_bytes": disk_bytes(out / "merged")},
        "adapter": {"save_s": adapter_s, "disk_bytes": disk_bytes(out / "adapter")},
    }


def hand_off(base: str, weights: Path, config, prompts, sampling) -> tuple[dict, list]:
    """Start an engine on the base model, move ``weights`` in, time that, the first request and generation."""
    from dynsdpb_selfplay.engines import SamplingConfig, make_engine

    probe = SamplingConfig(max_new_tokens=1)
    with make_engine(base, config) as engine:
        engine.generate(prompts[:1], probe)  # warm: the base model has served a request
        t = time.perf_counter()
        engine.update_weights(str(weights))
        update_s = time.perf_counter() - t
        t = time.perf_counter()
        engine.generate(prompts[:1], probe)
        first_request_s = time.perf_counter() - t
        t = time.perf_counter()
        engine.generate(prompts[:1], probe)
        warm_request_s = time.perf_counter() - t
        t = time.perf_counter()
        gens = engine.generate(prompts, sampling)
        seconds = time.perf_counter() - t
        tokens = sum(len(c.token_ids) for g in gens for c in g.completions)
        texts = [g.completions[0].text for g in gens]
    return {
        "update_weights_s": update_s,
        "first_request_s": first_request_s,
        "warm_request_s": warm_request_s,
        "handoff_s": update_s + first_request_s - warm_request_s,
        "generated_tokens": tokens,
        "tokens_per_s": tokens / seconds,
    }, texts


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--rank", type=int, default=16)
    p.add_argument("--prompts", type=int, default=32)
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--out", default=None)
    args = p.parse_args()

    from dynsdpb_selfplay.engines import EngineConfig, SamplingConfig, with_lora
    from dynsdpb_selfplay.models import resolve_model
    from dynsdpb_selfplay.tasks import get_task

    base = resolve_model(args.model)
    task = get_task("arith", steps=1)
    fmt = task.get_format(name="chat-0shot")
    prompts = [task.build_prompt(ex, fmt) for ex in task.load("test", limit=args.prompts)]
    greedy = SamplingConfig(max_new_tokens=args.max_new_tokens)
    config = EngineConfig(backend="vllm", max_model_len=1024)
    tmp = Path(tempfile.mkdtemp(prefix="lora-handoff-"))
    try:
        result = write_round_models(base, tmp, args.rank)
        merged, merged_texts = hand_off(base, tmp / "merged", config, prompts, greedy)
        adapter, adapter_texts = hand_off(base, tmp / "adapter", with_lora(config, args.rank), prompts, greedy)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    result["merged"].update(merged)
    result["adapter"].update(adapter)
    result["greedy_agreement"] = sum(a == b for a, b in zip(merged_texts, adapter_texts, strict=True)) / len(prompts)
    print(result)
    save({"config": vars(args), **result}, args.out)


if __name__ == "__main__":
    with sigterm_unwinds():  # `kill` closes the vLLM engine
        main()
