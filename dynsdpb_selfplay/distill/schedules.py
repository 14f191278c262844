"""Per-token distillation weight ``alpha_i`` and temperature ``tau_i``: the "dynamic" part of DynSDPB.

A schedule maps the statistics of a stored prediction (:class:`~.losses.TeacherStats`, measured at temperature 1 when
the prediction is stored) to ``(alpha_i, tau_i)``. It sees only the stored prediction, so the same rule applies
whether it runs when the target is stored or when it is used, and it needs no extra forward pass.

``static`` (DLB)::

    alpha_i = alpha0,    tau_i = tau0

``dynamic`` (ours; the paper names the signals, not the formulas)::

    u_i     = H(p_i) / log V                        uncertainty, in [0, 1]
    m_i     = p_i(1) - p_i(2)                       discrimination (top-1 minus top-2 probability), in [0, 1]
    c_i     = 1 if argmax p_i == label_i else w     w = wrong_top1_weight, in [0, 1]
    alpha_i = alpha0 * (1 - u_i) * c_i
    tau_i   = tau_min + (tau0 - tau_min) * m_i

Why: an uncertain stored prediction (high entropy) is a poor teacher, and one whose top-1 is not the label teaches
the wrong ranking, so both get less weight. The temperature follows discrimination: a peaked prediction (large margin)
hides its ranking of the other tokens at ``tau = 1`` and is softened up to ``tau0`` to expose it, whereas a flat one
(small margin) is already soft, and softening it further over a large vocabulary turns it into near-uniform noise
(measured: at ``tau = 3`` the top-256 of a 49k vocabulary holds only ~15% of the mass), so it stays near ``tau_min``.
The ``tau_i^2`` factor of the loss keeps gradient scales comparable across temperatures.

Custom rules: any callable ``(stats: TeacherStats, alpha0: float, tau0: float) -> (alpha [n], tau [n])``, or a
subclass of :class:`Schedule`, can be passed wherever a schedule name is accepted.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .losses import TeacherStats

__all__ = ["DynamicSchedule", "Schedule", "StaticSchedule", "make_schedule"]


class Schedule:
    """Base class: ``schedule(stats) -> (alpha [n], tau [n])`` as fp32 tensors."""

    alpha0: float
    tau0: float

    def __call__(self, stats: TeacherStats) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError


@dataclass
class StaticSchedule(Schedule):
    """Fixed ``alpha`` and ``tau`` for every token (DLB)."""

    alpha0: float
    tau0: float

    def __call__(self, stats: TeacherStats) -> tuple[torch.Tensor, torch.Tensor]:
        ones = torch.ones_like(stats.entropy, dtype=torch.float32)
        return ones * self.alpha0, ones * self.tau0


@dataclass
class DynamicSchedule(Schedule):
    """Uncertainty-weighted ``alpha`` and discrimination-driven ``tau`` (equations in the module docstring). Its
    parameters are checked where they are set, in :class:`~.config.DistillationArguments`."""

    alpha0: float
    tau0: float
    tau_min: float
    wrong_top1_weight: float

    def __call__(self, stats: TeacherStats) -> tuple[torch.Tensor, torch.Tensor]:
        correct = torch.where(stats.top1_correct, 1.0, self.wrong_top1_weight)
        alpha = self.alpha0 * (1.0 - stats.entropy.float()) * correct
        tau = self.tau_min + (self.tau0 - self.tau_min) * stats.margin.float()
        return alpha, tau


class _CallableSchedule(Schedule):
    def __init__(self, fn, alpha0: float, tau0: float) -> None:
        self.fn, self.alpha0, self.tau0 = fn, alpha0, tau0

    def __call__(self, stats: TeacherStats) -> tuple[torch.Tensor, torch.Tensor]:
        alpha, tau = self.fn(stats, self.alpha0, self.tau0)
        return torch.as_tensor(alpha, dtype=torch.float32), torch.as_tensor(tau, dtype=torch.float32)


def make_schedule(args) -> Schedule:
    """The schedule that :class:`~.config.DistillationArguments` ``args`` describe: ``distillation_schedule`` is
    ``"static"``, ``"dynamic"``, a :class:`Schedule` (used as it is) or a callable ``(stats, alpha0, tau0)``."""
    schedule, alpha, tau = args.distillation_schedule, args.distillation_alpha, args.distillation_temperature
    if isinstance(schedule, Schedule):
        return schedule
    if schedule == "static":
        return StaticSchedule(alpha, tau)
    if schedule == "dynamic":
        return DynamicSchedule(alpha, tau, args.distillation_min_temperature, args.distillation_wrong_top1_weight)
    if callable(schedule):
        return _CallableSchedule(schedule, alpha, tau)
    raise ValueError(f"distillation_schedule must be 'static', 'dynamic' or a callable, got {schedule!r}")
