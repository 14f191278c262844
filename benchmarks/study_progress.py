"""Where a study stands, without reading its outcomes: which of its planned runs are finished, which are missing and
about how long they will take (``--status``), and a line before each run while it trains.

A pre-declared study is read once, when all its runs exist; until then one needs its progress, not its numbers.
A study module lists its runs with ``planned(config, args)``: one dict of key fields per run, in the order it runs
them (``{"regime": "lora-32", "arm": "static", "seed": 7}``); a record of ``runs.jsonl`` finishes the planned run whose
key fields it has.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

from benchmarks.common import read_runs

PACE_KEYS = ("wall_s", "seconds")  # a record's time: the whole run, or (older regime records) its training + scoring
SCORING_ONLY_ARM = "base"  # the untrained model's scores: minutes, not a trained run's pace


def trains(run: dict) -> bool:
    """Whether a planned run (or its record) trains a model; the base model's scoring does not."""
    return run.get("arm") != SCORING_ONLY_ARM


def run_label(run: dict) -> str:
    """``lora-32 static seed 7`` for ``{"regime": "lora-32", "arm": "static", "seed": 7}``."""
    return " ".join(f"seed {v}" if k == "seed" else str(v) for k, v in run.items() if v != "-")


def _key(run: dict, fields: tuple[str, ...]) -> tuple:
    return tuple(run.get(k) for k in fields)


def missing(planned: list[dict], runs: list[dict]) -> list[dict]:
    """The planned runs that no record of ``runs`` finishes, in plan order (every planned run has the same fields)."""
    fields = tuple(planned[0]) if planned else ()
    done = {_key(r, fields) for r in runs}
    return [p for p in planned if _key(p, fields) not in done]


def run_seconds(record: dict) -> float | None:
    return next((record[k] for k in PACE_KEYS if isinstance(record.get(k), int | float)), None)


def duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.0f} min" if seconds < 5400 else f"{seconds / 3600:.1f} h"


def status(name: str, planned: list[dict], log_path: Path) -> str:
    """What ``--status`` prints: finished and missing runs, and the time left for the missing trained runs at the
    median pace of the runs this study trained itself (reused runs, the base model's scoring and runs without a
    recorded time do not count)."""
    runs = read_runs(log_path)
    todo = missing(planned, runs)
    finished = [p for p in planned if p not in todo]
    fields = tuple(planned[0]) if planned else ()
    mine = {_key(p, fields) for p in finished}
    records = [r for r in runs if _key(r, fields) in mine]
    reused = sum(1 for r in records if r.get("reused_from"))
    lines = [
        f"{name}: {len(finished)} of {len(planned)} planned runs finished" + (f" ({reused} reused)" if reused else "")
    ]
    if todo:
        shown = ", ".join(run_label(p) for p in todo[:6]) + (f", ... ({len(todo) - 6} more)" if len(todo) > 6 else "")
        lines.append(f"missing, in the order they run: {shown}")
        pace = [s for r in records if trains(r) and not r.get("reused_from") and (s := run_seconds(r)) is not None]
        if pace:
            median = statistics.median(pace)
            lines.append(
                f"at the median pace of its {len(pace)} runs trained so far ({duration(median)} a run): about "
                f"{duration(median * sum(map(trains, todo)))} left on a machine like theirs"
            )
    else:
        lines.append("every planned run is finished: the result can be read")
    return "\n".join(lines)


class Progress:
    """One line before each run: ``[bench_regimes] run 3/26: lora-32 static seed 7 (about 3.1 h left)``, the time
    left for the trained runs still to start, at the mean pace of those finished in this invocation (the base
    model's scoring takes minutes and does not set the pace). ``todo`` is the planned runs in the order they start;
    :meth:`done` returns the run's wall seconds (``wall_s``)."""

    def __init__(self, name: str, todo: list[dict]) -> None:
        self.name, self.todo, self.count, self.seconds, self._start = name, todo, 0, [], None

    def start(self, what: str) -> None:
        self.count += 1
        left = ""
        if self.seconds:
            to_train = sum(map(trains, self.todo[self.count - 1 :]))
            left = f" (about {duration(statistics.mean(self.seconds) * to_train)} left)"
        print(f"[{self.name}] run {self.count}/{len(self.todo)}: {what}{left}", flush=True)
        self._start = time.perf_counter()

    def done(self) -> float:
        seconds = time.perf_counter() - self._start
        if trains(self.todo[self.count - 1]):
            self.seconds.append(seconds)
        return seconds
