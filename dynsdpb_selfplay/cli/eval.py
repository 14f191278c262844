"""``dynsdpb eval``: accuracy of a model on a task, with per-sample JSONL.

    dynsdpb eval --model smollm2-135m-instruct --task gsm8k --split test --limit 100 --backend vllm --shots 0

Prints strict and flexible accuracy with 95% Wilson intervals, tokens/s and wall time; writes one JSON line per
completion (prompt, output, extracted answers, gold, correctness) to ``--output`` and the summary next to it.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
import time
from pathlib import Path

from ..engines.base import EngineConfig, SamplingConfig
from ..errors import EngineUnavailableError, UserInputError
from .flags import add_dataclass_flags, from_flags


def _task_args(pairs: list[str]) -> dict[str, str]:
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise UserInputError(f"--task-arg {pair!r}: expected KEY=VALUE")
        out[key] = value
    return out


def _output_path(args: argparse.Namespace) -> Path:
    """Where the records go; checked writable before the model is loaded, so a bad folder fails in a second."""
    from ..engines import pick_backend

    backend = pick_backend(args.backend)
    stem = re.sub(r"[^\w.-]", "_", f"{args.task}-{args.split}-{backend}-{time.strftime('%Y%m%d-%H%M%S')}")
    output = Path(args.output or f"runs/eval/{stem}")
    output = output if output.suffix == ".jsonl" else output.with_suffix(".jsonl")
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=output.parent).close()
    except OSError as e:
        raise UserInputError(f"--output {output}: cannot write to {output.parent} ({e.strerror or e})") from None
    return output


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("eval", help="accuracy of a model on gsm8k/arith (strict + flexible), per-sample JSONL")
    p.add_argument("--model", required=True, help="known name (smollm2-135m-instruct), directory, .gguf or hub id")
    p.add_argument("--task", default="gsm8k", help="registered task (gsm8k, arith) or module:Class")
    p.add_argument("--task-arg", action="append", default=[], metavar="KEY=VALUE", help="task option, repeatable")
    p.add_argument("--data-dir", help="gsm8k: folder with train.jsonl/test.jsonl (default: $DYNSDPB_GSM8K_DIR)")
    p.add_argument("--split", default="test")
    p.add_argument("--limit", type=int, help="first N examples of the split (default: all)")
    p.add_argument("--shots", type=int, default=0, choices=[0, 5, 8], help="0: chat; 5: lm-eval gsm8k; 8: gsm8k_cot")
    p.add_argument("--format", help="prompt format by name (overrides --shots), e.g. lmeval-gsm8k-5shot")
    # The sampling and engine options are SamplingConfig's and EngineConfig's fields; --seed (EngineConfig's) seeds
    # the sampling too.
    add_dataclass_flags(p, SamplingConfig, exclude=("seed", "stop"), title="sampling (SamplingConfig)")
    add_dataclass_flags(p, EngineConfig, title="engine (EngineConfig)")
    p.add_argument("--output", help="per-sample JSONL (default: runs/eval/<task>-<split>-<backend>-<time>.jsonl)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        return _run(args)
    except (UserInputError, EngineUnavailableError, ValueError) as e:
        print(f"dynsdpb eval: error: {e}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace) -> int:
    from ..engines import make_engine
    from ..evaluate import evaluate
    from ..faults import maybe_fault
    from ..jsonl import write_jsonl
    from ..tasks import get_task
    from ..tasks.base import check_examples

    if args.limit is not None and args.limit < 1:
        raise UserInputError(f"--limit {args.limit}: must be >= 1")
    options = _task_args(args.task_arg)
    if args.data_dir is not None:
        options["data_dir"] = args.data_dir
    task = get_task(args.task, **options)
    fmt = task.get_format(shots=args.shots, name=args.format)
    examples = check_examples(task.load(args.split, limit=args.limit), f"--task {args.task} --split {args.split}")
    output = _output_path(args)
    sampling = from_flags(SamplingConfig, args, seed=args.seed)
    config = from_flags(EngineConfig, args)
    load_start = time.perf_counter()
    with make_engine(args.model, config) as engine:
        load_s = time.perf_counter() - load_start
        maybe_fault("eval", point="loaded")
        result = evaluate(engine, task, examples, fmt, sampling, model_name=args.model, split=args.split)
    result.summary["load_s"] = load_s
    try:
        write_jsonl(output, result.records)
        summary_path = output.with_suffix(".summary.json")
        summary_path.write_text(json.dumps(result.summary, indent=2) + "\n")
    except OSError as e:
        raise UserInputError(f"cannot write {e.filename or output}: {e.strerror or e}") from None
    print(result.report())
    print(f"  per-sample records: {output}\n  summary: {summary_path}")
    return 0
