"""dynsdpb-selfplay: small language models that improve themselves.

DynSDPB (dynamic self-distillation from the previous mini-batch) for TRL's SFTTrainer:

    from dynsdpb_selfplay import attach_dynsdpb
    attach_dynsdpb(trainer)  # or with DistillationArguments fields: distillation_temperature=2.0, ...
"""

from ._compat import check_versions

check_versions()

from .distill import (  # noqa: E402
    DistillationArguments,
    DynSDPBClassificationConfig,
    DynSDPBClassificationTrainer,
    DynSDPBConfig,
    DynSDPBTrainer,
    attach_dynsdpb,
)

__version__ = "0.1.0"
__all__ = [
    "DistillationArguments",
    "DynSDPBClassificationConfig",
    "DynSDPBClassificationTrainer",
    "DynSDPBConfig",
    "DynSDPBTrainer",
    "__version__",
    "attach_dynsdpb",
]
