"""Generation throughput: vLLM against transformers ``generate`` on the same prompts and weights, and what the
project's engine layer costs over each raw engine.

For each prompt format (zero-shot chat, 8-shot ``gsm8k_cot``) and batch size, the same GSM8K test prompts go, group
by group with alternating order, through (a) our ``Engine.generate_ids`` and (b) the raw engine underneath it
(``LLM.generate`` with token prompts; ``model.generate`` on one left-padded batch). Greedy decoding, plus ``n=4``
sampling at batch 8. Reported: generated tokens/s of each, the vLLM/transformers ratio through our layer, and our
layer's share of the raw engine's throughput (target >= 0.95). Then the cost of moving new weights into the running
vLLM engine (``update_weights``) against starting a new engine.

    python -m benchmarks.bench_generation --out benchmarks/results/generation_smollm2.json

Each backend runs in its own child process (vLLM and transformers then do not share the 2 cores' threads or
memory); the parent collects their JSON.
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

FORMATS = ("chat-0shot", "lmeval-gsm8k-cot-8shot")


def prompts_for(engine, fmt: str, n: int) -> list[list[int]]:
    from dynsdpb_selfplay.tasks.registry import get_task

    task = get_task("gsm8k")
    f = task.get_format(name=fmt)
    return [engine.encode(task.build_prompt(ex, f)) for ex in task.load("test", n)]


def raw_hf(engine, group: list[list[int]], sampling) -> int:
    """``model.generate`` on exactly this group, left-padded; returns generated tokens (up to EOS)."""
    import torch

    width = max(map(len, group))
    ids = torch.full((len(group), width), engine.pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for r, p in enumerate(group):
        ids[r, width - len(p) :], mask[r, width - len(p) :] = torch.tensor(p), 1
    with torch.inference_mode():
        out = engine.model.generate(input_ids=ids, attention_mask=mask, **engine._generation_kwargs(sampling))
    return sum(len(engine._completion(s, sampling).token_ids) for s in out[:, width:].tolist())


def raw_vllm(engine, group: list[list[int]], sampling) -> int:
    outs = engine.llm.generate(
        [{"prompt_token_ids": p} for p in group], engine._sampling_params(sampling), use_tqdm=False
    )
    return sum(len(c.token_ids) for o in outs for c in o.outputs)


def ours(engine, group, sampling) -> int:
    return sum(len(c.token_ids) for g in engine.generate_ids(group, sampling) for c in g.completions)


def measure_pair(raw, ours, engine, prompts, batch, sampling) -> dict[str, tuple[int, float]]:
    """Generated tokens and seconds of each layer over the same groups of ``batch`` prompts, alternating which layer
    goes first group by group (an even number of groups: the last one repeats when needed), so that load changes on
    a shared machine and vLLM's cache of the previous call's prompts favour neither layer."""
    groups = [prompts[i : i + batch] for i in range(0, len(prompts), batch)]
    if len(groups) % 2:
        groups.append(groups[-1])
    totals = {"raw": [0, 0.0], "engine": [0, 0.0]}
    for k, group in enumerate(groups):
        order = (("raw", raw), ("engine", ours)) if k % 2 == 0 else (("engine", ours), ("raw", raw))
        for layer, fn in order:
            start = time.perf_counter()
            totals[layer][0] += fn(engine, group, sampling)
            totals[layer][1] += time.perf_counter() - start
    return {layer: (tokens, seconds) for layer, (tokens, seconds) in totals.items()}


def child(args) -> dict:
    from dynsdpb_selfplay.engines import make_engine
    from dynsdpb_selfplay.engines.base import EngineConfig, SamplingConfig
    from dynsdpb_selfplay.models import resolve_model

    model = resolve_model(args.model)
    config = EngineConfig(backend=args.backend, dtype=args.dtype, max_model_len=args.max_model_len)
    start = time.perf_counter()
    engine = make_engine(model, config)
    try:  # the engine closes on any exit: a vLLM engine left open outlives this process
        result = {"backend": args.backend, "engine_start_s": time.perf_counter() - start, "rows": []}
        raw = raw_vllm if args.backend == "vllm" else raw_hf
        greedy = SamplingConfig(temperature=0.0, max_new_tokens=args.max_new_tokens)
        sampled = SamplingConfig(n=4, temperature=0.8, top_p=0.95, seed=0, max_new_tokens=args.max_new_tokens)
        plan = [(fmt, b, greedy) for fmt in args.formats for b in args.batch_sizes]
        plan += [(fmt, 8, sampled) for fmt in args.formats]
        for fmt, batch, sampling in plan:
            n_prompts = args.prompts if not (args.backend == "hf" and "8shot" in fmt) else args.hf_fewshot_prompts
            prompts = prompts_for(engine, fmt, n_prompts)
            ours(engine, prompts[:1], greedy)  # warm-up (and vLLM prefix cache of the shared shots)
            for layer, (tokens, seconds) in measure_pair(raw, ours, engine, prompts, batch, sampling).items():
                row = {
                    "format": fmt,
                    "batch": batch,
                    "n": sampling.n,
                    "layer": layer,
                    "prompts": len(prompts),
                    "tokens": tokens,
                    "seconds": seconds,
                    "tokens_per_s": tokens / seconds,
                }
                result["rows"].append(row)
                print(json.dumps(row), file=sys.stderr, flush=True)
        if args.backend == "vllm":
            updates = []
            for _ in range(3):
                t = time.perf_counter()
                engine.update_weights(model)
                updates.append(time.perf_counter() - t)
            result["update_weights_s"] = sorted(updates)[1]
    finally:
        engine.close()
    return result


def summarize(results: list[dict]) -> dict:
    by = {(r["backend"], x["format"], x["batch"], x["n"], x["layer"]): x for r in results for x in r["rows"]}
    ratios = []
    for (backend, fmt, batch, n, layer), row in sorted(by.items()):
        if backend != "vllm" or layer != "engine":
            continue
        hf = by.get(("hf", fmt, batch, n, "engine"))
        ratios.append(
            {
                "format": fmt,
                "batch": batch,
                "n": n,
                "vllm_over_hf": row["tokens_per_s"] / hf["tokens_per_s"] if hf else None,
                "vllm_layer_share": row["tokens_per_s"] / by[("vllm", fmt, batch, n, "raw")]["tokens_per_s"],
                "hf_layer_share": hf["tokens_per_s"] / by[("hf", fmt, batch, n, "raw")]["tokens_per_s"] if hf else None,
            }
        )
    starts = {r["backend"]: r["engine_start_s"] for r in results}
    update = next((r["update_weights_s"] for r in results if "update_weights_s" in r), None)
    return {
        "ratios": ratios,
        "engine_start_s": starts,
        "vllm_update_weights_s": update,
        "vllm_new_engine_over_update": starts.get("vllm", 0) / update if update else None,
    }


def plot(summary: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in summary["ratios"] if r["vllm_over_hf"]]
    labels = [f"{'8-shot' if '8shot' in r['format'] else '0-shot'}\nb={r['batch']} n={r['n']}" for r in rows]
    fig, ax = plt.subplots(figsize=(8, 3.5))
    ax.bar(range(len(rows)), [r["vllm_over_hf"] for r in rows])
    ax.axhline(1.0, color="gray", lw=0.8)
    ax.set_xticks(range(len(rows)), labels, fontsize=8)
    ax.set_ylabel("vLLM / transformers tokens/s")
    ax.set_title("Generation throughput through the engine layer (same prompts, same weights)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    g = p.add_argument_group("workload")
    g.add_argument("--model", default="smollm2-135m-instruct")
    g.add_argument("--formats", nargs="+", default=list(FORMATS), choices=FORMATS, help="prompt formats")
    g.add_argument("--prompts", type=int, default=32, help="GSM8K test prompts per configuration")
    g.add_argument("--hf-fewshot-prompts", type=int, default=16, help="fewer for transformers on 8-shot (slow)")
    g.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8, 32])
    g.add_argument("--max-new-tokens", type=int, default=64)
    g.add_argument(
        "--dtype",
        default="auto",
        choices=["auto", "bfloat16", "float16", "float32"],
        help="auto: bfloat16 where the device computes it natively, else float32 (float16 on old GPUs)",
    )
    g.add_argument("--max-model-len", type=int, default=2048)
    g.add_argument("--backends", nargs="+", default=["vllm", "hf"])
    o = p.add_argument_group("output")
    o.add_argument("--out", help="JSON result path (a PNG plot is written beside it)")
    o.add_argument("--backend", help=argparse.SUPPRESS)  # child mode
    args = p.parse_args()
    if args.backend:
        print(json.dumps(child(args)))
        return
    results = []
    for backend in args.backends:
        cmd = [*module_command("benchmarks.bench_generation"), "--backend", backend, *sys.argv[1:]]
        proc = run_child(cmd, capture=True)
        if proc.returncode != 0:
            sys.exit(f"bench_generation: the {backend} measurement exited with {proc.returncode} (output above)")
        results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    summary = summarize(results)
    print(json.dumps(summary, indent=1))
    config = {k: v for k, v in vars(args).items() if k not in ("out", "backend")}
    save({"benchmark": "generation", "config": config, "summary": summary, "results": results}, args.out)
    if args.out:
        plot(summary, os.path.splitext(args.out)[0] + ".png")


if __name__ == "__main__":
    with sigterm_unwinds():  # `kill` closes the vLLM engine, in the child measuring it too
        main()
