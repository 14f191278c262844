"""DynSDPB: dynamic self-distillation from the previous mini-batch (losses, schedules, sampler, store, trainers for
causal LMs and sequence classifiers).

The exported names are imported on first use (PEP 562): every module here needs torch, and most need TRL, which
take seconds to import; ``import dynsdpb_selfplay.distill`` alone loads none of them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import lazy_exports

# public name -> submodule that defines it, imported by ``__getattr__`` on first access.
_LAZY = {
    "DistillationArguments": ".config",
    "DynSDPBClassificationConfig": ".classification",
    "DynSDPBClassificationTrainer": ".classification",
    "DynSDPBConfig": ".config",
    "DynSDPBTrainer": ".trainer",
    "DynamicSchedule": ".schedules",
    "OverlapSampler": ".sampler",
    "Schedule": ".schedules",
    "StaticSchedule": ".schedules",
    "TargetStore": ".store",
    "Targets": ".losses",
    "TeacherStats": ".losses",
    "attach_dynsdpb": ".trainer",
    "build_targets": ".losses",
    "distillation_loss": ".losses",
    "kl_to_targets": ".losses",
    "make_schedule": ".schedules",
    "teacher_stats": ".losses",
}

__all__ = [
    "DistillationArguments",
    "DynSDPBClassificationConfig",
    "DynSDPBClassificationTrainer",
    "DynSDPBConfig",
    "DynSDPBTrainer",
    "DynamicSchedule",
    "OverlapSampler",
    "Schedule",
    "StaticSchedule",
    "TargetStore",
    "Targets",
    "TeacherStats",
    "attach_dynsdpb",
    "build_targets",
    "distillation_loss",
    "kl_to_targets",
    "make_schedule",
    "teacher_stats",
]

if TYPE_CHECKING:
    from .classification import DynSDPBClassificationConfig, DynSDPBClassificationTrainer
    from .config import DistillationArguments, DynSDPBConfig
    from .losses import Targets, TeacherStats, build_targets, distillation_loss, kl_to_targets, teacher_stats
    from .sampler import OverlapSampler
    from .schedules import DynamicSchedule, Schedule, StaticSchedule, make_schedule
    from .store import TargetStore
    from .trainer import DynSDPBTrainer, attach_dynsdpb


__getattr__, __dir__ = lazy_exports(__name__, _LAZY, globals())
