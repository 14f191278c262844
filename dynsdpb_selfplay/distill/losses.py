"""Pure tensor functions of DynSDPB: stored targets, their statistics and the distillation loss.

Notation (one row = one distilled token):

* ``z_prev`` ``[n, V]``: logits the model gave the token one optimizer step earlier (detached).
* ``z``      ``[n, V]``: logits the model gives it now.
* ``tau``    ``[n]``:    per-token temperature, ``alpha`` ``[n]``: per-token weight.
* ``p = softmax(z_prev / tau)`` (teacher), ``q = softmax(z / tau)`` (student).

Forward KL, teacher first::

    KL_i = sum_v p_iv (log p_iv - log q_iv)

and the DynSDPB objective over a batch with ``N`` label tokens of which ``D`` are distilled::

    L = (1/N) sum_{t <= N} CE_t  +  (1/D) sum_{i <= D} alpha_i * tau_i^2 * KL_i

With ``distillation_repeated_ce_weight = w < 1`` each CE term carries a weight ``w_t`` (``w`` on the label tokens of
repeated samples, 1 elsewhere) and the CE is ``sum_t w_t CE_t / sum_t w_t``.

Stored targets come in two forms (:class:`Targets`):

* **full**: ``log p`` over the whole vocabulary, fp32 ``[n, V]``; exact.
* **top-k with a tail bucket**: the teacher's ``k`` largest log-probs (fp32 ``[n, k]``) with their vocabulary
  indices (``[n, k]``) and the log of the remaining mass ``log(1 - sum_k p_k)`` (``[n]``). The KL is then taken over
  ``k + 1`` outcomes: the ``k`` kept tokens and "any other token", whose student probability is the student's mass
  outside the teacher's top-k. With ``k = V`` (empty tail) it equals the full KL.

Everything here is differentiable in the student logits only; teacher tensors are treated as constants.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

__all__ = [
    "Targets",
    "TeacherStats",
    "build_targets",
    "distillation_loss",
    "kl_to_targets",
    "teacher_stats",
    "teacher_stats_from_softmax",
    "weighted_sum",
]

# log(0) stand-in for an empty tail bucket: exp() of it is 0 in fp32, and 0 * it stays finite.
_LOG_ZERO = -1e30


def weighted_sum(p: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``sum_v p_v x_v`` over the last dimension, with ``0 * x = 0`` where ``p_v = 0`` (as ``xlogy`` does).

    A masked vocabulary entry has logit ``-inf``, so ``p_v = 0`` and ``x_v`` is ``-inf`` (``z_v``, ``log p_v``) or
    ``NaN`` (``log p_v - log q_v``); the plain product would make the sum ``NaN``."""
    return torch.where(p > 0, p * x, 0.0).sum(-1)


@dataclass
class Targets:
    """Stored soft targets of ``n`` tokens, one optimizer step old.

    Attributes:
        logp: ``[n, V]`` (full) or ``[n, k]`` (top-k) fp32 teacher log-probabilities at temperature ``tau``.
        tau: ``[n]`` temperature each row was softened with.
        alpha: ``[n]`` distillation weight of each row.
        indices: ``[n, k]`` vocabulary ids of the top-k columns, ``None`` for full targets.
        tail_logp: ``[n]`` log of the teacher mass outside the top-k, ``None`` for full targets.
    """

    logp: torch.Tensor
    tau: torch.Tensor
    alpha: torch.Tensor
    indices: torch.Tensor | None = None
    tail_logp: torch.Tensor | None = None

    @property
    def is_topk(self) -> bool:
        return self.indices is not None

    def __len__(self) -> int:
        return self.logp.shape[0]

    def select(self, rows: torch.Tensor) -> Targets:
        """The targets of ``rows`` (a ``[m]`` index tensor)."""
        pick = lambda t: None if t is None else t[rows]  # noqa: E731
        return Targets(pick(self.logp), pick(self.tau), pick(self.alpha), pick(self.indices), pick(self.tail_logp))

    def nbytes(self) -> int:
        tensors = (self.logp, self.tau, self.alpha, self.indices, self.tail_logp)
        return sum(t.numel() * t.element_size() for t in tensors if t is not None)

    @staticmethod
    def cat(parts: list[Targets]) -> Targets:
        """Concatenate row-wise; all parts must share the same form."""

        def cat(name: str) -> torch.Tensor | None:
            ts = [getattr(p, name) for p in parts]
            return None if ts[0] is None else torch.cat(ts)

        return Targets(cat("logp"), cat("tau"), cat("alpha"), cat("indices"), cat("tail_logp"))


