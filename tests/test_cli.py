"""``dynsdpb eval`` and ``dynsdpb models`` end to end on the tiny model (hf backend); their bad-input messages are
in test_bad_input.py."""

from __future__ import annotations

import json

from dynsdpb_selfplay.cli import main


def _eval(*args) -> list[str]:
    return ["eval", "--backend", "hf", "--dtype", "float32", "--max-new-tokens", "8", *args]


def test_eval_writes_records_and_summary(tiny_model_dirs, tmp_path, capsys):
    out = tmp_path / "run.jsonl"
    argv = _eval("--model", str(tiny_model_dirs[0]), "--task", "arith", "--task-arg", "steps=2", "--limit", "6")
    assert main([*argv, "--shots", "5", "--output", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "strict" in printed and "flexible" in printed and "tokens/s" in printed and "95% CI" in printed
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(records) == 6 and len({r["id"] for r in records}) == 6
    for r in records:
        assert {"prompt", "output", "strict_answer", "flexible_answer", "gold", "strict_correct"} <= r.keys()
        assert r["prompt"].count("Question: ") == 6 and 0 < r["output_tokens"] <= 8
    summary = json.loads(out.with_suffix(".summary.json").read_text())
    assert summary["n_samples"] == 6 and summary["format"] == "lmeval-gsm8k-5shot@v1"
    assert summary["strict_correct"] == sum(r["strict_correct"] for r in records)
    assert summary["strict_no_answer"] == sum(r["strict_answer"] is None for r in records)


def test_eval_gsm8k_chat_with_sampling(tiny_model_dirs, gsm8k_data, tmp_path):
    out = tmp_path / "g.jsonl"
    argv = _eval("--model", str(tiny_model_dirs[0]), "--data-dir", str(gsm8k_data), "--limit", "2", "--n", "2")
    assert main([*argv, "--temperature", "1.0", "--output", str(out)]) == 0
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r["id"], r["sample"]) for r in records] == [("gsm8k-test-0", 0), ("gsm8k-test-0", 1)] + [
        ("gsm8k-test-1", 0),
        ("gsm8k-test-1", 1),
    ]
    assert records[0]["gold"] == "18" and "<|user|>" in records[0]["prompt"]


def test_models_list_and_unknown(capsys):
    assert main(["models", "list"]) == 0
    assert "smollm2-135m-instruct" in capsys.readouterr().out
    assert main(["models", "prepare", "gpt-17"]) == 2
    assert "unknown model" in capsys.readouterr().err


def test_uncached_hub_id_offline_is_a_clear_error(monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert main(_eval("--model", "nobody-here/not-a-model", "--task", "arith")) == 2
    assert "not in the local cache" in capsys.readouterr().err


def test_eval_flags_are_the_engine_and_sampling_config_fields(monkeypatch, tmp_path, capsys):
    """Every EngineConfig / SamplingConfig field is a flag under its own name, with the dataclass's default; the
    values reach the engine and the sampling; --seed seeds both; a bad value fails with the dataclass's check."""
    import dataclasses

    from dynsdpb_selfplay.cli import build_parser
    from dynsdpb_selfplay.cli.flags import from_flags
    from dynsdpb_selfplay.engines import EngineConfig, SamplingConfig

    parser = build_parser()
    args = parser.parse_args(["eval", "--model", "m"])
    assert from_flags(EngineConfig, args) == EngineConfig()
    assert from_flags(SamplingConfig, args, seed=args.seed) == SamplingConfig(seed=EngineConfig().seed)
    flags = {
        a for action in parser._subparsers._group_actions[0].choices["eval"]._actions for a in action.option_strings
    }
    for cls, skip in ((EngineConfig, ()), (SamplingConfig, ("seed", "stop"))):
        for f in dataclasses.fields(cls):
            assert f.name in skip or "--" + f.name.replace("_", "-") in flags, f.name
    argv = [
        "eval",
        "--model",
        "m",
        "--max-num-seqs",
        "64",
        "--no-enable-prefix-caching",
        "--seed",
        "7",
        "--n",
        "3",
        "--temperature",
        "0.5",
        "--cpu-reserved-cores",
        "1",
    ]
    args = parser.parse_args(argv)
    engine = from_flags(EngineConfig, args)
    assert (engine.max_num_seqs, engine.enable_prefix_caching, engine.seed, engine.cpu_reserved_cores) == (
        64,
        False,
        7,
        1,
    )
    assert from_flags(SamplingConfig, args, seed=args.seed) == SamplingConfig(n=3, temperature=0.5, seed=7)
    monkeypatch.chdir(tmp_path)
    assert main(["eval", "--model", "m", "--task", "arith", "--limit", "2", "--dtype", "float8"]) == 2
    assert "dtype='float8': expected one of" in capsys.readouterr().err  # EngineConfig.__post_init__'s check


def test_run_set_changes_config_keys_and_options_lists_them(tmp_path, monkeypatch, capsys):
    """``dynsdpb run CONFIG --set section.key=value`` changes keys at any depth (values read as YAML, checked like
    the file's); a wrong key or a malformed assignment is exit 2 naming it; ``--options`` lists every key with the
    default its dataclass declares."""
    from pathlib import Path

    from dynsdpb_selfplay.rounds.config import load_config

    demo = Path(__file__).resolve().parents[1] / "pipelines" / "configs" / "demo.yaml"
    base = load_config(demo)
    cfg = load_config(
        demo,
        [
            "generation.n=8",
            "training.learning_rate=1e-5",
            "task.options.steps=2",
            "training.lora={r: 4, lora_alpha: 8}",
            "engine.max_num_seqs=null",
        ],
    )
    assert (cfg.generation.n, cfg.training.args["learning_rate"], cfg.task.options["steps"]) == (8, 1e-5, 2)
    assert (cfg.training.lora.r, cfg.training.lora.lora_alpha, cfg.engine.max_num_seqs) == (4, 8, None)
    assert (base.generation.n, base.task.options["steps"], base.training.lora) == (4, 1, None)
    recipe = tmp_path / "recipe.yaml"  # PyYAML reads `3e-5` (no dot) as a string; a TRL recipe means a number
    recipe.write_text(demo.read_text().replace("learning_rate: 3.0e-5", "learning_rate: 3e-5"))
    assert load_config(recipe).training.args["learning_rate"] == 3e-5
    monkeypatch.chdir(tmp_path)
    for assignment, message in (
        ("generation.samples=8", "generation.samples: renamed to generation.n"),
        ("generation.nn=8", "generation.nn: unknown key"),
        ("generation.n", "--set 'generation.n': expected KEY=VALUE"),
        ("training.learning_rate=fast", "training.learning_rate: expected float"),
    ):
        assert main(["run", str(demo), "--set", assignment]) == 2
        err = capsys.readouterr().err
        assert message in err and (str(demo) in err or "KEY=VALUE" in message), err
        assert not (tmp_path / "runs").exists()  # nothing created for a config that does not load
    assert main(["run", "--options"]) == 0
    listed = {line.split()[0]: line.split()[1] for line in capsys.readouterr().out.splitlines()}
    assert listed["generation.n"] == "4" and listed["generation.top_k"] == "0" and listed["engine.dtype"] == "'auto'"
    assert listed["training.trainer"] == "'dynsdpb'" and "training.gradient_checkpointing" in listed
    assert "generation.seed" not in listed and "training.args" not in listed
