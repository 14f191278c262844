"""dynsdpb-selfplay: small language models that improve themselves.

DynSDPB (dynamic self-distillation from the previous mini-batch) for TRL's SFTTrainer:

    from dynsdpb_selfplay import attach_dynsdpb
    attach_dynsdpb(trainer)  # or with DistillationArguments fields: distillation_temperature=2.0, ...

The exported names are imported on first use (PEP 562), so that ``import dynsdpb_selfplay`` and the ``dynsdpb``
command start without loading torch, transformers or TRL.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._compat import check_versions
from ._lazy import lazy_exports

check_versions()

__version__ = "0.1.0"

# public name -> submodule that defines it, imported by ``__getattr__`` on first access.
_LAZY = {
    "DistillationArguments": ".distill.config",
    "DynSDPBClassificationConfig": ".distill.classification",
    "DynSDPBClassificationTrainer": ".distill.classification",
    "DynSDPBConfig": ".distill.config",
    "DynSDPBTrainer": ".distill.trainer",
    "attach_dynsdpb": ".distill.trainer",
}

__all__ = [
    "DistillationArguments",
    "DynSDPBClassificationConfig",
    "DynSDPBClassificationTrainer",
    "DynSDPBConfig",
    "DynSDPBTrainer",
    "__version__",
    "attach_dynsdpb",
]

if TYPE_CHECKING:
    from .distill.classification import DynSDPBClassificationConfig, DynSDPBClassificationTrainer
    from .distill.config import DistillationArguments, DynSDPBConfig
    from .distill.trainer import DynSDPBTrainer, attach_dynsdpb


__getattr__, __dir__ = lazy_exports(__name__, _LAZY, globals())
