"""What a round's data look like, for the report: a few kept and rejected solutions, the filter's counts, the
pass-rate histogram and, for self-correction, the transition table.

The filter phase picks the examples (:func:`pick_examples`, saved as ``round_r/examples.json``) while it holds the
records and their verdicts; :func:`round_section` turns a round's saved files into the report's Markdown and writes
its histogram to ``round_r/pass_rates.png``. Every file stays inside the run folder.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from ..jsonl import read_jsonl
from .filtering import truncated

__all__ = ["pick_examples", "pass_rate_histogram", "round_section"]

# (summary key, label) of the filter counts shown per round, in funnel order.
FILTER_COUNTS = [
    ("samples", "samples"),
    ("correct_samples", "correct"),
    ("duplicates", "duplicates"),
    ("over_cap", "over cap"),
    ("truncated", "truncated"),
    ("below_agreement", "below agreement"),
    ("above_max_pass_rate", "questions above max pass rate"),
    ("below_min_pass_rate", "questions below min pass rate"),
    ("rows", "kept rows"),
]


def _text(record: dict) -> str:
    return record["revision"] if "revision" in record else record["response"]


def _question(prompt) -> str:
    return prompt[-1]["content"] if isinstance(prompt, list) else prompt


def _example(kind: str, record: dict, verdict: str) -> dict:
    out = {
        "kind": kind,
        "verdict": verdict,
        "id": record["id"],
        "sample": record["sample"],
        "question": _question(record["prompt"]),
        "gold": record["gold"],
    }
    if "revision" in record:
        out.update(
            first=record["first"], revision=record["revision"], finish_reason=record.get("revision_finish_reason")
        )
    else:
        out.update(response=record["response"], finish_reason=record.get("finish_reason"))
    return out


def pick_examples(records: list[dict], verdicts: list[str]) -> list[dict]:
    """The shortest and longest kept and rejected solutions, and one truncated one (the first), as plain dicts."""
    pairs = list(zip(records, verdicts, strict=True))
    kept = [p for p in pairs if p[1] == "kept"]
    rejected = [p for p in pairs if p[1] != "kept"]
    picks: list[tuple[str, tuple[dict, str]]] = []
    for name, group in (("kept", kept), ("rejected", rejected)):
        if group:
            by_length = sorted(group, key=lambda p: len(_text(p[0])))
            picks.append((f"{name}, shortest", by_length[0]))
            if len(group) > 1:
                picks.append((f"{name}, longest", by_length[-1]))
    cut = [p for p in pairs if truncated(p[0]) or truncated(p[0], "revision_finish_reason")]
    if cut:
        picks.append(("truncated", cut[0]))
    return [_example(kind, record, verdict) for kind, (record, verdict) in picks]


def pass_rate_histogram(rates: list[float], out: Path, title: str) -> Path | None:
    """A bar chart of how many questions have each pass rate (10 bins over [0, 1]); None without questions."""
    if not rates:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.5, 2.8), dpi=110)
    ax.hist(rates, bins=[i / 10 for i in range(11)], edgecolor="black")
    ax.set_xlabel("pass rate (verified samples / samples)")
    ax.set_ylabel("questions")
    ax.set_title(title)
    fig.tight_layout()
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}.png")  # the suffix tells matplotlib the format
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(out)
    return out


def _quote(text: str, limit: int = 600) -> str:
    text = text if len(text) <= limit else text[:limit] + " […]"
    return "\n".join("    " + line for line in (text or "(empty)").splitlines() or [""])


def _examples_md(examples: list[dict]) -> list[str]:
    lines = []
    for ex in examples:
        lines += [
            "",
            f"*{ex['kind']}* — `{ex['id']}` sample {ex['sample']}, verdict `{ex['verdict']}`, finish "
            f"`{ex['finish_reason']}`, gold {ex['gold']}",
            "",
            "question:",
            "",
            _quote(ex["question"]),
            "",
        ]
        if "revision" in ex:
            lines += ["first answer:", "", _quote(ex["first"]), "", "revision:", "", _quote(ex["revision"])]
        else:
            lines += ["solution:", "", _quote(ex["response"])]
    return lines


def round_section(run_dir: Path, r: int, pipeline: str, summary: dict) -> list[str]:
    """Markdown lines for round ``r``: filter counts, transitions (self-correction), histogram, examples."""
    folder = run_dir / f"round_{r}"
    lines = [
        f"### Round {r}",
        "",
        "| " + " | ".join(label for _, label in FILTER_COUNTS) + " |",
        "|---" * len(FILTER_COUNTS) + "|",
        "| " + " | ".join(str(summary.get(key, "-")) for key, _ in FILTER_COUNTS) + " |",
    ]
    counts = summary.get("counts")
    if pipeline == "self_correction" and counts:
        lines += [
            "",
            "| first \\ revised | right | wrong |",
            "|---|---|---|",
            f"| right | {counts['right_to_right']} | {counts['right_to_wrong']} |",
            f"| wrong | {counts['wrong_to_right']} | {counts['wrong_to_wrong']} |",
        ]
    rates_file = folder / "pass_rates.jsonl"
    if rates_file.is_file():
        rates = [row["pass_rate"] for row in read_jsonl(rates_file)]
        png = pass_rate_histogram(rates, folder / "pass_rates.png", f"round {r}: {len(rates)} questions")
        if png is not None:
            lines += ["", f"![round {r} pass rates](round_{r}/{png.name})"]
    examples_file = folder / "examples.json"
    if examples_file.is_file():
        lines += _examples_md(json.loads(examples_file.read_text()))
    return lines + [""]
