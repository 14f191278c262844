"""Step cost of DynSDPB against plain ``SFTTrainer``: same model, data and batch shape, measured side by side.

    python -m benchmarks.bench_step --model smollm2-135m-shape --steps 8 --repeats 2 --out benchmarks/results/step.json

Each configuration trains through the real trainer (``trainer.train()``); a callback times every optimizer step and
the first ``--warmup`` steps are dropped. Configurations are interleaved (plain, dynsdpb, plain, dynsdpb, ...) so
that load on a shared machine hits them alike; the result is the ratio of median step times. Peak memory is the peak
RSS of a separate child process per configuration on CPU (``torch.cuda.max_memory_allocated`` on GPU). Weights are
random: step time does not depend on their values, so ``smollm2-135m-shape`` (SmolLM2-135M's exact architecture) and
``qwen2.5-0.5b-shape`` (Qwen2.5-0.5B's) need no download.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _shape(hidden: int, intermediate: int, layers: int, heads: int, kv_heads: int, vocab: int, **extra) -> dict:
    """A decoder's config fields: hidden and MLP sizes, layers, attention and key/value heads, vocabulary."""
    return dict(
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        vocab_size=vocab,
        **extra,
    )


QWEN_ROPE = {"rope_type": "default", "rope_theta": 1_000_000.0}
MODELS = {
    "tiny": _shape(64, 128, 2, 4, 2, 49152),
    "smollm2-135m-shape": _shape(576, 1536, 30, 9, 3, 49152, head_dim=64),
    # Qwen2.5-0.5B(-Instruct): Qwen2 (q/k/v biases), 494 M parameters of which 136 M in the tied 151,936-row head.
    "qwen2.5-0.5b-shape": _shape(896, 4864, 24, 14, 2, 151936, model_type="qwen2", rope_parameters=QWEN_ROPE),
}
VARIANTS = {
    "plain": None,
    "dynsdpb-full": dict(distillation_temperature=3.0, distillation_schedule="dynamic", distillation_topk=None),
    "dynsdpb-top64": dict(distillation_temperature=1.0, distillation_schedule="dynamic", distillation_topk=64),
}


from benchmarks.common import module_command, save  # noqa: E402


def build_trainer(args, variant: str, output_dir: str):
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM
    from trl import SFTConfig, SFTTrainer

    from benchmarks.tiny import make_tokenizer
    from dynsdpb_selfplay import attach_dynsdpb

    tok = make_tokenizer()
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(model_config(args.model))
    # Rows of exactly seq_len tokens (char tokenizer): prompt_frac of them masked as prompt.
    n_prompt = int(args.seq_len * args.prompt_frac)
    rows = []
    for i in range(args.batch * (args.steps + 2)):
        body = "".join(str((i * 7 + j) % 10) for j in range(args.seq_len))
        rows.append({"prompt": body[:n_prompt], "completion": body[n_prompt : args.seq_len - 1]})
    peft = None
    if args.lora:
        from peft import LoraConfig

        peft = LoraConfig(r=16, lora_alpha=32, target_modules=["q_proj", "v_proj"])
    sft = SFTConfig(
        output_dir=output_dir,
        use_cpu=not torch.cuda.is_available(),
        bf16=args.dtype == "bfloat16",
        report_to="none",
        per_device_train_batch_size=args.batch,
        max_steps=args.steps,
        learning_rate=1e-5,
        logging_steps=1000,
        save_strategy="no",
        max_length=args.seq_len,
        disable_tqdm=True,
        gradient_checkpointing=args.grad_ckpt,
        dataloader_num_workers=0,
        seed=0,
    )
    trainer = SFTTrainer(
        model=model, args=sft, train_dataset=Dataset.from_list(rows), processing_class=tok, peft_config=peft
    )
    if VARIANTS[variant] is not None:
        attach_dynsdpb(trainer, **VARIANTS[variant])
    return trainer


def model_config(name: str):
    """The ``transformers`` config of a ``MODELS`` shape (Llama unless it names another ``model_type``)."""
    from transformers import AutoConfig

    shape = dict(MODELS[name])
    return AutoConfig.for_model(
        shape.pop("model_type", "llama"),
        **shape,
        max_position_embeddings=1024,
        tie_word_embeddings=True,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )


def matmul_peak_gflops(dtype_name: str, size: int = 2048, seconds: float = 3.0) -> float:
    """This machine's dense matmul throughput in ``dtype`` (best of ~1 s windows of ``size``-square products)."""
    import torch

    dtype = getattr(torch, dtype_name)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    a, b = (torch.randn(size, size, device=device).to(dtype) for _ in range(2))
    best, end = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < end:
        t, n = time.perf_counter(), 0
        while time.perf_counter() - t < seconds / 3:
            a @ b
            n += 1
        if device == "cuda":
            torch.cuda.synchronize()
        best = max(best, 2 * size**3 * n / (time.perf_counter() - t) / 1e9)
    return best


