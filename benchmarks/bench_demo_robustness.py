"""Does the demo learn on this machine whatever the seed and the number format? (issue 30)

Runs ``pipelines/configs/demo.yaml`` once per seed with ``auto`` number formats, and once per seed with the other
format forced where this CPU computes it natively (fp32 engine and training on a bf16 machine; on an AVX2-only one
bf16 would be emulated ~20x slower, so that half is skipped and the result says so). Each run is a resumable run
folder under ``--work-dir``; a rerun reads finished runs back. Writes, per run and round: strict and flexible test
accuracy with 95% intervals, mean evaluation output tokens, kept rows and their mean length, the share of the round's
update the engine served, and whether selection kept the round; and the wall time of each run. The runs of an
existing ``--out`` from the same kind of processor that this invocation does not redo are kept, so the table can be
completed a few runs at a time.

    .venv/bin/python -m benchmarks.bench_demo_robustness --seeds 0 1 2 --out benchmarks/results/demo_robustness.json
"""

from __future__ import annotations

import argparse
import json
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from benchmarks.common import run_pipeline, save  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FORMATS = {"auto": {}, "fp32": {"engine": {"dtype": "float32"}, "training": {"bf16": False}}}


def demo_config(seed: int, fmt: str, sets: tuple[str, ...] = ()) -> dict:
    """The demo's config for one run: its seed, number format and ``--set`` overrides (``dynsdpb run``'s syntax)."""
    import yaml

    from dynsdpb_selfplay.rounds.schema import set_dotted

    with open(os.path.join(ROOT, "pipelines/configs/demo.yaml")) as f:
        cfg = yaml.safe_load(f)
    cfg["seed"] = seed
    for section, values in FORMATS[fmt].items():
        cfg[section] = {**cfg[section], **values}
    for assignment in sets:
        set_dotted(cfg, assignment)
    cfg.pop("run_dir", None)
    return cfg


def rounds_of(state: dict) -> list[dict]:
    """One row per round of a finished run's ``state.json``."""
    info, out = state["info"], []
    r = 0
    while f"round_{r}/eval" in info:
        ev, row = info[f"round_{r}/eval"], {"round": r}
        for kind in ("strict", "flexible"):
            row[kind], row[f"{kind}_ci95"] = ev[f"{kind}_accuracy"], ev[f"{kind}_ci95"]
        row["eval_output_tokens"] = ev.get("mean_output_tokens")
        f, h, s = (info.get(f"round_{r}/{p}", {}) for p in ("filter", "handoff", "select"))
        row.update(
            kept_rows=f.get("rows"),
            kept_tokens=f.get("kept_tokens_mean"),
            answer_line_appended=f.get("answer_line_appended"),
            served=h.get("handoff"),
            served_share=h.get("served_share"),
            nearest_share=h.get("nearest_share"),
            selected=s.get("kept"),
        )
        out.append(row)
        r += 1
    return out


def previous_runs(out: str | None, cpu: dict, redo: set[tuple[str, int]]) -> tuple[list[dict], list[dict]]:
    """``(runs, invocations)`` of an existing ``--out`` result to keep: its runs that this invocation does not redo
    (``(format, seed)`` in ``redo``) and the arguments of the invocations that made them. A result measured on another
    kind of processor is not mixed with this one's: that raises ``SystemExit`` naming it."""
    if not out or not os.path.isfile(out):
        return [], []
    with open(out) as f:
        old = json.load(f)
    if old.get("benchmark") != "demo_robustness":
        raise SystemExit(f"--out {out}: not a demo_robustness result; give another path")
    theirs = old.get("machine", {}).get("cpu", {})
    keys = ("capability", "native_bf16", "amx_bf16", "model")
    if any(theirs.get(k) != cpu.get(k) for k in keys):
        mine = ", ".join(f"{k}={cpu.get(k)}" for k in keys)
        there = ", ".join(f"{k}={theirs.get(k)}" for k in keys)
        raise SystemExit(f"--out {out}: measured on another processor ({there}; this one: {mine}); give another path")
    config = old.get("config") or []
    if isinstance(config, dict):  # one invocation's arguments, or several keyed by format (merged by hand before)
        config = [config] if "seeds" in config else list(config.values())
    return [r for r in old.get("runs", []) if (r["format"], r["seed"]) not in redo], config


def table(runs: list[dict]) -> str:
    pct = lambda x: f"{100 * x:.1f}".removesuffix(".0") + "%"  # noqa: E731 (200 problems: half points)
    lines = [
        "| format | seed | flexible by round | strict by round | eval output tokens | update served (nearest) "
        "| rounds kept | wall |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for run in runs:
        rs = run["rounds"]
        share = ", ".join(f"{pct(r['served_share'])} ({pct(r['nearest_share'])})" for r in rs[1:] if r["served"])
        kept = ", ".join("yes" if r["selected"] else "no" for r in rs[1:] if r["selected"] is not None)
        lines.append(
            f"| {run['format']} ({run['dtype']}) | {run['seed']} | {' → '.join(pct(r['flexible']) for r in rs)} "
            f"| {' → '.join(pct(r['strict']) for r in rs)} "
            f"| {' → '.join(format(r['eval_output_tokens'], '.0f') for r in rs)} | {share or '-'} | {kept or '-'} "
            f"| {run['wall_s'] / 60:.1f} min |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--formats", nargs="+", default=list(FORMATS), choices=list(FORMATS))
    p.add_argument("--work-dir", default="runs/demo_robustness")
    p.add_argument("--out", help="JSON result path (a .md table beside it)")
    p.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE", help="demo config overrides, as `dynsdpb run`")
    args = p.parse_args()

    from dynsdpb_selfplay.precision import cpu_features, resolve_dtype

    cpu = cpu_features()
    formats = [f for f in args.formats if f == "auto" or cpu["native_bf16"]]
    skipped = [f for f in args.formats if f not in formats]
    if skipped:
        print(f"skipped {skipped}: auto is already fp32 on this CPU (no native bf16)", flush=True)
    kept, invocations = previous_runs(args.out, cpu, {(f, s) for f in formats for s in args.seeds})
    if kept:
        print(f"keeping {len(kept)} runs of {args.out} that this invocation does not redo", flush=True)
    order = list(FORMATS)
    runs: list[dict] = []
    for fmt in formats:
        for seed in args.seeds:
            run_dir = os.path.join(args.work_dir, f"{fmt}_seed{seed}")
            start = time.perf_counter()
            config = lambda s=seed, f=fmt: demo_config(s, f, tuple(args.set))  # noqa: E731
            state = run_pipeline(run_dir, config, f"demo {fmt} seed {seed}", "robustness")
            info = state["info"]
            wall = sum(v.get("seconds", 0.0) for v in info.values())
            dtype = "float32" if fmt == "fp32" else resolve_dtype("auto")
            runs.append(
                {
                    "format": fmt,
                    "dtype": dtype,
                    "seed": seed,
                    "wall_s": wall,
                    "rounds": rounds_of(state),
                    "this_invocation_s": time.perf_counter() - start,
                }
            )
            every = sorted([*kept, *runs], key=lambda r: (order.index(r["format"]), r["seed"]))
            config = [*invocations, vars(args)]
            result = {"benchmark": "demo_robustness", "config": config, "skipped_formats": skipped, "runs": every}
            md = table(every)
            print(md, flush=True)
            save(result, args.out)
            if args.out:
                with open(os.path.splitext(args.out)[0] + ".md", "w") as f:
                    f.write(md)


if __name__ == "__main__":
    main()
