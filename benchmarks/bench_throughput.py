"""Generation throughput against batch size and engine settings, as a share of this machine's matmul roofline.

A decode step of a dense decoder costs about ``2 N`` FLOPs per generated token (``N`` parameters), so a matmul peak
``P`` measured here, in the same dtype and run, bounds throughput at ``P / 2N`` tokens/s (the roofline). Each engine
configuration runs in its own child process (engine settings such as vLLM's CPU reservation are read at start-up)
and generates for 1 to 384 sequences at once: distinct one-step ``arith`` chat prompts, sampled at temperature 0.8
(seeded), up to ``--max-new-tokens``, as the rounds sample their training data. Reported per (configuration, batch):
generated tokens/s and its share of the roofline; also the throughput of the model's own GEMM shapes (hidden size
576 for SmolLM2-135M), which bounds what a kernel can reach at these sizes.

    .venv/bin/python -m benchmarks.bench_throughput --out benchmarks/results/throughput_smollm2.json

Run it on an otherwise idle machine: the timings are ratios within one run.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from benchmarks.common import module_command, run_child, save  # noqa: E402
from dynsdpb_selfplay.signals import sigterm_unwinds  # noqa: E402

# The rounds' sampling (temperature 0.8, nucleus 0.95); a configuration may change it.
SAMPLING = {"temperature": 0.8, "top_p": 0.95}
# name -> (backend, environment, EngineConfig overrides, SamplingConfig overrides)
CONFIGS = {
    "vllm": ("vllm", {}, {}, {}),
    "vllm-topk": ("vllm", {}, {}, {"top_p": 1.0, "top_k": 20}),
    "vllm-minp": ("vllm", {}, {}, {"top_p": 1.0, "min_p": 0.05}),
    "vllm-greedy": ("vllm", {}, {}, {"temperature": 0.0, "top_p": 1.0}),
    "vllm-reserve1": ("vllm", {"VLLM_CPU_NUM_OF_RESERVED_CPU": "1"}, {}, {}),
    "vllm-seqs128": ("vllm", {}, {"max_num_seqs": 128}, {}),
    # vLLM's own eager RMSNorm and SiLU-and-mul on CPU instead of the C kernels (EngineConfig.cpu_kernels)
    "vllm-topk-eager-ops": ("vllm", {}, {"cpu_kernels": False}, {"top_p": 1.0, "top_k": 20}),
    "vllm-topk-seqs512": ("vllm", {}, {"max_num_seqs": 512}, {"top_p": 1.0, "top_k": 20}),
    "vllm-kv4": ("vllm", {}, {"cpu_kvcache_space_gb": 4}, {}),
    "vllm-compiled": ("vllm", {}, {"enforce_eager": False}, {}),
    "hf": ("hf", {}, {"batch_size": 384, "max_batch_tokens": 10**6}, {}),
    # One engine, the tail cuts of SAMPLING_VARIANTS taking turns (round-robin, --repeats times), so that a machine
    # whose speed drifts over minutes (shared hosts do) shifts every variant alike.
    "vllm-sampling": ("vllm", {}, {}, None),
}
SAMPLING_VARIANTS = {"top_p": {}, "top_k": {"top_p": 1.0, "top_k": 20}, "min_p": {"top_p": 1.0, "min_p": 0.05}}


def gemm_gflops(m: int, k: int, n: int, dtype: str, seconds: float = 2.0) -> float:
    """Best throughput of ``[m, k] @ [k, n]`` in ``dtype`` over ~0.5 s windows (all threads)."""
    import torch

    a, b = torch.randn(m, k).to(getattr(torch, dtype)), torch.randn(k, n).to(getattr(torch, dtype))
    best, end = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < end:
        t, count = time.perf_counter(), 0
        while time.perf_counter() - t < 0.5:
            a @ b
            count += 1
        best = max(best, 2 * m * k * n * count / (time.perf_counter() - t) / 1e9)
    return best


def sampler_seconds(batch: int, vocab: int, dtype: str, repeats: int = 3) -> dict:
    """Seconds per decode step that vLLM's CPU sampler spends filtering ``[batch, vocab]`` logits: the nucleus
    filter (``top_p < 1`` sorts the whole vocabulary) against a top-k filter (no sort) and the softmax alone."""
    import torch
    from vllm.v1.sample.ops.topk_topp_sampler import apply_top_k_top_p_pytorch

    logits = torch.randn(batch, vocab).to(getattr(torch, dtype))
    p = torch.full((batch,), 0.95)
    k = torch.full((batch,), 20, dtype=torch.long)

    def min_p(x, m=0.05):  # vLLM's MinPLogitsProcessor.apply
        probs = x.softmax(dim=-1)
        return x.masked_fill_(probs < probs.amax(dim=-1, keepdim=True) * m, -float("inf"))

    cases = {
        "top_p": lambda x: apply_top_k_top_p_pytorch(x, None, p, allow_cpu_sync=True),
        "top_k": lambda x: apply_top_k_top_p_pytorch(x, k, None, allow_cpu_sync=True),
        "min_p": min_p,
        "softmax": lambda x: x.softmax(dim=-1),
    }
    out = {}
    for name, fn in cases.items():
        fn(logits.clone())
        best = float("inf")
        for _ in range(repeats):
            x = logits.clone()
            t = time.perf_counter()
            fn(x)
            best = min(best, time.perf_counter() - t)
        out[name] = best
    return out


def child(args) -> dict:
    from dynsdpb_selfplay.engines import EngineConfig, SamplingConfig, make_engine
    from dynsdpb_selfplay.models import resolve_model
    from dynsdpb_selfplay.tasks import get_task

    backend, env, overrides, sampling_overrides = CONFIGS[args.child]
    os.environ.update(env)
    config = EngineConfig(backend=backend, dtype=args.dtype, max_model_len=512, **overrides)
    start = time.perf_counter()
    engine = make_engine(resolve_model(args.model), config)
    try:
        variants = {"": sampling_overrides} if sampling_overrides is not None else SAMPLING_VARIANTS
        out = {
            "config": args.child,
            "sampling": {name or "-": {**SAMPLING, **v} for name, v in variants.items()},
            "engine_start_s": time.perf_counter() - start,
            "batches": [],
        }
        task = get_task("arith", steps=1)
        fmt = task.get_format(name="chat-0shot")
        examples = task.load("train", limit=max(args.batches))
        ids = [engine.encode(task.build_prompt(ex, fmt)) for ex in examples]
        engine.generate_ids(ids[:2], SamplingConfig(max_new_tokens=4))  # warm-up
        turns = [(b, name, rep) for b in args.batches for rep in range(args.repeats) for name in variants]
        for batch, name, rep in turns:
            settings = {**SAMPLING, **variants[name], "seed": batch + rep, "max_new_tokens": args.max_new_tokens}
            sampling = SamplingConfig(**settings)
            t = time.perf_counter()
            gens = engine.generate_ids(ids[:batch], sampling)
            seconds = time.perf_counter() - t
            lengths = [len(c.token_ids) for g in gens for c in g.completions]
            tokens, steps = sum(lengths), max(lengths)
            # what the rounds keep depends on the sampling too: verified (flexible) and uncut completions
            correct = sum(
                task.score(c.text, ex, fmt).flexible_correct and c.finish_reason != "length"
                for ex, g in zip(examples, gens, strict=False)
                for c in g.completions
            )
            cut = sum(c.finish_reason == "length" for g in gens for c in g.completions)
            # decode steps run the whole batch at once (batch <= max_num_seqs), as many as the longest completion
            row = {
                "batch": batch,
                **({"sampling": name, "repeat": rep} if name else {}),
                "tokens": tokens,
                "seconds": seconds,
                "tokens_per_s": tokens / seconds,
                "steps": steps,
                "seconds_per_step": seconds / steps,
                "correct_uncut": correct,
                "cut": cut,
            }
            out["batches"].append(row)
            print(json.dumps({"config": args.child, **row}), file=sys.stderr, flush=True)
    finally:
        engine.close()
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--dtype", default="auto", help="engine dtype (auto: bf16 only where native)")
    p.add_argument(
        "--configs",
        nargs="+",
        default=["vllm", "vllm-reserve1", "vllm-seqs128", "hf"],
        choices=list(CONFIGS),
        help="engine configurations (vllm-compiled takes minutes to start)",
    )
    p.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32, 96, 384], help="sequences at once")
    p.add_argument("--hf-batches", type=int, nargs="+", default=[8, 32, 96], help="batches for the hf config")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--repeats", type=int, default=1, help="turns of each sampling variant (vllm-sampling)")
    p.add_argument("--out", help="JSON result path (a PNG is written beside it)")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(child(args)))
        return

    from dynsdpb_selfplay.models import resolve_model
    from dynsdpb_selfplay.precision import resolve_dtype

    dtype = resolve_dtype(args.dtype, what="--dtype")
    config = json.loads((__import__("pathlib").Path(resolve_model(args.model)) / "config.json").read_text())
    params = _parameters(config)
    peak = gemm_gflops(2048, 2048, 2048, dtype)
    hidden, inter = config["hidden_size"], config["intermediate_size"]
    shapes = {f"{m}x{hidden}x{inter}": gemm_gflops(m, hidden, inter, dtype) for m in (32, 384)}
    # A peak is a maximum: should a busy moment depress the large GEMM, the model's own shapes still bound it.
    peak = max(peak, *shapes.values())
    roofline = peak * 1e9 / (2 * params)
    sampler = {b: sampler_seconds(b, config["vocab_size"], dtype) for b in (32, 384)}
    print(json.dumps({"sampler_seconds_per_step": sampler}), file=sys.stderr, flush=True)
    results = []
    for name in args.configs:
        batches = args.hf_batches if CONFIGS[name][0] == "hf" else args.batches
        cmd = [
            *module_command("benchmarks.bench_throughput"),
            "--child",
            name,
            "--model",
            args.model,
            "--dtype",
            dtype,
            "--max-new-tokens",
            str(args.max_new_tokens),
            "--repeats",
            str(args.repeats),
            "--batches",
            *map(str, batches),
        ]
        proc = run_child(cmd, capture=True)
        if proc.returncode != 0:
            sys.exit(f"bench_throughput: configuration {name} exited with {proc.returncode} (output above)")
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        for row in r["batches"]:
            row["share_of_roofline"] = row["tokens_per_s"] / roofline
        results.append(r)
    summary = {
        "dtype": dtype,
        "parameters": params,
        "matmul_peak_gflops": peak,
        "model_gemm_gflops": shapes,
        "roofline_tokens_per_s": roofline,
        "sampler_seconds_per_step": sampler,
        "seconds_per_step": {
            _label(r, b) + f"@{b['batch']}": b["seconds_per_step"]
            for r in results
            for b in r["batches"]
            if b["batch"] in sampler
        },
        "sampling_tokens_per_s": _by_variant(results),
        "best": max(
            (
                (r["config"], b["batch"], b["tokens_per_s"], b["share_of_roofline"])
                for r in results
                for b in r["batches"]
            ),
            key=lambda x: x[2],
        ),
    }
    print(json.dumps(summary, indent=1))
    save({"benchmark": "throughput", "config": vars(args), "summary": summary, "results": results}, args.out)
    if args.out:
        plot(results, summary, os.path.splitext(args.out)[0] + ".png")


def _parameters(config: dict) -> int:
    """Parameters of a Llama-style decoder from its config (tied embeddings counted once)."""
    d, layers, inter = config["hidden_size"], config["num_hidden_layers"], config["intermediate_size"]
    heads, kv = config["num_attention_heads"], config.get("num_key_value_heads", config["num_attention_heads"])
    head = config.get("head_dim", d // heads)
    per_layer = 2 * d * heads * head + 2 * d * kv * head + 3 * d * inter + 2 * d
    embed = config["vocab_size"] * d * (1 if config.get("tie_word_embeddings", True) else 2)
    return layers * per_layer + embed + d


def _label(run: dict, row: dict) -> str:
    return f"{run['config']}:{row['sampling']}" if "sampling" in row else run["config"]


def _by_variant(results: list[dict]) -> dict:
    """Mean tokens/s per batch size and sampling variant of the interleaved configuration, and its repeats."""
    out: dict = {}
    for r in results:
        for b in r["batches"]:
            if "sampling" in b:
                out.setdefault(str(b["batch"]), {}).setdefault(b["sampling"], []).append(b["tokens_per_s"])
    return {batch: {name: {"mean": sum(v) / len(v), "runs": v} for name, v in d.items()} for batch, d in out.items()}


def plot(results: list[dict], summary: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for r in results:
        for label in dict.fromkeys(_label(r, b) for b in r["batches"]):
            rows = [b for b in r["batches"] if _label(r, b) == label]
            xs = sorted({b["batch"] for b in rows})
            ys = [
                100 * sum(b["share_of_roofline"] for b in rows if b["batch"] == x) / sum(b["batch"] == x for b in rows)
                for x in xs
            ]
            ax.plot(xs, ys, marker="o", label=label)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("sequences generated at once")
    ax.set_ylabel("share of the matmul roofline, %")
    ax.set_title(
        f"{summary['dtype']}: roofline {summary['roofline_tokens_per_s']:.0f} tokens/s "
        f"({summary['matmul_peak_gflops']:.0f} GFLOP/s)",
        fontsize=9,
    )
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    with sigterm_unwinds():
        main()
