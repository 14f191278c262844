"""Generation throughput against batch size and engine settings, as a share of this machine's matmul roofline.

A decode step of a dense decoder costs about ``2 N`` FLOPs per generated token (``N`` parameters), so a matmul peak
``P`` measured here, in the same dtype and run, bounds throughput at ``P / 2N`` tokens/s (the roofline). Each engine
configuration runs in its own child process (engine settings such as vLLM's CPU reservation are read at start-up)
and generates for 1 to 384 sequences at once: distinct one-step ``arith`` chat prompts, sampled at temperature 0.8
(seeded), up to ``--max-new-tokens``, as the rounds sample their training data. Reported per (configuration, batch):
generated tokens/s and its share of the roofline; also the throughput of the model's own GEMM shapes (hidden size
576 for SmolLM2-135M), which bounds what a kernel can reach at these sizes.

    .venv/bin/python benchmarks/bench_throughput.py --out benchmarks/results/throughput_smollm2.json

Run it on an otherwise idle machine: the timings are ratios within one run.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import run_child, save  # noqa: E402

from dynsdpb_selfplay.signals import sigterm_unwinds  # noqa: E402

# name -> (backend, environment, EngineConfig overrides)
CONFIGS = {
    "vllm": ("vllm", {}, {}),
    "vllm-reserve1": ("vllm", {"VLLM_CPU_NUM_OF_RESERVED_CPU": "1"}, {}),
    "vllm-seqs128": ("vllm", {}, {"max_num_seqs": 128}),
    "vllm-kv4": ("vllm", {}, {"cpu_kvcache_space_gb": 4}),
    "vllm-compiled": ("vllm", {}, {"enforce_eager": False}),
    "hf": ("hf", {}, {"batch_size": 384, "max_batch_tokens": 10**6}),
}


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


def child(args) -> dict:
    from dynsdpb_selfplay.engines import EngineConfig, SamplingConfig, make_engine
    from dynsdpb_selfplay.models import resolve_model
    from dynsdpb_selfplay.tasks import get_task

    backend, env, overrides = CONFIGS[args.child]
    os.environ.update(env)
    config = EngineConfig(backend=backend, dtype=args.dtype, max_model_len=512, **overrides)
    start = time.perf_counter()
    engine = make_engine(resolve_model(args.model), config)
    try:
        out = {"config": args.child, "engine_start_s": time.perf_counter() - start, "batches": []}
        task = get_task("arith", steps=1)
        fmt = task.get_format(name="chat-0shot")
        examples = task.load("train", limit=max(args.batches))
        ids = [engine.encode(task.build_prompt(ex, fmt)) for ex in examples]
        engine.generate_ids(ids[:2], SamplingConfig(max_new_tokens=4))  # warm-up
        for batch in args.batches:
            sampling = SamplingConfig(temperature=0.8, top_p=0.95, seed=batch, max_new_tokens=args.max_new_tokens)
            t = time.perf_counter()
            gens = engine.generate_ids(ids[:batch], sampling)
            seconds = time.perf_counter() - t
            tokens = sum(len(c.token_ids) for g in gens for c in g.completions)
            row = {"batch": batch, "tokens": tokens, "seconds": seconds, "tokens_per_s": tokens / seconds}
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
    roofline = peak * 1e9 / (2 * params)
    results = []
    for name in args.configs:
        batches = args.hf_batches if CONFIGS[name][0] == "hf" else args.batches
        cmd = [sys.executable, __file__, "--child", name, "--model", args.model, "--dtype", dtype,
               "--max-new-tokens", str(args.max_new_tokens), "--batches", *map(str, batches)]  # fmt: skip
        proc = run_child(cmd, capture=True)
        if proc.returncode != 0:
            sys.exit(f"bench_throughput: configuration {name} exited with {proc.returncode} (output above)")
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        for row in r["batches"]:
            row["share_of_roofline"] = row["tokens_per_s"] / roofline
        results.append(r)
    summary = {"dtype": dtype, "parameters": params, "matmul_peak_gflops": peak, "model_gemm_gflops": shapes,
               "roofline_tokens_per_s": roofline,
               "best": max(((r["config"], b["batch"], b["tokens_per_s"], b["share_of_roofline"]) for r in results
                            for b in r["batches"]), key=lambda x: x[2])}  # fmt: skip
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


def plot(results: list[dict], summary: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for r in results:
        xs = [b["batch"] for b in r["batches"]]
        ax.plot(xs, [100 * b["share_of_roofline"] for b in r["batches"]], marker="o", label=r["config"])
    ax.set_xscale("log", base=2)
    ax.set_xlabel("sequences generated at once")
    ax.set_ylabel("share of the matmul roofline, %")
    ax.set_title(f"{summary['dtype']}: roofline {summary['roofline_tokens_per_s']:.0f} tokens/s "
                 f"({summary['matmul_peak_gflops']:.0f} GFLOP/s)", fontsize=9)  # fmt: skip
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    with sigterm_unwinds():
        main()
