"""Self-improvement rounds: generate -> verify/filter -> train (DynSDPB) -> evaluate, resumable, with a report."""

from .config import RunConfig, load_config
from .orchestrator import Orchestrator, run
from .rundir import RunDir

__all__ = ["Orchestrator", "RunConfig", "RunDir", "load_config", "run"]
