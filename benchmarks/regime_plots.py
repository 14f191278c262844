"""Tables and plots of a regime study's summary (``regime_stats.summarize_regime`` per regime)."""

from __future__ import annotations

from benchmarks.common import pct
from benchmarks.samples import bootstrap_text

__all__ = ["markdown", "plot"]


def _diff(s: dict | None) -> str:
    if not s:
        return "-"
    sign = " **>0**" if s["mean"] - s["ci95"] > 0 else (" **<0**" if s["mean"] + s["ci95"] < 0 else "")
    return f"{pct(s)} ({s['wins']}/{s['n']}){sign}"


def markdown(summary: dict, bench: dict) -> str:
    """One table per regime: final and validation-selected test metric per arm, and paired differences to the
    baselines (mean ± 95% t-interval in points; wins/seeds; bold where the interval excludes 0)."""
    metric = summary["metric"]
    baselines = [b for b in bench.get("baselines", ["sft", "repeat"])]
    base = summary.get("base")
    lines = []
    kinds = summary.get("machines") or []
    if len(kinds) > 1:
        mixed = "; ".join(f"{k['runs']} runs on {k['cpu']} with bf16={k['bf16']}" for k in kinds)
        split = summary.get("seeds_across_machines")
        if split is None or split:  # (None: a summary from before pairs were checked)
            where = f" ({', '.join(split)})" if split else ""
            lines += [
                f"**Warning: this study mixes machines or number formats ({mixed}), and the arms of some seeds{where} "
                "ran on different ones: their paired differences compare more than the arm. Rerun those seeds' runs "
                "on one machine, or give each machine kind its own --work-dir.**",
                "",
            ]
        else:
            lines += [
                f"Runs come from more than one machine kind or number format ({mixed}). Every seed's arms ran on "
                "one of them, so each paired difference compares the arms alone; the per-arm means mix machines.",
                "",
            ]
    if base:
        lines += [
            f"Base model before training: test {100 * base['test'][metric]:.1f}%, validation "
            f"{100 * base['val'][metric]:.1f}% ({metric}).",
            "",
        ]
    head = "| arm | seeds | final | val-selected | epochs chosen |"
    rule = "|---|---|---|---|---|"
    for b in baselines:
        head += f" final − {b} | val-sel − {b} |"
        rule += "---|---|"
    for label, arms in summary["regimes"].items():
        lines += [
            f"**{label}** (test {metric} x100, mean ± 95% t-interval over seeds; differences are "
            "paired by seed, (wins/seeds))",
            "",
            head,
            rule,
        ]
        for arm, c in arms.items():
            row = (
                f"| {arm} | {len(c['seeds'])} | {pct(c['final'])} | {pct(c['val_selected'])} | "
                f"{','.join(map(str, c['selected_epochs']))} |"
            )
            for b in baselines:
                row += f" {_diff(c.get(f'minus_{b}_final'))} | {_diff(c.get(f'minus_{b}_val'))} |"
            lines.append(row)
        lines += ["", *_per_epoch_differences(arms, baselines), *_per_seed_table(arms), ""]
    if summary.get("primary"):
        lines = [*primary_markdown(summary["primary"]), *lines]
    return "\n".join(lines)


def _per_epoch_differences(arms: dict, baselines: list[str]) -> list[str]:
    """One line per (arm, baseline): the paired test difference after each epoch (bold where it excludes 0)."""
    lines = [
        f"- {arm} − {b}, paired, after each epoch: " + ", ".join(_diff(d) for d in c[f"minus_{b}_curve"])
        for arm, c in arms.items()
        for b in baselines
        if c.get(f"minus_{b}_curve")
    ]
    lines += [
        f"- {arm} − {b}, {'final' if how == 'final' else 'validation-selected'}, seed x item bootstrap: "
        + bootstrap_text(boot)
        for arm, c in arms.items()
        for b in baselines
        for how in ("final", "val")
        if (boot := c.get(f"minus_{b}_{how}_bootstrap"))
    ]
    return [*lines, ""] if lines else []


def primary_markdown(primary: dict) -> list[str]:
    """The pre-declared primary outcome per regime: arm − each control, t-interval, p, Holm-adjusted p."""
    lines = []
    for label, out in primary.items():
        how = "final epoch" if out["how"] == "final" else "validation-selected epoch"
        lines += [
            f"**Primary outcome, {label}**: {out['arm']} − each control at the {how}, paired by seed (x100); "
            f"p from the paired t-test, Holm-adjusted over the controls (alpha {out['alpha']})",
            "",
            "| control | difference (wins/seeds) | seed x item bootstrap | p | Holm p | below alpha |",
            "|---|---|---|---|---|---|",
        ]
        if not out["versus"]:
            lines.append("| (no paired runs of the controls yet) | | | | | |")
        for control, d in out["versus"].items():
            boot = bootstrap_text(d["bootstrap"]) if d.get("bootstrap") else "-"
            lines.append(
                f"| {control} | {_diff(d)} | {boot} | {d['p']:.3g} | {d['p_holm']:.3g} | "
                f"{'yes' if d['below_alpha'] else 'no'} |"
            )
        lines.append("")
    return lines


def _per_seed_table(arms: dict) -> list[str]:
    """Each seed's test curve per arm, the validation-selected epoch in brackets: the runs behind the means."""
    lines = ["| seed | arm | test after each epoch (x100; [validation-selected]) |", "|---|---|---|"]
    runs = sorted((r["seed"], order, arm, r) for order, (arm, c) in enumerate(arms.items()) for r in c["per_seed"])
    for seed, _, arm, r in runs:
        cells = [
            f"[{100 * v:.0f}]" if i + 1 == r["selected_epoch"] else f"{100 * v:.0f}" for i, v in enumerate(r["test"])
        ]
        lines.append(f"| {seed} | {arm} | {' '.join(cells)} |")
    return lines


def plot(summary: dict, path: str) -> None:
    """Test metric against epoch per arm (mean over seeds, shaded 95% interval), one panel per regime."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    regimes = list(summary["regimes"])
    if not regimes:  # only the base model is scored yet
        return
    cols = min(len(regimes), 4)
    rows = -(-len(regimes) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.4 * rows), squeeze=False)
    base = summary.get("base")
    metric = summary["metric"]
    for ax, label in zip(axes.flat, regimes, strict=False):
        for arm, c in summary["regimes"][label].items():
            xs = list(range(1, len(c["curve"]) + 1))
            mean = [100 * s["mean"] for s in c["curve"]]
            half = [0.0 if s["ci95"] != s["ci95"] else 100 * s["ci95"] for s in c["curve"]]
            if base:
                xs, mean, half = [0, *xs], [100 * base["test"][metric], *mean], [0.0, *half]
            (line,) = ax.plot(xs, mean, marker="o", ms=3, lw=1.2, label=arm)
            low = [m - h for m, h in zip(mean, half, strict=True)]
            high = [m + h for m, h in zip(mean, half, strict=True)]
            ax.fill_between(xs, low, high, color=line.get_color(), alpha=0.12)
        ax.set_title(label, fontsize=9)
        ax.set_xlabel("epoch (2N sample visits; equal steps for every arm)", fontsize=8)
        ax.set_ylabel(f"test {metric if 'accuracy' in metric else metric + ' accuracy'}, %", fontsize=8)
        ax.set_ylim(bottom=0)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(regimes) :]:
        ax.set_visible(False)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