@dataclass
class TeacherStats:
    """What the dynamic schedule may look at, per stored token (all ``[n]``, computed at temperature 1).

    Attributes:
        entropy: normalized entropy ``H(softmax(z_prev)) / log V`` in ``[0, 1]`` (uncertainty).
        margin: ``p_(1) - p_(2)``, the gap between the two most probable tokens, in ``[0, 1]`` (discrimination).
        top1_correct: ``argmax z_prev == label`` as a bool tensor.
    """

    entropy: torch.Tensor
    margin: torch.Tensor
    top1_correct: torch.Tensor


def teacher_stats(logits: torch.Tensor, labels: torch.Tensor, uncertainty_topk: int | None = None) -> TeacherStats:
    """Uncertainty and discrimination of stored predictions.

    Args:
        logits: ``[n, V]`` logits (any float dtype; computed in fp32).
        labels: ``[n]`` the label token of each row.
        uncertainty_topk: ``None``: ``entropy = H(p) / log V``; ``k``: the entropy of ``p`` renormalised over its
            ``k`` largest entries, divided by ``log k`` (see :func:`teacher_stats_from_softmax`).
    """
    z = logits.float()
    lse = z.logsumexp(-1, keepdim=True)
    return teacher_stats_from_softmax(z, (z - lse).exp(), lse, labels, uncertainty_topk)


def teacher_stats_from_softmax(
    z: torch.Tensor, p: torch.Tensor, lse: torch.Tensor, labels: torch.Tensor, uncertainty_topk: int | None = None
) -> TeacherStats:
    """:func:`teacher_stats` reusing a softmax already computed: ``p = exp(z - lse)``, ``z`` fp32 ``[n, V]``,
    ``lse`` ``[n, 1]``. ``H(p) = lse - sum_v p_v z_v``.

    With ``uncertainty_topk = k`` (``2 <= k``, capped at ``V``) the uncertainty is ``H(p~) / log k`` with
    ``p~ = top_k(p) / sum top_k(p)``: how undecided the prediction is among its ``k`` best candidates. On a
    pretrained LM over a 49k vocabulary ``H(p) / log V`` is small for most tokens, so the dynamic alpha barely moves
    from alpha0; the top-k form spans ``[0, 1]``."""
    v = z.shape[-1]
    k = min(2, v) if uncertainty_topk is None else min(uncertainty_topk, v)
    top = p.topk(k, dim=-1)
    if uncertainty_topk is None:
        entropy = (lse.squeeze(-1) - weighted_sum(p, z)) / math.log(v)
    elif k > 1:
        q = top.values / top.values.sum(-1, keepdim=True)
        entropy = -torch.xlogy(q, q).sum(-1) / math.log(k)
    else:
        entropy = torch.zeros_like(top.values[:, 0])
    margin = top.values[:, 0] - (top.values[:, 1] if v > 1 else 0.0)
    return TeacherStats(entropy.clamp(0.0, 1.0), margin, top.indices[:, 0] == labels)


def build_targets(logits: torch.Tensor, tau: torch.Tensor, alpha: torch.Tensor, topk: int | None = None) -> Targets:
    """Soften stored logits into targets.

    ``logp = log_softmax(logits / tau)`` in fp32; with ``topk`` keep the ``k`` largest columns and the log of the
    remaining mass, ``tail = logsumexp`` over the other columns (exact, not ``log(1 - sum)``, so a tiny tail keeps
    its precision).

    Args:
        logits: ``[n, V]`` detached logits.
        tau: ``[n]`` temperatures (> 0).
        alpha: ``[n]`` weights.
        topk: ``None`` for full targets, else ``1 <= k``; ``k >= V`` keeps every column and an empty tail.
    """
    logp = torch.log_softmax(logits.detach().float() / tau[:, None], dim=-1)
    if topk is None:
        return Targets(logp, tau.float(), alpha.float())
    k = min(topk, logp.shape[-1])
    values, indices = logp.topk(k, dim=-1)
    if k == logp.shape[-1]:
        tail = torch.full_like(values[:, 0], _LOG_ZERO)
    else:
        tail = logp.scatter(-1, indices, float("-inf")).logsumexp(-1)
    return Targets(values, tau.float(), alpha.float(), indices.to(torch.int32), tail)


