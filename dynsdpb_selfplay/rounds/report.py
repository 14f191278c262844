"""The run report: a Markdown table of the rounds, a PNG of held-out accuracy across rounds, and per round what
its data look like (:mod:`.showcase`)."""

from __future__ import annotations

import os
from pathlib import Path

from ..faults import fault_point
from ..jsonl import atomic_write_text
from .showcase import round_section

__all__ = ["round_line", "write_report"]


def _pct(x) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def _acc(summary: dict, kind: str) -> str:
    if not summary:
        return "-"
    lo, hi = summary[f"{kind}_ci95"]
    return f"{_pct(summary[f'{kind}_accuracy'])} [{_pct(lo)}, {_pct(hi)}]"


def round_line(r: int, info: dict) -> str:
    """The one-line summary printed after each round."""
    parts = [f"round {r}:"]
    filt, train, ev = info.get("filter", {}), info.get("train", {}), info.get("eval", {})
    if filt:
        cut = f" ({filt['truncated']} truncated samples dropped)" if filt.get("truncated") else ""
        parts.append(f"kept {filt.get('rows', 0)} rows from {filt.get('questions_kept', 0)} questions{cut} |")
    if train:
        parts.append(
            f"train skipped ({train['skipped']}) |"
            if "skipped" in train
            else f"train {train['steps']} steps, loss {train['train_loss']:.3f} |"
        )
    if info.get("handoff"):
        parts.append(f"served {_served(info['handoff'])} |")
    if ev:
        parts.append(f"eval strict {_acc(ev, 'strict')}, flexible {_acc(ev, 'flexible')}")
        if "revised_accuracy" in ev:
            parts.append(f"| after review {_pct(ev['revised_accuracy'])}")
    if info.get("validate"):
        v = info["validate"]
        parts.append(f"| validation strict {_pct(v['strict_accuracy'])}, flexible {_pct(v['flexible_accuracy'])}")
    if info.get("select"):
        parts.append("| kept" if info["select"]["kept"] else f"| REJECTED ({info['select']['why']})")
    parts.append(f"| {sum(v.get('seconds', 0) for v in info.values()):.0f} s")
    return " ".join(parts)


def _served(handoff: dict) -> str:
    """The copy the engine served and the share of the round's update it kept (rounds/handoff.py)."""
    dtype = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}.get(handoff["dtype"], handoff["dtype"])
    share, nearest = handoff.get("served_share"), handoff.get("nearest_share")
    kept = "" if share is None else f" ({_pct(share)} of update"
    if kept and handoff["handoff"] == "stochastic":
        kept += f"; rounded to nearest: {_pct(nearest)}"
    return f"{dtype} {handoff['handoff']}{kept})" if kept else f"{dtype} {handoff['handoff']}"


def _kept_rows(f: dict) -> str:
    """Kept rows' mean generated tokens and how many had the answer line appended (filtering.answer_line)."""
    if not f or f.get("kept_tokens_mean") is None:
        return "-"
    return f"{f['kept_tokens_mean']:.0f} tok, {f.get('answer_line_appended', 0)}/{f.get('rows', 0)} line added"


def _validation(info: dict) -> str:
    v, sel = info.get("validate"), info.get("select")
    if not v:
        return "-"
    text = f"{_pct(v['strict_accuracy'])} / {_pct(v['flexible_accuracy'])}"
    if sel:
        text += " kept" if sel["kept"] else f" **rejected**: {sel['why']} vs round {sel['against']}"
    return text


