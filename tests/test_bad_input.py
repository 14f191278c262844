"""Bad input, one table: each case builds a bad input, makes one call, and says what must come out.

``expect`` is an exception type (its message must match ``message``), a command's exit code (its stderr must hold
exactly one ``dynsdpb <command>: error:`` line matching ``message``, and no traceback), or ``None`` for input that
is handled rather than refused (scoring odd answers, a tokenizer without a pad token): the call returns a text that
must match ``message``. Messages name the file and line, the field, or the option to change.

Covered elsewhere and not repeated: bad distillation fields and unsupported trainer setups (test_trainer.py), the
first config errors (test_rounds.py::test_config_errors_name_the_key), NaN/inf losses (the trainer's own tests).
"""

from __future__ import annotations

import errno
import json
import logging
import os
import re
from dataclasses import dataclass
from typing import Any

import pytest
from bad_inputs import (
    eval_cli,
    gsm8k,
    model_variant,
    round_config,
    run_cli,
    sft_cli,
    sft_recipe,
    unwritable,
    write_config,
)
from helpers import arithmetic_dataset, arithmetic_rows, make_model, make_tokenizer, sft_kwargs

from dynsdpb_selfplay.cli import main
from dynsdpb_selfplay.cli.sft import build_trainer, make_parser
from dynsdpb_selfplay.distill.config import DynSDPBConfig
from dynsdpb_selfplay.distill.store import TargetStore
from dynsdpb_selfplay.distill.trainer import TARGETS_FILE, DynSDPBTrainer
from dynsdpb_selfplay.engines import EngineConfig, SamplingConfig, make_engine
from dynsdpb_selfplay.errors import UserInputError
from dynsdpb_selfplay.jsonl import read_jsonl
from dynsdpb_selfplay.rounds.config import from_dict, load_config
from dynsdpb_selfplay.rounds.generation import round_questions
from dynsdpb_selfplay.rounds.orchestrator import Orchestrator
from dynsdpb_selfplay.rounds.rundir import REDO_HINT, RunDir
from dynsdpb_selfplay.rounds.training import train_round
from dynsdpb_selfplay.tasks import GSM8K, score_response


@dataclass
class Case:
    name: str
    call: Any  # (context) -> result
    expect: type[BaseException] | int | None
    message: str

    def __str__(self) -> str:
        return self.name


def score(response: str, gold: str = "18"):
    return lambda c: str(score_response(response, gold))


def eval_data(text: str):
    def call(c):
        (c.tmp / "test.jsonl").write_text(text)
        return eval_cli(c, "--model", c.model, "--data-dir", str(c.tmp))

    return call


def raw_config(text: str):
    def call(c):
        (c.tmp / "run.yaml").write_text(text)
        return load_config(c.tmp / "run.yaml")

    return call


def load_cfg(**overrides):
    return lambda c: load_config(write_config(c.tmp, round_config("m", **overrides)))


def chat_rows(n: int, prompt: str = "What is 2+2?") -> list[dict]:
    return [
        {
            "id": f"q{i}",
            "prompt": [{"role": "user", "content": prompt}],
            "completion": [{"role": "assistant", "content": "4"}],
        }
        for i in range(n)
    ]


def train_rows(rows: list[dict], **overrides):
    """The training phase of a round on ``rows``; returns why it was skipped."""

    def call(c):
        cfg = from_dict(round_config(c.model, **overrides))
        return train_round(rows, c.model, c.tmp / "model", c.tmp / "trainer", cfg)["skipped"]

    return call


def existing_run(c, state: str | None = None, extra_config: str = "") -> str:
    run = c.tmp / "run"
    RunDir.create(run, round_config(c.model)).close()
    if state is not None:
        (run / "state.json").write_text(state)
    with open(run / "config.yaml", "a") as f:
        f.write(extra_config)
    return str(run)


def main_resume(run: str) -> int:
    return main(["run", "--resume", run])


def foreign_folder(c):
    """A folder holding someone's files: never written into, with or without --overwrite."""
    (c.tmp / "run").mkdir()
    (c.tmp / "run" / "notes.txt").write_text("mine")
    code = run_cli(c, round_config(c.model), "--run-dir", str(c.tmp / "run"), "--overwrite")
    assert sorted(p.name for p in (c.tmp / "run").iterdir()) == ["notes.txt"]
    return code


def offline_gsm8k(c):
    c.monkeypatch.delenv("DYNSDPB_GSM8K_DIR", raising=False)
    c.monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return GSM8K().load("test")


