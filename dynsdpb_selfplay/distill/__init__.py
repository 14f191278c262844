"""DynSDPB: dynamic self-distillation from the previous mini-batch (losses, schedules, sampler, store, trainers for
causal LMs and sequence classifiers)."""

from .classification import DynSDPBClassificationConfig, DynSDPBClassificationTrainer
from .config import DistillationArguments, DynSDPBConfig
from .losses import Targets, TeacherStats, build_targets, distillation_loss, kl_to_targets, teacher_stats
from .sampler import OverlapSampler
from .schedules import DynamicSchedule, Schedule, StaticSchedule, make_schedule
from .store import TargetStore
from .trainer import DynSDPBTrainer, attach_dynsdpb

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
