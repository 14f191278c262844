"""Score an engine on a task: per-sample records and a summary with 95% intervals and throughput.

Every example contributes exactly ``n`` records (one per completion); an empty response or one without an
extractable answer is kept and counted as wrong, and the summary reports how many there were, so accuracy is never
computed over a silently filtered subset.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

from .engines.base import Engine, SamplingConfig, progress_bar
from .stats import mean_ci95, wilson_interval
from .tasks.base import Example, PromptFormat, Task, check_examples

# mean_ci95 and wilson_interval live in .stats; re-exported here for the callers that import them from evaluate.
__all__ = ["EvalResult", "evaluate", "mean_ci95", "wilson_interval"]


@dataclass
class EvalResult:
    records: list[dict]
    summary: dict = field(default_factory=dict)

    def report(self) -> str:
        s = self.summary
        lines = [
            f"{s['task']} {s['split']} n={s['n_samples']} format={s['format']} backend={s['backend']} "
            f"model={s['model']}"
        ]
        for kind in ("strict", "flexible"):
            lo, hi = s[f"{kind}_ci95"]
            lines.append(
                f"  {kind:<8} accuracy {100 * s[f'{kind}_accuracy']:5.1f}%  (95% CI {100 * lo:.1f}-{100 * hi:.1f}, "
                f"{s[f'{kind}_correct']}/{s['n_samples']}; no answer extracted: {s[f'{kind}_no_answer']})"
            )
        lines.append(
            f"  empty outputs {s['empty_outputs']}, truncated at max tokens {s['truncated']}; "
            f"{s['generated_tokens']} tokens in {s['generation_s']:.1f} s = {s['tokens_per_s']:.1f} tokens/s; "
            f"wall {s['wall_s']:.1f} s" + (f" (+ {s['load_s']:.1f} s loading the model)" if "load_s" in s else "")
        )
        return "\n".join(lines)


def evaluate(
    engine: Engine,
    task: Task,
    examples: list[Example],
    fmt: PromptFormat,
    sampling: SamplingConfig,
    model_name: str = "",
    split: str = "",
) -> EvalResult:
    """Generate for ``examples`` in format ``fmt`` and score every completion with ``task.score``; no examples or
    a duplicate example id is a :class:`~dynsdpb_selfplay.errors.UserInputError`."""
    check_examples(examples, f"task {task.name} split {split or '?'}")
    wall_start = time.perf_counter()
    prompts = [task.build_prompt(ex, fmt) for ex in examples]
    stop = list(dict.fromkeys([*fmt.stop, *sampling.stop]))
    sampling = SamplingConfig(**{**asdict(sampling), "stop": stop})
    gen_start = time.perf_counter()
    with progress_bar(engine, len(prompts), f"{task.name} {split or ''} evaluation".replace("  ", " ")):
        generations = engine.generate(prompts, sampling)
    gen_s = time.perf_counter() - gen_start
    records = []
    for ex, prompt, gen in zip(examples, prompts, generations, strict=True):
        rendered = engine.render(prompt)
        for k, c in enumerate(gen.completions):
            score = task.score(c.text, ex, fmt)
            records.append(
                {
                    "id": ex.id,
                    "sample": k,
                    "prompt": rendered,
                    "output": c.text,
                    "strict_answer": score.strict,
                    "flexible_answer": score.flexible,
                    "gold": ex.answer,
                    "strict_correct": score.strict_correct,
                    "flexible_correct": score.flexible_correct,
                    "finish_reason": c.finish_reason,
                    "prompt_tokens": len(gen.prompt_token_ids),
                    "output_tokens": len(c.token_ids),
                }
            )
    n = len(records)
    tokens = sum(r["output_tokens"] for r in records)
    summary = {
        "task": task.name,
        "split": split,
        "format": fmt.id,
        "backend": engine.name,
        "model": model_name or engine.model_path,
        "n_examples": len(examples),
        "n_samples": n,
        "sampling": asdict(sampling),
        "empty_outputs": sum(not r["output"].strip() for r in records),
        "truncated": sum(r["finish_reason"] == "length" for r in records),
        "generated_tokens": tokens,
        "generation_s": gen_s,
        "tokens_per_s": tokens / gen_s if gen_s > 0 else 0.0,
    }
    for kind in ("strict", "flexible"):
        correct = sum(r[f"{kind}_correct"] for r in records)
        summary[f"{kind}_correct"] = correct
        summary[f"{kind}_accuracy"] = correct / n if n else 0.0
        summary[f"{kind}_ci95"] = wilson_interval(correct, n)
        summary[f"{kind}_no_answer"] = sum(r[f"{kind}_answer"] is None for r in records)
    summary["wall_s"] = time.perf_counter() - wall_start
    return EvalResult(records, summary)
