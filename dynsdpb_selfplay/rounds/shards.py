"""Generation over several independent engine processes: shard ``k`` of ``n`` generates chunks ``i % n == k``.

Each shard is a separate process with its own engine (on its own GPU when there are at least ``n``), writing its
chunk files into the round's ``generations/`` folder; the orchestrator, which holds the run lock, waits for all of
them and then merges the chunk files in chunk order. Chunk ``i`` depends only on its questions and its seed, so the
merged data are the same for any shard count, and a failed or killed shard loses nothing that was saved: resuming
regenerates only the missing chunks.

    python -m dynsdpb_selfplay.rounds.shards RUN_DIR ROUND WEIGHTS SHARD NUM_SHARDS    (started by run_shards)
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from ..engines.lifetime import guarded_children

__all__ = ["run_shards"]


def run_shards(run_dir: Path, round_index: int, weights: str, shards: int) -> None:
    """Start ``shards`` generation processes for round ``round_index`` and wait for all of them."""
    import torch

    gpus = torch.cuda.device_count()
    procs = []
    for k in range(shards):
        env = dict(os.environ)
        if gpus >= shards:
            env["CUDA_VISIBLE_DEVICES"] = str(k)
        cmd = [sys.executable, "-m", __name__, str(run_dir), str(round_index), weights, str(k), str(shards)]
        with guarded_children():  # a shard (and its engine) ends with the run, even a SIGKILLed one
            procs.append(subprocess.Popen(cmd, env=env))
    codes = [p.wait() for p in procs]
    failed = [k for k, code in enumerate(codes) if code != 0]
    if failed:
        raise RuntimeError(
            f"generation shard(s) {failed} of {shards} failed (exit codes {[codes[k] for k in failed]}); the chunks "
            f"they saved are kept: `dynsdpb run --resume {run_dir}` generates only the missing ones"
        )


def _main(run_dir: str, round_index: str, weights: str, shard: str, shards: str) -> None:
    from ..engines import make_engine
    from ..faults import in_phase
    from ..tasks import get_task
    from .config import from_dict
    from .generation import generate_round
    from .rundir import RunDir

    # No lock: the orchestrator that started this process holds it; shards write disjoint chunk files.
    folder = RunDir(run_dir)
    cfg = from_dict(folder.config())
    task = get_task(cfg.task.name, **cfg.task.options)
    r = int(round_index)
    with make_engine(weights, cfg.engine) as engine, in_phase(f"round_{r}/generate"):
        generate_round(
            cfg,
            task,
            task.get_format(name=cfg.task.format),
            r,
            folder.round(r) / "generations",
            engine,
            shard=(int(shard), int(shards)),
        )


if __name__ == "__main__":
    _main(*sys.argv[1:6])