def write_report(run_dir: Path, config: dict, rounds: dict[int, dict]) -> tuple[Path, Path | None]:
    """``rounds[r]`` maps phase name (generate, filter, train, handoff, eval, validate, select) to its saved info."""
    pipeline = config["pipeline"]
    header = [
        "round",
        "generated",
        "kept rows",
        "questions kept",
        "kept rows: length, answer line",
        "train steps",
        "train loss",
        "served (update kept)",
        "strict accuracy",
        "flexible accuracy",
        "eval output tokens",
        "validation strict / flexible",
    ]
    if pipeline == "self_correction":
        header += ["first → revised", "w→r", "r→w"]
    header += ["generate s", "filter s", "train s", "eval s"]
    lines = [
        f"# Run report: {run_dir.name}",
        "",
        f"- model: `{config['model']}`, pipeline: `{pipeline}`, trainer: `{config['training']['trainer']}`, "
        f"task: `{config['task']['name']}` {config['task']['options'] or ''}, rounds: {config['rounds']}, "
        f"seed: {config['seed']}",
        f"- engine: `{config['engine']['backend']}`; evaluation: greedy on `{config['task']['eval_split']}` "
        f"(intervals: Wilson 95%)",
        "",
        "| " + " | ".join(header) + " |",
        "|---" * len(header) + "|",
    ]
    for r in sorted(rounds):
        info = rounds[r]
        g, f, t, e = (info.get(k, {}) for k in ("generate", "filter", "train", "eval"))
        steps = "skipped" if "skipped" in t else t.get("steps", "-")
        loss = f"{t['train_loss']:.3f}" if t.get("train_loss") is not None else "-"
        served = _served(info["handoff"]) if info.get("handoff") else "-"
        tokens = f"{e['mean_output_tokens']:.0f}" if e.get("mean_output_tokens") is not None else "-"
        row = [
            str(r),
            str(g.get("records", "-")),
            str(f.get("rows", "-")),
            str(f.get("questions_kept", "-")),
            _kept_rows(f),
            str(steps),
            loss,
            served,
            _acc(e, "strict"),
            _acc(e, "flexible"),
            tokens,
            _validation(info),
        ]
        if pipeline == "self_correction":
            row += [
                f"{_pct(e.get('first_accuracy'))} → {_pct(e.get('revised_accuracy'))}" if e else "-",
                _pct(e.get("wrong_to_right")) if e else "-",
                _pct(e.get("right_to_wrong")) if e else "-",
            ]
        row += [f"{info[k]['seconds']:.0f}" if k in info else "-" for k in ("generate", "filter", "train", "eval")]
        assert len(row) == len(header)
        lines.append("| " + " | ".join(row) + " |")
    png = _plot(run_dir, rounds)
    if png is not None:
        lines += ["", f"![held-out accuracy by round]({png.name})"]
    lines += [
        "",
        "Round 0 is the starting model, evaluated before any training. *Served*: the copy of the trained "
        "weights the engine generated and was scored with, and the share of the round's weight update it kept "
        "(`engine.handoff`). *Validation*: `task.validation_split`, which decides whether the next round starts "
        "from a round's model (`evaluation.select`); a rejected round is scored on the test split all the same.",
        "",
    ]
    rejected = [r for r in sorted(rounds) if rounds[r].get("select") and not rounds[r]["select"]["kept"]]
    if rejected:
        lines += [
            f"Rejected rounds: {', '.join(map(str, rejected))} (the round after each started from the model "
            "before it).",
            "",
        ]
    data = [r for r in sorted(rounds) if rounds[r].get("filter")]
    if data:
        lines += [
            "## The data of each round",
            "",
            "Filter counts are samples unless they say questions; a question's "
            "pass rate is its verified samples / samples (`round_<r>/pass_rates.jsonl`); the examples are the "
            "shortest and longest kept and rejected solutions and one cut at `max_new_tokens` "
            "(`round_<r>/examples.json`).",
            "",
        ]
        for r in data:
            lines += round_section(run_dir, r, pipeline, rounds[r]["filter"])
    fault_point(point="plot")
    md = atomic_write_text(run_dir / "report.md", "\n".join(lines))
    return md, png


def _plot(run_dir: Path, rounds: dict[int, dict]) -> Path | None:
    points = [(r, info["eval"]) for r, info in sorted(rounds.items()) if info.get("eval")]
    if not points:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.2), dpi=120)
    for kind, marker in (("strict", "o"), ("flexible", "s")):
        xs = [r for r, _ in points]
        ys = [100 * e[f"{kind}_accuracy"] for _, e in points]
        err = [
            [100 * (e[f"{kind}_accuracy"] - e[f"{kind}_ci95"][0]) for _, e in points],
            [100 * (e[f"{kind}_ci95"][1] - e[f"{kind}_accuracy"]) for _, e in points],
        ]
        ax.errorbar(xs, ys, yerr=err, marker=marker, capsize=3, label=f"{kind} match")
    ax.set_xlabel("round (0 = before training)")
    ax.set_ylabel("held-out accuracy (%)")
    ax.set_xticks([r for r, _ in points])
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    tmp = run_dir / f".accuracy.png.tmp-{os.getpid()}.png"  # the suffix tells matplotlib the format
    fig.savefig(tmp)
    plt.close(fig)
    out = run_dir / "accuracy.png"
    tmp.replace(out)
    return out
