"""Fused LM head + cross-entropy + distillation, chunked over tokens, without keeping ``[N, V]`` logits.

For each chunk of label positions the kernel projects the hidden states through the LM head, computes the CE of
every token and the KL of the distilled ones from the *same* logits (one softmax at temperature 1 serves the CE, the
entropy metric and the stored-target statistics), writes the new stored targets of the rows that will repeat, and
immediately forms the gradient of the loss with respect to the logits::

    dL/dz_t  = w_t * (softmax(z_t) - onehot(y_t)) / N                            (CE, every label token)
             + alpha_t * tau_t * (q_t - p_t) / D                                  (full targets)
             + alpha_t * tau_t * (q_t - p_tail * q_t/q_tail [off top-k] ; q_t - p_t [on top-k]) / D   (top-k + tail)

with ``q_t = softmax(z_t / tau_t)`` and CE weights ``w_t`` (1 unless given). That gradient is pushed through the
projection at once (``dL/dh = g W``, ``dL/dW = g^T h``), so backward only scales the saved results by the incoming
gradient. Peak extra memory is a few ``[chunk, V]`` fp32 buffers instead of ``[N, V]`` logits and their softmax.
``q_t/q_tail <= 1`` is formed in log space, and ``0 * log 0`` counts as 0 (a masked vocabulary entry, logit
``-inf``), so the gradients stay finite wherever the reference :func:`~.losses.distillation_loss` does.

Logit scaling and soft-capping (Gemma-style ``z = c * tanh(s / c)``) are applied like TRL's fused head does.
:func:`~.losses.distillation_loss` is the unfused reference this must match.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from .losses import Targets, weighted_sum

__all__ = ["FusedOutputs", "fused_ce_distill", "logit_transform"]


@dataclass
class FusedOutputs:
    """Detached by-products of one fused call (sums, so they add up across micro-batches)."""

    ce_sum: torch.Tensor
    kl_sum: torch.Tensor
    kd_sum: torch.Tensor
    alpha_sum: torch.Tensor
    tau_sum: torch.Tensor
    tail_mass_sum: torch.Tensor
    entropy_sum: torch.Tensor
    num_correct: torch.Tensor
    stored: list[Targets] = field(default_factory=list)


def _rows_in(rows: torch.Tensor, start: int, end: int) -> tuple[torch.Tensor, int, int]:
    """Local indices of the sorted ``rows`` that fall in ``[start, end)``, and their slice bounds in ``rows``."""
    lo = int(torch.searchsorted(rows, start))
    hi = int(torch.searchsorted(rows, end))
    return rows[lo:hi] - start, lo, hi


class _FusedCEDistill(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, bias, labels, plan, out):  # noqa: D401 - autograd signature
        n, v = hidden.shape[0], weight.shape[0]
        device = hidden.device
        autocast = torch.is_autocast_enabled(device.type)
        dt = torch.get_autocast_dtype(device.type) if autocast else weight.dtype
        need_w = ctx.needs_input_grad[1]
        need_b = bias is not None and ctx.needs_input_grad[2]
        grad_h = torch.empty(n, hidden.shape[1], dtype=hidden.dtype, device=device)
        grad_w = torch.zeros_like(weight, dtype=torch.float32) if need_w else None
        grad_b = torch.zeros(v, dtype=torch.float32, device=device) if need_b else None
        f32 = dict(dtype=torch.float32, device=device)
        sums = {k: torch.zeros((), **f32) for k in ("ce", "ce_w", "kl", "kd", "alpha", "tau", "tail", "ent", "ok")}
        kd_rows, kd_t, store_rows = plan["kd_rows"], plan["kd_targets"], plan["store_rows"]
        ce_weight = plan["ce_weight"]
        cap, scale = plan["softcap"], plan["logit_scale"]

        with torch.autocast(device.type, enabled=False), torch.no_grad():
            w = weight.to(dt)
            b = None if bias is None else bias.to(dt)
            for start in range(0, n, plan["chunk_size"]):
                end = min(start + plan["chunk_size"], n)
                h = hidden[start:end].to(dt)
                y = labels[start:end]
                z = torch.nn.functional.linear(h, w, b).float()
                if scale != 1.0:
                    z = z * scale
                if cap is not None:
                    z = cap * torch.tanh(z / cap)
                lse = z.logsumexp(-1, keepdim=True)
                g = (z - lse).exp_()  # softmax at T = 1
                z_y = z.gather(-1, y[:, None])
                ce = (lse - z_y).squeeze(-1)
                w_ce = None if ce_weight is None else ce_weight[start:end]
                sums["ce"] += ce.sum()
                sums["ce_w"] += ce.sum() if w_ce is None else (w_ce * ce).sum()
                sums["ent"] += (lse.squeeze(-1) - weighted_sum(g, z)).sum()
                sums["ok"] += (z.argmax(-1) == y).sum()

                s_local, s_lo, s_hi = _rows_in(store_rows, start, end)
                if s_local.numel():
                    # Statistics for the schedule come from this same softmax, at temperature 1.
                    out.stored.append(plan["make_targets"](z[s_local], g[s_local], lse[s_local], y[s_local]))

                g.scatter_add_(-1, y[:, None], torch.full_like(z_y, -1.0))
                g.mul_(plan["ce_scale"] if w_ce is None else plan["ce_scale"] * w_ce[:, None])

                k_local, k_lo, k_hi = _rows_in(kd_rows, start, end)
                if k_local.numel():
                    t = kd_t.select(torch.arange(k_lo, k_hi, device=device))
                    lq = torch.log_softmax(z[k_local] / t.tau[:, None], dim=-1)
                    q = lq.exp()
                    coef = (t.alpha * t.tau * plan["kd_scale"])[:, None]
                    if not t.is_topk:
                        p = t.logp.exp()
                        kl = weighted_sum(p, t.logp - lq)
                        gk = q - p
                    else:
                        idx = t.indices.long()
                        lq_k = lq.gather(-1, idx)
                        lq_off = lq.scatter(-1, idx, float("-inf"))  # student log-probs outside the top-k
                        lq_tail = lq_off.logsumexp(-1)
                        p_k, p_tail = t.logp.exp(), t.tail_logp.exp()
                        kl = weighted_sum(p_k, t.logp - lq_k) + torch.where(
                            p_tail > 0, p_tail * (t.tail_logp - lq_tail), 0.0
                        )
                        # Off the top-k: q_v - p_tail * q_v / q_tail, with q_v / q_tail = exp(lq_v - lq_tail) <= 1 taken
                        # in log space (the ratio p_tail / q_tail alone overflows fp32 when q_tail is tiny).
                        shift = torch.where(torch.isfinite(lq_tail), lq_tail, 0.0)
                        gk = q - p_tail[:, None] * (lq_off - shift[:, None]).exp()
                        gk.scatter_(-1, idx, lq_k.exp() - p_k)
                        sums["tail"] += p_tail.sum()
                    g.index_add_(0, k_local, gk * coef)
                    sums["kl"] += kl.sum()
                    sums["kd"] += (t.alpha * t.tau.square() * kl).sum()
                    sums["alpha"] += t.alpha.sum()
                    sums["tau"] += t.tau.sum()

                if cap is not None:
                    g.mul_(1.0 - (z / cap).square())
                if scale != 1.0:
                    g.mul_(scale)
                g_dt = g.to(dt)
                grad_h[start:end] = (g_dt @ w).to(hidden.dtype)
                if need_w:
                    grad_w += (g_dt.T @ h).float()
                if need_b:
                    grad_b += g.sum(0)

        loss = sums["ce_w"] * plan["ce_scale"] + sums["kd"] * plan["kd_scale"]
        out.ce_sum, out.kl_sum, out.kd_sum = sums["ce"], sums["kl"], sums["kd"]
        out.alpha_sum, out.tau_sum, out.tail_mass_sum = sums["alpha"], sums["tau"], sums["tail"]
        out.entropy_sum, out.num_correct = sums["ent"], sums["ok"]
        ctx.save_for_backward(grad_h, grad_w, grad_b)
        ctx.dtypes = (weight.dtype, None if bias is None else bias.dtype)
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        grad_h, grad_w, grad_b = ctx.saved_tensors
        gh = grad_h * grad_loss.to(grad_h.dtype)
        gw = None if grad_w is None else (grad_w * grad_loss).to(ctx.dtypes[0])
        gb = None if grad_b is None else (grad_b * grad_loss).to(ctx.dtypes[1])
        return gh, gw, gb, None, None, None


def fused_ce_distill(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    labels: torch.Tensor,
    *,
    num_items: float | torch.Tensor,
    kd_rows: torch.Tensor | None = None,
    kd_targets: Targets | None = None,
    num_distilled: float | torch.Tensor = 1.0,
    kd_weight: float = 1.0,
    store_rows: torch.Tensor | None = None,
    make_targets: Callable[..., Targets] | None = None,
    logit_scale: float = 1.0,
    softcap: float | None = None,
    chunk_size: int = 256,
    ce_weight: torch.Tensor | None = None,
) -> tuple[torch.Tensor, FusedOutputs]:
    """``L = sum_t w_t CE_t / num_items + kd_weight * sum_i alpha_i tau_i^2 KL_i / num_distilled``, fused with the
    LM head.

    Args:
        hidden: ``[N, H]`` final hidden states at the label positions (already shifted: row ``t`` predicts
            ``labels[t]``).
        weight, bias: the LM head, ``[V, H]`` and ``[V]`` or ``None``.
        labels: ``[N]`` label tokens.
        num_items: CE normalizer (``num_items_in_batch`` under gradient accumulation; 0 counts as 1).
        kd_rows: ``[D]`` sorted indices into ``N`` of the distilled tokens; ``kd_targets`` their targets.
        num_distilled: KL normalizer (distilled tokens in the whole optimizer step), clamped to >= 1.
        kd_weight: factor on the KD term alone (undoes what the caller's trainer later does to the whole loss, e.g.
            dividing it by the accumulation steps; the logged sums are unaffected).
        store_rows: ``[S]`` sorted indices into ``N`` whose targets to store for the next step;
            ``make_targets(logits [s, V], probs [s, V], lse [s, 1], labels [s]) -> Targets`` (fp32, detached; ``probs``
            is the softmax at temperature 1 and ``lse`` its log-normalizer) builds them.
        logit_scale, softcap: the model's logit transform ``z = softcap * tanh(logit_scale * s / softcap)``.
        chunk_size: tokens per chunk; memory is ``O(chunk_size * V)``.
        ce_weight: ``[N]`` weights ``w_t`` of the CE terms (``None``: all 1). ``FusedOutputs.ce_sum`` stays the
            unweighted sum (a metric of fit); the loss uses the weighted one.

    Returns:
        The scalar loss (differentiable in ``hidden``, ``weight`` and ``bias``) and :class:`FusedOutputs`.
    """
    device = hidden.device
    empty = torch.zeros(0, dtype=torch.long, device=device)
    plan = {
        "kd_rows": empty if kd_rows is None else kd_rows.to(device),
        "kd_targets": kd_targets,
        "store_rows": empty if store_rows is None else store_rows.to(device),
        "make_targets": make_targets,
        "ce_scale": 1.0 / (float(num_items) if float(num_items) > 0 else 1.0),
        "ce_weight": None if ce_weight is None else ce_weight.to(device=device, dtype=torch.float32),
        "kd_scale": float(kd_weight) / max(float(num_distilled), 1.0),
        "logit_scale": float(logit_scale),
        "softcap": softcap,
        "chunk_size": int(chunk_size),
    }
    if plan["kd_rows"].numel() and kd_targets is None:
        raise ValueError("fused_ce_distill: kd_rows given without kd_targets")
    if ce_weight is not None and ce_weight.shape != labels.shape:
        shapes = f"{tuple(ce_weight.shape)} vs labels {tuple(labels.shape)}"
        raise ValueError(f"fused_ce_distill: ce_weight must match labels, got {shapes}")
    if plan["store_rows"].numel() and make_targets is None:
        raise ValueError("fused_ce_distill: store_rows given without make_targets")
    zero = torch.zeros((), device=device)
    out = FusedOutputs(*(zero,) * 8)
    loss = _FusedCEDistill.apply(hidden, weight, bias, labels.long(), plan, out)
    return loss, out


def logit_transform(config) -> tuple[float, float | None]:
    """``(logit_scale, softcap)`` of a model's LM head, read like TRL's fused head reads them."""
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    scale = getattr(text, "logit_scale", None)
    if scale is None:
        scale = getattr(text, "output_multiplier", None)
    if scale is None:
        scale = getattr(text, "lm_head_multiplier", None)
    if scale is None and getattr(text, "logits_scaling", None) is not None:
        scale = text.logits_scaling if text.model_type == "hyperclovax" else 1 / text.logits_scaling
    return (1.0 if scale is None else float(scale)), getattr(text, "final_logit_softcapping", None)
