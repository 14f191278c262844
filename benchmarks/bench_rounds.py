"""Round overhead: the share of each round's wall time that is neither generation nor training.

Reads a finished ``dynsdpb run`` folder (its ``state.json`` records, per phase, the wall time and the parts spent
in the engine's ``generate``, in ``Trainer.train``, in starting the engine and in moving new weights into it) and
splits each round into: generation (engine generate calls of the generate and eval phases), training
(``Trainer.train``), engine start (once per run), and overhead: everything else (filtering, scoring, reading and
writing files, loading the model for training, merging and saving the round's weights, the weight hand-off to the
engine, the report). Target: overhead under 2% of a round's wall time.

    make demo && python -m benchmarks.bench_rounds runs/demo --out benchmarks/results/rounds_demo.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from benchmarks.common import save  # noqa: E402

PHASES = ("generate", "filter", "train", "handoff", "eval", "validate", "select")


def rounds_in(info: dict) -> list[int]:
    """The round numbers (0 = the start model's evaluation) with a phase in ``state.json``'s ``info``."""
    return sorted({int(k.split("/")[0].removeprefix("round_")) for k in info if k.startswith("round_")})


REVIEW_KEYS = ("first_accuracy", "revised_accuracy", "wrong_to_right", "right_to_wrong")


def rounds_summary(info: dict) -> list[dict]:
    """Per round of a finished run (``state.json``'s ``info``): held-out accuracies, rows kept and trained on,
    optimizer steps, and (from round 1) the wall-time breakdown."""
    out = []
    for r in rounds_in(info):
        ev, tr = info.get(f"round_{r}/eval", {}), info.get(f"round_{r}/train", {})
        out.append(
            {
                "round": r,
                **{k: ev.get(k) for k in ("strict_accuracy", "flexible_accuracy", "n_samples", "flexible_ci95")},
                **{k: ev[k] for k in REVIEW_KEYS if k in ev},  # a self_correction run's review turn
                "train_rows": tr.get("rows"),
                "steps": tr.get("steps"),
                "kept_rows": info.get(f"round_{r}/filter", {}).get("rows"),
                **({"time": round_breakdown(info, r)} if r else {}),
            }
        )
    return out


def round_breakdown(info: dict, r: int) -> dict:
    """Seconds per category for round ``r`` from the phase infos of ``state.json``."""
    phases = {p: info.get(f"round_{r}/{p}", {}) for p in PHASES}
    wall = sum(p.get("seconds", 0.0) for p in phases.values())
    generation = sum(p.get("engine_generate_s", 0.0) for p in phases.values())
    training = phases["train"].get("train_s", 0.0)
    start = sum(p.get("engine_start_s", 0.0) for p in phases.values())
    handoff = sum(p.get("weights_handoff_s", 0.0) for p in phases.values())
    tokens = sum(p.get("generated_tokens", 0) for p in phases.values())
    overhead = wall - generation - training - start
    return {
        "round": r,
        "wall_s": wall,
        "generation_s": generation,
        "training_s": training,
        "engine_start_s": start,
        "weights_handoff_s": handoff,
        "generated_tokens": tokens,
        "generation_tokens_per_s": tokens / generation if generation else None,
        "overhead_s": overhead,
        "overhead_share": overhead / wall if wall else None,
        "per_phase_s": {p: v.get("seconds", 0.0) for p, v in phases.items()},
    }


def plot(rows: list[dict], path: str) -> None:
    """One stacked bar per round: where its wall time went, with the overhead share written on top."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    parts = (
        ("generation_s", "generation"),
        ("training_s", "training"),
        ("engine_start_s", "engine start"),
        ("overhead_s", "overhead"),
    )
    fig, ax = plt.subplots(figsize=(5, 3.5))
    bottom = [0.0] * len(rows)
    for key, label in parts:
        values = [r[key] for r in rows]
        ax.bar([f"round {r['round']}" for r in rows], values, bottom=bottom, label=label)
        bottom = [b + v for b, v in zip(bottom, values, strict=True)]
    for i, r in enumerate(rows):
        ax.annotate(f"overhead {100 * r['overhead_share']:.2f}%", (i, bottom[i]), ha="center", va="bottom", fontsize=8)
    ax.set_ylabel("seconds")
    ax.set_title("Where a round's wall time goes", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run_dir", help="a finished `dynsdpb run` folder")
    p.add_argument("--out", help="JSON result path (a PNG plot is written beside it)")
    args = p.parse_args()
    state = json.loads((Path(args.run_dir) / "state.json").read_text())
    info = state["info"]
    rounds = [r for r in rounds_in(info) if r > 0]
    if not any("engine_generate_s" in v for v in info.values()):
        sys.exit(f"{args.run_dir}: no engine timings in state.json (run made before they were recorded?)")
    rows = [round_breakdown(info, r) for r in rounds]
    for row in rows:
        print(
            f"round {row['round']}: wall {row['wall_s']:.1f} s = generation {row['generation_s']:.1f} + training "
            f"{row['training_s']:.1f} + engine start {row['engine_start_s']:.1f} + overhead {row['overhead_s']:.2f} "
            f"({100 * row['overhead_share']:.2f}%; weight hand-off {row['weights_handoff_s']:.2f} s)"
        )
    config = (Path(args.run_dir) / "config.yaml").read_text()
    save({"benchmark": "rounds", "run_dir": args.run_dir, "config": config, "rounds": rows}, args.out)
    if args.out:
        plot(rows, os.path.splitext(args.out)[0] + ".png")


if __name__ == "__main__":
    main()
