"""Safety: no pickle and no shell in the package, remote code off by default, safetensors-only weights, and paths
from configs that stay where they belong. (A run folder is never replaced without --overwrite: test_bad_input.py.)"""

from __future__ import annotations

import ast
import inspect
import sys
import types
from pathlib import Path

import pytest
import yaml
from bad_inputs import model_variant, round_config, sft_cli
from helpers import make_model, make_tokenizer

import dynsdpb_selfplay
from dynsdpb_selfplay.errors import UserInputError
from dynsdpb_selfplay.rounds.config import load_config
from dynsdpb_selfplay.rounds.rundir import RunDir

PACKAGE = Path(dynsdpb_selfplay.__file__).parent
SOURCES = sorted(PACKAGE.rglob("*.py"))


def calls(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            yield node, ast.unparse(node.func)


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_pickle_no_shell_no_unsafe_yaml(path):
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [a.name for a in node.names] + [getattr(node, "module", None) or ""]
            assert not {"pickle", "dill", "joblib", "marshal", "shelve"} & set(names), ast.unparse(node)
    for node, func in calls(tree):
        if func == "torch.load":
            assert any(k.arg == "weights_only" and ast.unparse(k.value) == "True" for k in node.keywords), func
        assert func not in ("os.system", "os.popen", "eval", "exec", "yaml.load", "yaml.unsafe_load"), func
        assert not any(k.arg == "shell" and ast.unparse(k.value) != "False" for k in node.keywords), func
        if func.startswith("subprocess."):  # argument lists only, never a command string
            assert node.args and isinstance(node.args[0], (ast.List, ast.Name)), ast.unparse(node)


def test_generation_shards_pass_arguments_as_a_list(monkeypatch, tmp_path):
    from dynsdpb_selfplay.rounds import shards

    started = []

    class Proc:
        def __init__(self, cmd, **kw):
            started.append((cmd, kw))

        def wait(self):
            return 0

    monkeypatch.setattr(shards.subprocess, "Popen", Proc)
    weights = str(tmp_path / "m; rm -rf ~ && echo $HOME")
    shards.run_shards(tmp_path, 1, weights, 2)
    for cmd, kw in started:
        assert isinstance(cmd, list) and weights in cmd and "shell" not in kw


def test_remote_code_is_off_by_default(tmp_path):
    from dynsdpb_selfplay.cli import build_parser
    from dynsdpb_selfplay.cli.sft import make_parser
    from dynsdpb_selfplay.engines import EngineConfig
    from dynsdpb_selfplay.models import load_hf_model
    from dynsdpb_selfplay.rounds.config import RunConfig

    assert EngineConfig().trust_remote_code is False and RunConfig().engine.trust_remote_code is False
    assert build_parser().parse_args(["eval", "--model", "m"]).trust_remote_code is False
    assert inspect.signature(load_hf_model).parameters["trust_remote_code"].default is False
    _, training_args, _, _ = make_parser().parse_args_and_config(
        args=["--model_name_or_path", "m", "--output_dir", str(tmp_path), "--use_cpu", "--bf16", "false"]
    )
    assert training_args.trust_remote_code is False


def test_vllm_engine_loads_safetensors_without_remote_code(monkeypatch, tiny_model_dirs):
    """The arguments the vLLM engine gives ``vllm.LLM`` (a stand-in records them: no vLLM runs here)."""
    seen = {}

    class LLM:
        def __init__(self, **kwargs):
            seen.update(kwargs)

        def get_tokenizer(self):
            return make_tokenizer()

    monkeypatch.setitem(sys.modules, "vllm", types.SimpleNamespace(LLM=LLM))
    from dynsdpb_selfplay.engines.vllm import VLLMEngine

    VLLMEngine(str(tiny_model_dirs[0]))
    assert seen["trust_remote_code"] is False and seen["load_format"] == "safetensors"


def test_pickle_weights_are_refused_everywhere(tmp_path, tiny_model_dirs, capsys):
    """eval/run (resolve_model) are in test_bad_input.py; here the engine's weight update and `dynsdpb sft`."""
    from dynsdpb_selfplay.engines.hf import HFEngine

    pickled = model_variant(types.SimpleNamespace(tmp=tmp_path, model=str(tiny_model_dirs[0])), weights="pickle")
    tok = make_tokenizer()
    with pytest.raises(UserInputError, match="only pickle weights"):
        HFEngine(make_model(len(tok)), tok).update_weights(pickled)
    assert sft_cli(types.SimpleNamespace(tmp=tmp_path, model=pickled)) == 2
    assert "only pickle weights" in capsys.readouterr().err


def test_config_paths(tmp_path, monkeypatch):
    """run_dir from a config: relative and below the working folder, unless allow_absolute_paths; inputs (model,
    data) may be anywhere, they are only read."""
    monkeypatch.chdir(tmp_path)

    def load(**overrides):
        path = tmp_path / "run.yaml"
        path.write_text(yaml.safe_dump(round_config("/abs/model/dir", **overrides)))
        return load_config(path)

    assert load(run_dir="runs/../runs/a").run_dir == "runs/../runs/a"
    assert load(run_dir="/elsewhere/run", allow_absolute_paths=True).run_dir == "/elsewhere/run"
    for bad in ("/elsewhere/run", "../run", "~/run"):
        with pytest.raises(UserInputError, match="run_dir"):
            load(run_dir=bad)


def test_overwrite_removes_links_without_following_them(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep.txt").write_text("precious")
    run = tmp_path / "run"
    RunDir.create(run, {"a": 1}).close()
    (run / "link").symlink_to(outside, target_is_directory=True)
    RunDir.create(run, {"a": 2}, overwrite=True).close()
    assert (outside / "keep.txt").read_text() == "precious" and not (run / "link").exists()
