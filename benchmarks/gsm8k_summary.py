"""What :mod:`benchmarks.bench_gsm8k` reports: each run's training curve from its trainer log (per-step CE, KL, the
distillation term and alpha/tau) and its means, the per-task summary over seeds with paired differences to the
baselines, its markdown table and its figure."""

from __future__ import annotations

from pathlib import Path

# Paired baselines: sft at equal epochs, sft_2x at equal compute, repeat for distillation alone (same batches, alpha 0).
BASELINES = ("sft", "sft_2x", "repeat")
CURVE = {
    "loss": "loss",
    "ce": "dynsdpb/ce",
    "kl": "dynsdpb/kl",
    "kd": "dynsdpb/kd_loss",
    "alpha": "dynsdpb/alpha",
    "tau": "dynsdpb/temperature",
    "distilled": "dynsdpb/distilled_tokens",
}


def training_curve(trainer_dir: Path) -> dict:
    """Per-step ``loss`` and ``dynsdpb/*`` values from the round's saved trainer log (empty if there is none)."""
    from dynsdpb_selfplay.jsonl import read_jsonl
    from dynsdpb_selfplay.rounds.training import LOG_HISTORY

    path = Path(trainer_dir) / LOG_HISTORY
    if not path.is_file():
        return {}
    history = read_jsonl(path)
    steps = [h for h in history if "loss" in h and "step" in h]
    curve = {"step": [h["step"] for h in steps]}
    for name, key in CURVE.items():
        if any(key in h for h in steps):
            curve[name] = [h.get(key) for h in steps]
    return curve


def curve_means(curve: dict) -> dict:
    """Means over training; ``kd_over_ce`` is the distillation term per distilled token over the CE per token. KL,
    KD, alpha and tau average the steps that distilled (not the first, whose repeats have no stored targets yet);
    plain SFT's CE is its loss."""

    def mean(values):
        values = [v for v in values if v is not None]
        return sum(values) / len(values) if values else None

    distilled = curve.get("distilled") or [0] * len(curve.get("step", []))
    out = {"mean_ce": mean(curve.get("ce") or curve.get("loss") or []), "mean_kd": None}
    for name in ("kl", "kd", "alpha", "tau"):
        if name in curve:
            out[f"mean_{name}"] = mean(v for v, d in zip(curve[name], distilled, strict=False) if d)
    if out["mean_kd"] is not None and out["mean_ce"]:
        out["kd_over_ce"] = out["mean_kd"] / out["mean_ce"]
    return out


def summarize(runs: list[dict]) -> dict:
    """Per task and arm: mean and 95% t-interval over seeds; per arm the paired (same seed) difference of flexible
    accuracy to each baseline in :data:`BASELINES`."""
    from dynsdpb_selfplay.stats import paired_differences, t_summary

    runs = [{**r, **curve_means(r["curve"])} if r.get("curve") else r for r in runs]  # means by this version's rules
    out = {}
    for task in dict.fromkeys(r["task"] for r in runs):
        mine = [r for r in runs if r["task"] == task]
        by = {(r["arm"], r["seed"]): r for r in mine}
        out[task] = {}
        for arm in dict.fromkeys(r["arm"] for r in mine):
            rs = [r for r in mine if r["arm"] == arm]
            cell = {"seeds": len(rs)}
            for key in (
                "strict_accuracy",
                "flexible_accuracy",
                "steps",
                "train_s",
                "mean_ce",
                "mean_kl",
                "mean_kd",
                "mean_alpha",
                "mean_tau",
                "kd_over_ce",
            ):
                values = [r[key] for r in rs if r.get(key) is not None]
                if values:
                    cell[key] = t_summary(values)
            ours = {r["seed"]: r["flexible_accuracy"] for r in rs}
            for baseline in BASELINES:
                theirs = {s: r["flexible_accuracy"] for (a, s), r in by.items() if a == baseline}
                if arm not in ("base", baseline) and (diff := paired_differences(ours, theirs)):
                    cell[f"flexible_minus_{baseline}"] = diff
            out[task][arm] = cell
    return out


def markdown(summary: dict) -> str:
    def cell(s, key, scale=100.0, digits=1):
        if key not in s:
            return "-"
        m, h = s[key]["mean"] * scale, s[key]["ci95"] * scale
        return f"{m:.{digits}f}" if h != h else f"{m:.{digits}f} ± {h:.{digits}f}"

    lines = []
    for task, arms in summary.items():
        lines += [
            f"**{task}** (mean ± 95% t-interval over seeds; accuracy in %)",
            "",
            "| arm | seeds | strict | flexible | flexible − sft | flexible − sft_2x | flexible − repeat | "
            "steps | train s | KD/CE per token |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for arm, s in arms.items():
            lines.append(
                f"| {arm} | {s['seeds']} | {cell(s, 'strict_accuracy')} | {cell(s, 'flexible_accuracy')} | "
                f"{cell(s, 'flexible_minus_sft')} | {cell(s, 'flexible_minus_sft_2x')} | "
                f"{cell(s, 'flexible_minus_repeat')} | {cell(s, 'steps', 1, 0)} | "
                f"{cell(s, 'train_s', 1, 0)} | {cell(s, 'kd_over_ce', 1, 4)} |"
            )
        lines.append("")
    return "\n".join(lines)


def draw(summary: dict, runs: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = list(summary)
    fig, axes = plt.subplots(1, len(tasks) + 1, figsize=(4.5 * (len(tasks) + 1), 3.6))
    for ax, task in zip(axes, tasks, strict=False):
        arms = list(summary[task])
        acc = [summary[task][a]["flexible_accuracy"] for a in arms]
        errors = [0 if s["ci95"] != s["ci95"] else 100 * s["ci95"] for s in acc]
        ax.bar(range(len(arms)), [100 * s["mean"] for s in acc], yerr=errors, capsize=3)
        ax.set_xticks(range(len(arms)), arms, fontsize=8)
        ax.set_ylabel("flexible accuracy, %")
        ax.set_ylim(bottom=0)
        ax.set_title(f"{task}: mean ± 95% CI over seeds", fontsize=9)
    ax = axes[-1]
    for r in runs:
        c = r.get("curve", {})
        if r["seed"] == min(x["seed"] for x in runs) and any(c.get("kd") or []) and c.get("ce"):
            # Steps that distilled nothing (the first; every step at alpha = 0) have no ratio to draw.
            steps = [(step, kd / ce) for step, kd, ce in zip(c["step"], c["kd"], c["ce"], strict=True) if kd and ce]
            ax.plot(*zip(*steps, strict=True), label=f"{r['task']} {r['arm']}", lw=0.9)
    ax.set_yscale("log")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("distillation term / CE (per token)")
    ax.set_title("does the regulariser do any work?", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
