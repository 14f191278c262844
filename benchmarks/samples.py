"""Per-sample records of a study's runs, and the seed x item bootstrap they allow.

A study's summary keeps one accuracy per (run, epoch, split); which questions a run got right is lost there, so
nothing can say whether two arms differ on the same questions or on different ones, or how much of an interval is
the choice of test questions. Every run therefore also writes, after each epoch it scores, one row per question:
``{"epoch", "split", "id", "output", "answer", "strict_answer", "flexible", "strict", "tokens", "truncated"}``,
gzipped JSON lines in ``<out>.samples/<regime>_<arm>_seed<seed>.jsonl.gz`` beside the result JSON (tracked with it,
so a study continued on another machine keeps them), written before the run's record enters ``runs.jsonl``; the
record names its file under ``"samples"``.

:func:`paired_bootstrap` reads two arms' files and bootstraps their paired difference over seeds *and* test
questions (:func:`dynsdpb_selfplay.stats.bootstrap_ci`): ``table[s][i] = correct_A(s, i) - correct_B(s, i)``.
"""

from __future__ import annotations

import gzip
import json
import os
from functools import lru_cache
from pathlib import Path

from dynsdpb_selfplay.stats import bootstrap_ci

__all__ = ["bootstrap_text", "paired_bootstrap", "read_samples", "sample_rows", "samples_dir", "write_samples"]


def samples_dir(out: str | None, work_dir: Path) -> Path:
    """Where a study's per-sample files go: ``<out without .json>.samples/`` beside the result, else the work dir."""
    return Path(out).with_suffix(".samples") if out else Path(work_dir) / "samples"


def sample_rows(records: list[dict], epoch: int, split_of) -> list[dict]:
    """The compact rows of one scoring's ``evaluate`` records; ``split_of(id)`` names each question's split."""
    return [
        {
            "epoch": epoch,
            "split": split_of(r["id"]),
            "id": r["id"],
            "output": r["output"],
            "answer": r["flexible_answer"],
            "strict_answer": r["strict_answer"],
            "flexible": bool(r["flexible_correct"]),
            "strict": bool(r["strict_correct"]),
            "tokens": r["output_tokens"],
            "truncated": r["finish_reason"] == "length",
        }
        for r in records
    ]


def write_samples(path: Path, rows: list[dict]) -> str:
    """Write ``rows`` to ``path`` (gzipped JSON lines) through a temporary file; returns the path as given."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with gzip.open(tmp, "wt", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    os.replace(tmp, path)
    return str(path)


def read_samples(path: str | Path) -> list[dict]:
    """The rows of a per-sample file."""
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


@lru_cache(maxsize=256)
def _cached_rows(path: str, mtime_ns: int) -> tuple[dict, ...]:
    # A study re-summarizes after every run, each arm against each baseline: read each file once per version of it.
    return tuple(read_samples(path))


def _correct_by_id(run: dict, epoch: int, metric: str) -> dict | None:
    path = run.get("samples")
    if not path or not Path(path).is_file():
        return None
    rows = _cached_rows(str(path), Path(path).stat().st_mtime_ns)
    return {r["id"]: float(r[metric]) for r in rows if r["epoch"] == epoch and r["split"] == "test"}


def paired_bootstrap(pairs: list[tuple[dict, dict, int, int]], metric: str, resamples: int = 2000) -> dict | None:
    """Seed x item bootstrap of arm A minus arm B on the test questions. ``pairs``: ``(run_a, run_b, epoch_a,
    epoch_b)`` per seed (the epoch each is read at). ``None`` unless every run has its per-sample file and the seeds
    share their questions. Returns ``{"mean", "low", "high", "seeds", "items"}`` (fractions, 95% percentile)."""
    table = []
    for run_a, run_b, epoch_a, epoch_b in pairs:
        a, b = _correct_by_id(run_a, epoch_a, metric), _correct_by_id(run_b, epoch_b, metric)
        if a is None or b is None or set(a) != set(b) or not a:
            return None
        table.append([a[i] - b[i] for i in sorted(a)])
    if len(table) < 2 or any(len(row) != len(table[0]) for row in table):
        return None
    mean, low, high = bootstrap_ci(table, resamples=resamples)
    return {"mean": mean, "low": low, "high": high, "seeds": len(table), "items": len(table[0])}


def bootstrap_text(b: dict) -> str:
    """A :func:`paired_bootstrap` result in points: ``3.0 [-1.2, 7.0] (10 seeds x 200 questions)``."""
    return (
        f"{100 * b['mean']:.1f} [{100 * b['low']:.1f}, {100 * b['high']:.1f}] "
        f"({b['seeds']} seeds x {b['items']} questions)"
    )
