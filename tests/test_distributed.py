"""DynSDPB across 2 processes (gloo, CPU) through torchrun: per-rank overlap, coverage, resume, and the same run as
one process on a model without loss kwargs."""

import json
import os
import socket
import subprocess
import sys

import pytest

SCRIPT = os.path.join(os.path.dirname(__file__), "scripts", "dist_train.py")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(out, *args):
    # torchrun, as TRL recipes are launched with it too; the Trainer initializes gloo from its environment.
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        str(free_port()),
        SCRIPT,
        str(out),
        *map(str, args),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp")
    launch(out, 8)
    launch(out, 8, out / "run" / "checkpoint-4")
    load = lambda tag, r: json.loads((out / f"{tag}-rank{r}.json").read_text())  # noqa: E731
    return out, {r: load("full", r) for r in (0, 1)}, {r: load("resumed", r) for r in (0, 1)}


def fresh(batch):
    return batch[1::2]


def test_each_rank_repeats_its_own_previous_fresh_rows(runs):
    _, full, _ = runs
    for r in (0, 1):
        assert full[r]["world"] == 2
        seen = full[r]["seen"]
        assert len(seen) == 8 and all(len(b) == 2 for b in seen)
        for prev, cur in zip(seen, seen[1:], strict=False):
            assert cur[0::2] == fresh(prev)


def test_ranks_together_see_every_example_once_per_epoch(runs):
    _, full, _ = runs
    # 16 examples, effective step batch 4 (2 per rank): an epoch is 8 steps of 2 fresh rows per step.
    fresh_rows = [x for r in (0, 1) for b in full[r]["seen"] for x in fresh(b)]
    assert sorted(fresh_rows) == list(range(16))


def test_losses_are_finite_and_distillation_runs_on_every_rank(runs):
    _, full, _ = runs
    for r in (0, 1):
        logs = full[r]["logs"]
        assert all(abs(h["loss"]) < 1e3 for h in logs)
        assert logs[0]["dynsdpb/distilled_tokens"] == 0 and logs[-1]["dynsdpb/distilled_tokens"] > 0


def test_checkpoint_holds_each_ranks_targets_and_resumes_the_same_batches(runs):
    out, full, resumed = runs
    ckpt = out / "run" / "checkpoint-4"
    assert (ckpt / "dynsdpb_targets_rank0.safetensors").exists()
    assert (ckpt / "dynsdpb_targets_rank1.safetensors").exists()
    for r in (0, 1):
        assert resumed[r]["seen"] == full[r]["seen"][4:]
        after = [h["loss"] for h in resumed[r]["logs"]][4:]
        assert after == pytest.approx([h["loss"] for h in full[r]["logs"]][4:], rel=1e-4)


def test_two_processes_train_like_one_on_a_model_without_loss_kwargs(tmp_path, tokenizer):
    # Gemma 4 (Gemma4ForConditionalGeneration) takes no loss kwargs: transformers passes num_items_in_batch=None and
    # divides each micro-batch loss by the accumulation steps, and DDP averages over the processes. The KD term is
    # normalised by the distilled tokens of the whole step (both ranks), so neither may shrink it.
    # 2 processes x 2 rows x accumulation 2 against 1 process x 8 rows: the same 8 rows per step, in the same order.
    import torch
    from families import PARITY, build, equal_completion_rows
    from helpers import sft_kwargs

    from dynsdpb_selfplay import DynSDPBConfig, DynSDPBTrainer

    launch(tmp_path, "parity", "gemma4")
    two = json.loads((tmp_path / "parity-gemma4.json").read_text())
    assert two["world"] == 2 and two["accepts_loss_kwargs"] is False
    one = DynSDPBTrainer(
        model=build("gemma4", len(tokenizer)),
        processing_class=tokenizer,
        args=DynSDPBConfig(**sft_kwargs(tmp_path / "one", per_device_train_batch_size=8, **PARITY)),
        train_dataset=equal_completion_rows(),
    )
    one.train()
    logs = [h for h in one.state.log_history if "loss" in h]
    assert logs[-1]["dynsdpb/kd_loss"] > 0
    for key in ("loss", "dynsdpb/kd_loss", "dynsdpb/ce"):
        got, want = [h[key] for h in two["logs"]], [h[key] for h in logs]
        assert got == pytest.approx(want, rel=1e-5, abs=1e-6), key
    weights = torch.load(tmp_path / "parity-gemma4.pt")
    for name, value in one.model.named_parameters():
        torch.testing.assert_close(weights[name], value.detach(), rtol=1e-5, atol=1e-6, msg=name)
