"""GPU check of DynSDPB (run by scripts/gpu_check.sh): the fused kernel in bf16 against the naive logits path, and the
trainer on the device, with a JSON report.

1. **Requirements**: lists what ``trl``, ``transformers``, ``datasets`` and ``dynsdpb-selfplay`` need and the machine
   lacks (wheels installed with ``--no-deps`` have no resolver to say so); reported, the checks below decide.
2. **Kernel**: ``fused_ce_distill`` on a Qwen2.5-0.5B-sized head (``V = 151,936``, ``H = 896``, 1,024 tokens; much
   smaller with ``--device cpu``) against ``losses.distillation_loss`` on the full logits, both under bf16 autocast
   with fp32 weights (what ``bf16=True`` trains with) and with bf16 weights; full and top-k targets, with and without
   soft-capping. Both are also compared with an fp32 computation, so the report says how far each bf16 path is from
   exact: the kernel must not be further than the naive path (plus bf16 rounding). Peak memory and time of each.
3. **Trainer**: a tiny random Qwen2 on the device: in fp32, ``distillation_alpha=0`` reproduces ``SFTTrainer`` on the
   same batches and every logged loss is ``dynsdpb/ce + dynsdpb/kd_loss``; in bf16 the run is finite and distills.

Exit status 1 if a check fails. ``--device cpu`` runs the same code small, to test the script where no GPU is.
Run from the repository root as ``python -m scripts.gpu_check`` (it takes its tiny tokenizer and JSON writer from
the ``benchmarks`` package); ``gpu_check.sh`` runs it with ``-P`` so that the installed package, not this checkout's
``dynsdpb_selfplay``, is the one checked.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def unmet_requirements(names=("trl", "transformers", "datasets", "dynsdpb-selfplay")) -> list[str]:
    """Requirements (extras left out) of ``names`` that the environment does not satisfy, one line each."""
    from importlib.metadata import PackageNotFoundError, requires, version

    from packaging.requirements import Requirement

    unmet = []
    for name in names:
        try:
            reqs = requires(name) or []
        except PackageNotFoundError:
            unmet.append(f"{name}: not installed")
            continue
        for line in reqs:
            req = Requirement(line)
            if req.marker is not None and not req.marker.evaluate({"extra": ""}):
                continue
            try:
                found = version(req.name)
            except PackageNotFoundError:
                unmet.append(f"{name}: {req} (missing)")
                continue
            if req.specifier and not req.specifier.contains(found, prereleases=True):
                unmet.append(f"{name}: {req} (found {found})")
    return unmet


def _case(device, n, h, v, topk, softcap, weights_dtype, seed=0):
    import torch

    from dynsdpb_selfplay.distill.losses import build_targets

    g = torch.Generator(device="cpu").manual_seed(seed)
    hidden = torch.randn(n, h, generator=g).to(device, weights_dtype)
    weight = (torch.randn(v, h, generator=g) * h**-0.5).to(device, weights_dtype)
    labels = torch.randint(0, v, (n,), generator=g).to(device)
    kd_rows = torch.arange(0, n, 2, device=device)  # every other token distilled
    teacher = torch.nn.functional.linear(hidden[kd_rows].float() + 0.1, weight.float())
    if softcap is not None:
        teacher = softcap * torch.tanh(teacher / softcap)
    d = kd_rows.numel()
    tau = torch.linspace(1.0, 3.0, d, device=device)
    targets = build_targets(teacher, tau, torch.linspace(0.2, 1.0, d, device=device), topk)
    return hidden, weight, labels, kd_rows, targets


def _run(path, device, hidden, weight, labels, kd_rows, targets, softcap, autocast):
    """Loss and gradients (hidden, weight) of one path, its peak memory (MiB) and time (s)."""
    import torch

    from dynsdpb_selfplay.distill.fused import fused_ce_distill
    from dynsdpb_selfplay.distill.losses import distillation_loss

    h = hidden.detach().clone().requires_grad_(True)
    w = weight.detach().clone().requires_grad_(True)
    n, d = labels.numel(), kd_rows.numel()
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    start = time.perf_counter()
    dtype = torch.bfloat16 if autocast else torch.float32
    with torch.autocast(device.type, dtype=dtype, enabled=autocast):
        if path == "fused":
            loss, _ = fused_ce_distill(
                h, w, None, labels, num_items=n, kd_rows=kd_rows, kd_targets=targets, num_distilled=d, softcap=softcap
            )
        else:
            z = torch.nn.functional.linear(h, w).float()
            if softcap is not None:
                z = softcap * torch.tanh(z / softcap)
            loss, _ = distillation_loss(z, labels, kd_rows, targets, num_items=n, num_distilled=d)
    loss.backward()
    if cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    peak = (torch.cuda.max_memory_allocated() - base) / 2**20 if cuda else None
    return loss.detach().float(), h.grad.float(), w.grad.float(), peak, seconds


def _rel(a, b) -> float:
    return float((a - b).norm() / b.norm().clamp(min=1e-30))


def kernel_checks(device, small: bool) -> list[dict]:
    import torch

    n, h, v = (64, 64, 2048) if small else (1024, 896, 151936)
    rows = []
    for topk in (None, 64):
        for softcap in (None, 30.0):
            for mode in ("autocast", "bf16-weights"):
                weights_dtype = torch.float32 if mode == "autocast" else torch.bfloat16
                case = _case(device, n, h, v, topk, softcap, weights_dtype)
                exact_case = (case[0].float(), case[1].float(), *case[2:])
                exact = _run("naive", device, *exact_case, softcap, autocast=False)
                fused = _run("fused", device, *case, softcap, autocast=mode == "autocast")
                naive = _run("naive", device, *case, softcap, autocast=mode == "autocast")
                err = {
                    p: {
                        "loss": abs(r[0].item() - exact[0].item()) / abs(exact[0].item()),
                        "grad_hidden": _rel(r[1], exact[1]),
                        "grad_weight": _rel(r[2], exact[2]),
                    }
                    for p, r in (("fused", fused), ("naive", naive))
                }
                fused_vs_naive = {
                    "loss": abs(fused[0].item() - naive[0].item()) / abs(naive[0].item()),
                    "grad_hidden": _rel(fused[1], naive[1]),
                    "grad_weight": _rel(fused[2], naive[2]),
                }
                # bf16 has an 8-bit mantissa (relative rounding 2^-8 = 0.4%): the kernel may differ from the naive
                # path by that, and must be no further from the fp32 result than the naive path plus that.
                ok = all(fused_vs_naive[k] < 2e-2 for k in fused_vs_naive) and all(
                    err["fused"][k] <= err["naive"][k] + 1e-2 for k in err["fused"]
                )
                finite = all(bool(torch.isfinite(t).all()) for t in fused[:3])
                rows.append(
                    {
                        "topk": topk,
                        "softcap": softcap,
                        "mode": mode,
                        "tokens": n,
                        "hidden": h,
                        "vocab": v,
                        "fused_vs_naive": fused_vs_naive,
                        "error_vs_fp32": err,
                        "ok": ok and finite,
                        "peak_mib": {"fused": fused[3], "naive": naive[3]},
                        "seconds": {"fused": fused[4], "naive": naive[4]},
                    }
                )
                print(
                    f"kernel topk={topk} softcap={softcap} {mode}: fused vs naive {fused_vs_naive} "
                    f"ok={rows[-1]['ok']} peak MiB {rows[-1]['peak_mib']}",
                    flush=True,
                )
    return rows


def trainer_checks(device) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, Qwen2Config
    from trl import SFTConfig, SFTTrainer

    from benchmarks.tiny import equal_completion_rows, make_tokenizer, plain_overlap, sft_kwargs
    from dynsdpb_selfplay import DynSDPBConfig, DynSDPBTrainer

    tok = make_tokenizer()
    cuda = device.type == "cuda"

    def model():
        torch.manual_seed(0)
        config = Qwen2Config(
            vocab_size=len(tok),
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=256,
            pad_token_id=0,
            bos_token_id=1,
            eos_token_id=2,
        )
        return AutoModelForCausalLM.from_config(config)

    def train(cls, config_cls, bf16=False, **kw):
        args = config_cls(
            **sft_kwargs(
                f"/tmp/dynsdpb-gpu-check/{cls.__name__}-{bf16}",
                use_cpu=not cuda,
                bf16=bf16,
                per_device_train_batch_size=2,
                gradient_accumulation_steps=2,
                max_steps=3,
                optim="sgd",
                learning_rate=0.2,
                **kw,
            )
        )
        t = cls(model=model(), args=args, train_dataset=equal_completion_rows(), processing_class=tok)
        t.train()
        return [h for h in t.state.log_history if "loss" in h], t

    static = dict(distillation_schedule="static", distillation_temperature=2.0)
    dyn, _ = train(DynSDPBTrainer, DynSDPBConfig, **static)
    zero, z = train(DynSDPBTrainer, DynSDPBConfig, distillation_alpha=0.0)
    sft, s = train(plain_overlap(SFTTrainer), SFTConfig)
    bf16, _ = train(DynSDPBTrainer, DynSDPBConfig, bf16=True, **static)
    on_device = next(z.model.parameters()).device.type == device.type
    alpha0 = max(abs(a["loss"] - b["loss"]) / b["loss"] for a, b in zip(zero, sft, strict=True))
    pairs = zip(z.model.parameters(), s.model.parameters(), strict=True)
    weights = max(float((p.detach() - q.detach()).abs().max()) for p, q in pairs)
    sums = max(abs(h["loss"] - h["dynsdpb/ce"] - h["dynsdpb/kd_loss"]) / h["loss"] for h in dyn)
    bf16_ok = all(abs(h["loss"]) < 1e3 for h in bf16) and bf16[-1]["dynsdpb/distilled_tokens"] > 0
    result = {
        "on_device": on_device,
        "alpha0_vs_sft_loss_rel": alpha0,
        "alpha0_vs_sft_weights_abs": weights,
        "loss_minus_ce_plus_kd_rel": sums,
        "fp32_losses": [h["loss"] for h in dyn],
        "fp32_kd_loss": [h["dynsdpb/kd_loss"] for h in dyn],
        "bf16_losses": [h["loss"] for h in bf16],
        "bf16_kd_loss": [h["dynsdpb/kd_loss"] for h in bf16],
    }
    distills = dyn[-1]["dynsdpb/kd_loss"] > 0
    result["ok"] = on_device and distills and bf16_ok and max(alpha0, weights, sums) < 1e-4
    print(f"trainer: {result}", flush=True)
    return result


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda", help="cuda (the check) or cpu (a small dry run of the same code)")
    p.add_argument("--out", required=True, help="JSON report")
    args = p.parse_args()

    unmet = unmet_requirements()
    for line in unmet:
        print(f"requirement not met: {line}", file=sys.stderr)
    import torch

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("gpu_check: --device cuda but torch sees no GPU; use --device cpu for a dry run", file=sys.stderr)
        return 2
    from benchmarks.common import save

    kernel = kernel_checks(device, small=device.type != "cuda")
    trainer = trainer_checks(device)
    # Unmet requirements are reported, not failed on: the checks below show whether the versions found work.
    ok = all(r["ok"] for r in kernel) and trainer["ok"]
    import dynsdpb_selfplay

    save(
        {
            "benchmark": "gpu_check",
            "device": str(device),
            "dry_run": device.type != "cuda",
            "ok": ok,
            "package": dynsdpb_selfplay.__file__,
            "unmet_requirements": unmet,
            "kernel": kernel,
            "trainer": trainer,
        },
        args.out,
    )
    print(f"gpu_check: {'OK' if ok else 'FAILED'} -> {args.out}", flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