def truncated_chunk(c):
    path = c.tmp / "round_1" / "generations" / "chunk-00000.jsonl"
    path.parent.mkdir(parents=True)
    path.write_text('{"id": "a"}\n{"id": "b", "resp')
    return read_jsonl(path, hint=REDO_HINT)


def out_of_questions(c):
    with RunDir.create(c.tmp / "run", round_config(c.model, **{"task.train_limit": 8})) as run:
        orch = Orchestrator(run, log=lambda *_: None)
        return round_questions(orch.cfg, orch.task, 6)  # the echo task has 40 training questions


def disk_full_while_filtering(c):
    """ENOSPC while round 1's train.jsonl is written: exit 1, round 1's generation stays done and no temp file is
    left. (The write error carries no file name, as a real one doesn't; the message must still name the file.)"""
    replace = os.replace

    def full(src, dst, *a, **kw):
        if str(dst).endswith("train.jsonl"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return replace(src, dst, *a, **kw)

    c.monkeypatch.setattr(os, "replace", full)
    run = c.tmp / "run"
    code = run_cli(c, round_config(c.model, rounds=1, evaluation={"enabled": False}), "--run-dir", str(run))
    assert json.loads((run / "state.json").read_text())["done"] == ["round_0/validate", "round_1/generate"]
    assert not list((run / "round_1").glob(".*tmp*"))
    return code


def padless_engine(c):
    c.caplog.set_level(logging.INFO, logger="dynsdpb_selfplay.engines.hf")
    with make_engine(model_variant(c, pad=False), EngineConfig(backend="hf", dtype="float32")) as engine:
        gens = engine.generate(["ab", "abcdef"], SamplingConfig(max_new_tokens=3))  # two lengths: one is padded
    return f"{c.caplog.text} generated={[len(g.completions[0].token_ids) for g in gens]}"


def dynsdpb_trainer(c, tokenizer=None):
    tok = tokenizer or make_tokenizer()
    return DynSDPBTrainer(
        model=make_model(len(tok)),
        args=DynSDPBConfig(**sft_kwargs(c.tmp / "out")),
        train_dataset=arithmetic_dataset(8),
        processing_class=tok,
    )


def padless_trainer(c):
    tok = make_tokenizer()
    tok.pad_token = None
    trainer = dynsdpb_trainer(c, tok)
    return f"pad_token={trainer.processing_class.pad_token}"


def targets_of_another_vocabulary(c):
    trainer = dynsdpb_trainer(c)
    checkpoint = c.tmp / "checkpoint-2"
    checkpoint.mkdir()
    TargetStore(10**6, vocab_size=7, topk=None).save(str(checkpoint / TARGETS_FILE.format(rank=0)))
    trainer.train(resume_from_checkpoint=str(checkpoint))


def sft_long_prompts(c):
    rows = arithmetic_rows(8) + [{"id": f"long{i}", "prompt": "x" * 100, "completion": " 1"} for i in range(2)]
    build_trainer(*make_parser().parse_args_and_config(args=["--config", str(sft_recipe(c, rows))]))
    return c.capsys.readouterr().out


def dup_id_rows():
    rows = arithmetic_rows(8)
    rows[5]["id"] = rows[2]["id"]
    return rows


GOOD = json.dumps({"question": "q", "answer": "a\n#### 1"})
E = UserInputError
# fmt: off
CASES = [
    # ---- malformed / truncated JSONL, wrong field types, empty data (task data and run folders)
    Case("jsonl malformed line (eval)", eval_data(GOOD + '\n{"question": \n'), 2, r"test\.jsonl:2: malformed JSON"),
    Case("jsonl truncated last record", gsm8k(GOOD + '\n{"question": "q", "ans'), E,
         r"test\.jsonl:2: malformed JSON .*truncated"),
    Case("jsonl not UTF-8", gsm8k(b'{"question": "caf\xe9", "answer": "#### 1"}\n'), E, r"test\.jsonl:1: not UTF-8"),
    Case("jsonl line not an object", gsm8k("[1, 2]\n"), E, r"test\.jsonl:1: expected a JSON object, got list"),
    Case("jsonl missing field", gsm8k(GOOD + '\n{"question": "q"}\n'), E, r"test\.jsonl:2: missing field 'answer'"),
    Case("jsonl field of wrong type", gsm8k('{"question": 5, "answer": "#### 1"}\n'), E,
         r"test\.jsonl:1: field 'question' must be a string, got int"),
    Case("jsonl null field", gsm8k('{"question": "q", "answer": null}\n'), E,
         r"test\.jsonl:1: field 'answer' must be a string, got NoneType"),
    Case("gold answer without ####", gsm8k(GOOD + '\n{"question": "q", "answer": "7"}\n'), E,
         r"test\.jsonl:2: the answer has no final '#### <number>'"),
    Case("gold answer without #### after blank lines", gsm8k(GOOD + '\n\n\n{"question": "q", "answer": "7"}\n'), E,
         r"test\.jsonl:4: the answer has no final '#### <number>'"),  # the file's line, not the row's index
    Case("empty data file", gsm8k(""), E, r"test\.jsonl: no examples \(the file is empty\)"),
    Case("unknown split", lambda c: GSM8K(c.tmp).load("dev"), E, r"gsm8k: unknown split 'dev'"),
    Case("no data offline", offline_gsm8k, E, r"GSM8K: no local data and the hub is offline; .*DYNSDPB_GSM8K_DIR"),
    Case("data folder missing (eval)", lambda c: eval_cli(c, "--model", c.model, "--data-dir", str(c.tmp / "no")), 2,
         r"GSM8K data file not found: .*test\.jsonl \(set --data-dir"),
    Case("run folder record truncated", truncated_chunk, E,
         r"chunk-00000\.jsonl:2: malformed JSON .*delete the file to redo it"),
    Case("run folder state.json corrupt", lambda c: main_resume(existing_run(c, state="{")), 2,
         r"state\.json: corrupt .*restore it or start a new run"),
    Case("run folder config edited badly", lambda c: main_resume(existing_run(c, extra_config="trainng: {}\n")), 2,
         r"config\.yaml: trainng: unknown key"),
    Case("sft data malformed", lambda c: sft_cli(c, '{"prompt": "a", "completion": "b"}\n{"prompt": "a", "com\n'), 2,
         r"dataset json \(data_files=.*train\.jsonl\) cannot be read: .*JSON parse error"),
    Case("sft data empty", lambda c: sft_cli(c, ""), 2, r"dataset json \(data_files=.*train\.jsonl\) is empty"),
    # ---- a dataset smaller than one batch, duplicate ids, running out of questions
    Case("sft data under half a batch", lambda c: sft_cli(c, arithmetic_rows(1), per_device_train_batch_size=4), 2,
         r"1 rows, fewer than half an effective batch \(2\)"),
    Case("round data under half a batch", train_rows(chat_rows(1), **{"training.per_device_train_batch_size": 8}),
         None, r"1 training rows, fewer than half a batch \(8\)"),
    Case("duplicate example ids (eval)", lambda c: eval_cli(c, "--model", c.model, "--task", "bad_inputs:DupTask"),
         2, r"--task bad_inputs:DupTask --split test: duplicate example id 'q0'"),
    Case("duplicate ids (sft id column)", lambda c: sft_cli(c, dup_id_rows(), distillation_id_column="id"), 2,
         r"distillation_id_column='id': ids must be unique, 'q2' appears more than once"),
    Case("train split runs out of questions", out_of_questions, E,
         r"round 6: task.train_split 'train' \(questions 40-47, task.train_limit=8\): no examples"),
    # ---- prompts longer than max_length (TRL cuts rows to max_length and drops those left without a completion)
    Case("every round prompt over max_length", train_rows(chat_rows(8, "x" * 200), **{"training.max_length": 64}),
         None, r"training\.max_length=64 drops rows whose prompt fills it: .* 0 rows"),
    Case("sft prompts over max_length", sft_long_prompts, None,
         r"2 of 10 training rows dropped: the prompt fills max_length=64"),
    # ---- model answers: empty, non-numeric, units, commas, LaTeX (lm-eval extraction; None = no answer)
    Case("answer empty", score(""), None, r"strict=None, flexible=None, strict_correct=False, flexible_correct=False"),
    Case("answer blank", score("  \n "), None, r"strict=None, flexible=None, strict_correct=False"),
    Case("answer non-numeric", score("#### eighteen"), None, r"strict=None, flexible=None, strict_correct=False"),
    Case("answer with a unit", score("#### 18 dollars"), None, r"strict='18', flexible='18', strict_correct=True"),
    Case("answer with a currency sign", score("#### $18"), None,
         r"strict=None, flexible='\$18', strict_correct=False, flexible_correct=True"),
    Case("answer with thousands commas", score("#### 1,234", "1234"), None, r"strict='1,234'.*strict_correct=True"),
    Case("answer in prose with $ and commas", score("The total is $1,234.", "1234"), None,
         r"strict=None, flexible='\$1,234\.', strict_correct=False, flexible_correct=True"),
    Case("answer as 18.00", score("#### 18.00"), None, r"strict='18.00'.*strict_correct=True"),
    Case("answer in LaTeX \\boxed", score(r"So the answer is \boxed{18}."), None,
         r"strict=None, flexible='18', strict_correct=False, flexible_correct=True"),
    # Extraction is lm-eval's, character for character (test_lmeval_agreement.py), and lm-eval reads no LaTeX: its
    # flexible rule takes the last run of [$0-9.,], so math mode and fractions come out wrong, for both of us.
    Case("answer in LaTeX math mode", score(r"So the answer is $\boxed{18}$."), None,
         r"strict=None, flexible='\$\.', strict_correct=False, flexible_correct=False"),
    Case("answer as LaTeX \\frac", score(r"$\frac{36}{2}$"), None, r"flexible='2', .*flexible_correct=False"),
    # ---- tokenizers and models
    Case("chat format, no chat template (eval)", lambda c: eval_cli(c, "--model", model_variant(c, chat_template=False),
         "--task", "arith", "--shots", "0"), 2, r"variant has no chat template.*--shots 5 or 8, or --format"),
    Case("chat format, no chat template (run)", lambda c: run_cli(c, round_config(model_variant(c, chat_template=False),
         rounds=1), "--run-dir", str(c.tmp / "run")), 2, r"variant has no chat template.*task\.format"),
    Case("chat rows, no chat template (sft)", lambda c: sft_cli(c, chat_rows(8),
         model=model_variant(c, chat_template=False)), 2, r"variant has no chat template; set chat_template_path"),
    Case("no pad token (generation)", padless_engine, None, r"no pad token; padding with EOS \(id 2\)"),
    Case("no pad token (training)", padless_trainer, None, r"pad_token=<\|end\|>"),
    Case("pickle-only weights", lambda c: eval_cli(c, "--model", model_variant(c, weights="pickle"), "--task", "arith"),
         2, r"only pickle weights .*safetensors"),
    Case("no weights", lambda c: eval_cli(c, "--model", model_variant(c, weights="none"), "--task", "arith"), 2,
         r"variant has no weights"),
    Case("model not found", lambda c: eval_cli(c, "--model", str(c.tmp / "nope"), "--task", "arith"), 2,
         r"model '.*nope' not found"),
    Case("stored targets of another vocabulary", targets_of_another_vocabulary, ValueError,
         r"dynsdpb_targets_rank0\.safetensors: stored targets are over a vocabulary of 7 tokens, the model has \d+"),
    # ---- options and configs: unknown keys, wrong types, out-of-range values
    Case("--task-arg without =", lambda c: eval_cli(c, "--model", c.model, "--task", "arith", "--task-arg", "steps"),
         2, r"--task-arg 'steps': expected KEY=VALUE"),
    Case("--n > 1 with greedy decoding", lambda c: eval_cli(c, "--model", c.model, "--task", "arith", "--n", "3"), 2,
         r"n=3 with temperature=0"),
    Case("config not YAML", raw_config("rounds: 2\ntask: [x\n"), E,
         r"run\.yaml:3:1: not valid YAML \(while parsing a flow sequence expected ',' or ']'"),
    Case("config unknown nested key", load_cfg(**{"training.lora": {"rank": 8}}), E, r"training\.lora\.rank: unknown"),
    Case("config list of wrong type", load_cfg(**{"training.lora": {"target_modules": "q_proj"}}), E,
         r"training\.lora\.target_modules: expected a list, got str"),
    Case("config batch size 0", load_cfg(**{"training.per_device_train_batch_size": 0}), E,
         r"training\.per_device_train_batch_size: must be >= 1"),
    Case("config odd DynSDPB batch", load_cfg(**{"training.per_device_train_batch_size": 3}), E,
         r"training: per_device_train_batch_size=3 .*must be even \(got 3\)"),
    Case("config max_length 0", load_cfg(**{"training.max_length": 0}), E, r"training\.max_length: must be >= 1"),
    Case("config train_limit 0", load_cfg(**{"task.train_limit": 0}), E, r"task\.train_limit: must be >= 1"),
    Case("config top_p 1.5", load_cfg(**{"generation.top_p": 1.5}), E, r"generation: top_p=1\.5: must be in"),
    Case("config gpu memory 1.5", load_cfg(engine={"gpu_memory_utilization": 1.5}), E,
         r"engine: gpu_memory_utilization=1\.5: must be in"),
    Case("config unknown SFT field", load_cfg(**{"training.lerning_rate": 1}), E,
         r"training\.lerning_rate: not a field of DynSDPBConfig nor a round key"),
    Case("config task option rejected", load_cfg(task={"name": "arith", "options": {"steps": 0}}), E,
         r"task: arith: steps=0 must be in \[1, 10\]"),
    Case("config unknown prompt format", load_cfg(**{"task.format": "chat-5shot"}), E,
         r"task: task echo: no prompt format 'chat-5shot'"),
    Case("config max_pass_rate 1.5", load_cfg(**{"filtering.max_pass_rate": 1.5}), E,
         r"filtering\.max_pass_rate: must be in \[0, 1\]"),
    Case("config min above max pass rate", load_cfg(**{"filtering.min_pass_rate": 0.8,
         "filtering.max_pass_rate": 0.5}), E, r"filtering\.min_pass_rate: 0\.8 is above .*every question"),
    Case("config adaptive first = samples", load_cfg(**{"generation.adaptive": True, "generation.adaptive_first": 2}),
         E, r"generation\.adaptive_first: must be >= 1 and below n=2"),
    Case("config adaptive cap below samples", load_cfg(**{"generation.adaptive": True, "generation.n": 4,
         "generation.adaptive_max_samples": 3}), E, r"generation\.adaptive_max_samples: must be >= n=4"),
    Case("config adaptive majority labels", load_cfg(**{"generation.adaptive": True, "generation.n": 4,
         "filtering.labels": "majority"}), E, r"generation\.adaptive: needs gold labels"),
    Case("config adaptive self-correction", load_cfg(pipeline="self_correction", **{"generation.adaptive": True,
         "generation.n": 4}), E, r"generation\.adaptive: only the self_training pipeline"),
    Case("config adapter hand-off without LoRA", load_cfg(**{"training.lora_handoff": "adapter"}), E,
         r"training\.lora_handoff: 'adapter' needs LoRA training \(set training\.lora\)"),
    Case("config lora_handoff typo", load_cfg(**{"training.lora_handoff": "merge"}), E,
         r"training\.lora_handoff: must be 'merged' or 'adapter'"),
    Case("config report_to wandb", load_cfg(**{"training.report_to": "wandb"}), E,
         r"training\.report_to: wandb is not installed"),
    # ---- output folders: existing, foreign, unwritable, full; paths from configs
    Case("run folder exists, no --overwrite", lambda c: run_cli(c, round_config(c.model), "--run-dir",
         existing_run(c)), 2, r"already holds a run; continue it with .*--resume .*or pass --overwrite"),
    Case("run folder holds other files", foreign_folder, 2, r"run is not empty and holds no run"),
    Case("run folder unwritable", lambda c: run_cli(c, round_config(c.model), "--run-dir", str(unwritable(c))), 2,
         r"cannot create run folder .*a-file/out: Not a directory"),
    Case("eval output unwritable", lambda c: eval_cli(c, "--model", c.model, "--task", "arith", "--limit", "1",
         "--output", str(unwritable(c) / "e.jsonl")), 2, r"--output .*a-file/out/e\.jsonl: cannot write to"),
    Case("disk full mid-run", disk_full_while_filtering, 1,
         r"round_1/train\.jsonl: No space left on device; finished phases are saved: .*--resume"),
    Case("config run_dir absolute", load_cfg(run_dir="/tmp/elsewhere"), E,
         r"run_dir: '/tmp/elsewhere' is absolute; .*allow_absolute_paths: true"),
    Case("config run_dir escapes", load_cfg(run_dir="runs/../../out"), E, r"run_dir: .* leaves the working folder"),
]
# fmt: on


def test_the_table_is_large_and_names_are_unique():
    assert len(CASES) >= 30 and len({c.name for c in CASES}) == len(CASES)


@pytest.fixture
def context(tmp_path, tiny_model_dirs, monkeypatch, capsys, caplog):
    class Context:
        pass

    c = Context()
    c.tmp, c.model, c.monkeypatch, c.capsys, c.caplog = tmp_path, str(tiny_model_dirs[0]), monkeypatch, capsys, caplog
    monkeypatch.chdir(tmp_path)  # default output folders (runs/...) land here
    return c


@pytest.mark.parametrize("case", CASES, ids=str)
def test_bad_input(case, context, capsys):
    if isinstance(case.expect, type):
        with pytest.raises(case.expect) as e:
            case.call(context)
        text = str(e.value)
    elif isinstance(case.expect, int):
        code = case.call(context)
        err = capsys.readouterr().err
        assert "Traceback" not in err, err
        lines = [line for line in err.splitlines() if re.match(r"dynsdpb \w+: error: ", line)]
        assert code == case.expect and len(lines) == 1, err[-3000:]
        text = lines[0]
    else:
        text = case.call(context)
    assert re.search(case.message, text), text