def model_flops_per_step(args) -> float:
    """Useful FLOPs of one optimizer step, the same for every variant (PaLM's accounting): per token 6 N (forward 2 N,
    backward 4 N) plus attention 12 L d s; with LoRA the frozen weights get no weight gradient, so 4 N + 8 L d s.
    N counts every parameter (the tied embedding once); tokens are batch x seq_len."""
    m = MODELS[args.model]
    d, layers, kv = m["hidden_size"], m["num_hidden_layers"], m["num_key_value_heads"]
    head = m.get("head_dim", d // m["num_attention_heads"])
    per_layer = 2 * d * d + 2 * d * kv * head + 3 * d * m["intermediate_size"]
    n = layers * per_layer + m["vocab_size"] * d
    tokens = args.batch * args.seq_len
    dense, attention = (4, 8) if args.lora else (6, 12)
    return tokens * (dense * n + attention * layers * d * args.seq_len)


def time_steps(args, variant: str, output_dir: str) -> list[float]:
    import torch
    from transformers import TrainerCallback

    class Timer(TrainerCallback):
        def __init__(self):
            self.times, self.t0 = [], None

        def on_step_begin(self, *a, **k):
            self.t0 = time.perf_counter()

        def on_step_end(self, *a, **k):
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            self.times.append(time.perf_counter() - self.t0)

    trainer = build_trainer(args, variant, output_dir)
    timer = Timer()
    trainer.add_callback(timer)
    trainer.train()
    return timer.times[args.warmup :]


class RssSampler:
    """Peak resident memory of this process while a block runs, sampled from /proc every 2 ms."""

    def __enter__(self):
        import threading

        self.base = self.peak = self._rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    def _run(self):
        while not self._stop.wait(0.002):
            self.peak = max(self.peak, self._rss())

    @staticmethod
    def _rss() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def child_peak(args, variant: str) -> dict:
    """Peak memory (MiB) of one configuration, trained alone in a child process."""
    cmd = [*module_command("benchmarks.bench_step"), "--child", variant, *sys.argv[1:]]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
    return json.loads(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_argument_group("workload")
    g.add_argument("--model", choices=sorted(MODELS), default="tiny")
    g.add_argument("--batch", type=int, default=4)
    g.add_argument("--seq-len", type=int, default=256)
    g.add_argument("--prompt-frac", type=float, default=0.25, help="share of each row masked as prompt")
    g.add_argument("--lora", action="store_true", help="LoRA r=16 on q,v instead of full fine-tuning")
    g.add_argument(
        "--dtype",
        choices=["auto", "bfloat16", "float32"],
        default="auto",
        help="bfloat16 autocast or float32; auto: bfloat16 where the device computes it natively",
    )
    g.add_argument("--grad-ckpt", action="store_true", help="gradient checkpointing")
    g = p.add_argument_group("measurement")
    g.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    g.add_argument("--steps", type=int, default=8)
    g.add_argument("--warmup", type=int, default=2)
    g.add_argument("--repeats", type=int, default=2, help="interleaved rounds over the variants")
    g.add_argument("--no-memory", action="store_true", help="skip the per-variant child processes for peak memory")
    g.add_argument("--out", default=None, help="write the JSON result here")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()

    import tempfile

    import torch

    from dynsdpb_selfplay.precision import resolve_dtype

    args.dtype = resolve_dtype(args.dtype, what="--dtype")  # a child resolves the same way from its own argv

    if args.child:
        with tempfile.TemporaryDirectory() as d:
            trainer = build_trainer(args, args.child, d)
            with RssSampler() as rss:
                trainer.train()
        if torch.cuda.is_available():
            print(json.dumps({"peak": torch.cuda.max_memory_allocated() / 2**20, "during_training": None}))
        else:
            print(json.dumps({"peak": rss.peak / 2**20, "during_training": (rss.peak - rss.base) / 2**20}))
        return

    times = {v: [] for v in args.variants}
    with tempfile.TemporaryDirectory() as d:
        for r in range(args.repeats):
            for v in args.variants:
                times[v] += time_steps(args, v, os.path.join(d, f"{v}-{r}"))
                print(f"[{r}] {v}: median {statistics.median(times[v]):.3f} s/step", flush=True)
    memory = {} if args.no_memory else {v: child_peak(args, v) for v in args.variants}
    dtype = args.dtype
    peak = matmul_peak_gflops(dtype)
    flops = model_flops_per_step(args)
    base = statistics.median(times["plain"]) if "plain" in times else None
    result = {
        "benchmark": "bench_step",
        "config": vars(args),
        "median_step_s": {v: statistics.median(t) for v, t in times.items()},
        "step_times_s": times,
        "time_ratio_vs_plain": {v: statistics.median(t) / base for v, t in times.items()} if base else None,
        "peak_memory_mib": memory or None,
        "memory_ratio_vs_plain": {v: m["peak"] / memory["plain"]["peak"] for v, m in memory.items()}
        if "plain" in memory
        else None,
        "model_flops_per_step": flops,
        "matmul_peak_gflops": {dtype: peak},
        "achieved_gflops": {v: flops / statistics.median(t) / 1e9 for v, t in times.items()},
        "share_of_matmul_peak": {v: flops / statistics.median(t) / 1e9 / peak for v, t in times.items()},
        # Every example is seen twice per epoch under DynSDPB: twice the steps at equal batch shape.
        "epoch_cost_ratio_vs_plain": {
            v: (1 if v == "plain" else 2) * statistics.median(t) / base for v, t in times.items()
        }
        if base
        else None,
    }
    keys = (
        "median_step_s",
        "time_ratio_vs_plain",
        "memory_ratio_vs_plain",
        "matmul_peak_gflops",
        "share_of_matmul_peak",
    )
    print(json.dumps({k: result[k] for k in keys}))
    save(result, args.out)


if __name__ == "__main__":
    main()