def kl_to_targets(logits: torch.Tensor, targets: Targets) -> torch.Tensor:
    """Per-row forward KL ``KL(p_teacher || q_student)`` at each row's temperature.

    Args:
        logits: ``[n, V]`` student logits (gradients flow into them only).
        targets: :class:`Targets` of the same ``n`` rows.

    Returns:
        ``[n]`` fp32 KL values (nats, >= 0 up to rounding).
    """
    lq = torch.log_softmax(logits.float() / targets.tau[:, None], dim=-1)
    lp = targets.logp
    if not targets.is_topk:
        return weighted_sum(lp.exp(), lp - lq)
    idx = targets.indices.long()
    lq_k = lq.gather(-1, idx)
    lq_tail = lq.scatter(-1, idx, float("-inf")).logsumexp(-1)
    kept = weighted_sum(lp.exp(), lp - lq_k)
    p_tail = targets.tail_logp.exp()
    # An empty tail (p_tail == 0) contributes 0, also where lq_tail is -inf.
    tail = torch.where(p_tail > 0, p_tail * (targets.tail_logp - lq_tail), torch.zeros_like(p_tail))
    return kept + tail


def distillation_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    kd_rows: torch.Tensor,
    targets: Targets,
    num_items: float | torch.Tensor | None = None,
    num_distilled: float | torch.Tensor | None = None,
    ce_weight: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Reference (unfused) DynSDPB loss over label tokens; the trainer's fused kernel must match it.

    ``L = sum_t w_t CE_t / num_items + sum_i alpha_i tau_i^2 KL_i / num_distilled``

    Args:
        logits: ``[N, V]`` student logits at the label positions.
        labels: ``[N]`` label tokens.
        kd_rows: ``[D]`` indices into ``N`` of the distilled tokens (may be empty).
        targets: :class:`Targets` for the ``D`` distilled tokens, in ``kd_rows`` order.
        num_items: CE normalizer (defaults to ``sum_t w_t``, i.e. ``N`` without weights; 0 counts as 1), e.g.
            ``num_items_in_batch`` under accumulation.
        num_distilled: KL normalizer (defaults to ``D``, at least 1).
        ce_weight: ``[N]`` weights ``w_t`` of the CE terms (``None``: all 1).

    Returns:
        The scalar loss and the sums ``ce_sum`` (unweighted CE), ``kl_sum`` (unweighted) and ``kd_sum`` (weighted).
    """
    ce = torch.nn.functional.cross_entropy(logits.float(), labels.long(), reduction="none")
    weighted = ce if ce_weight is None else ce * ce_weight.float()
    if num_items is None:
        num_items = labels.numel() if ce_weight is None else ce_weight.float().sum()
    n_items = torch.as_tensor(num_items, dtype=torch.float32)
    n_items = torch.where(n_items > 0, n_items, 1.0)  # nothing to normalise: the (zero) sum stays zero
    n_kd = torch.as_tensor(kd_rows.numel() if num_distilled is None else num_distilled, dtype=torch.float32)
    kl = kl_to_targets(logits[kd_rows], targets) if kd_rows.numel() else logits.new_zeros(0, dtype=torch.float32)
    kd = targets.alpha * targets.tau.square() * kl if kd_rows.numel() else kl
    loss = weighted.sum() / n_items + kd.sum() / n_kd.clamp(min=1)
    return loss, {"ce_sum": ce.sum().detach(), "kl_sum": kl.sum().detach(), "kd_sum": kd.sum().detach()}
