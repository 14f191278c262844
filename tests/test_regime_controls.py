"""The controls study's pieces (issue 32): arms that change training fields, the pre-declared primary outcome with
Holm's adjustment, per-sample files and the seed x item bootstrap, and label smoothing reaching TRL's loss."""

import sys

import pytest
import torch
import yaml
from helpers import REPO, make_model

if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks import regime_config  # noqa: E402
from benchmarks.harness import from_mapping  # noqa: E402
from benchmarks.regime_plots import markdown  # noqa: E402
from benchmarks.regime_stats import primary_outcome  # noqa: E402
from benchmarks.samples import paired_bootstrap, read_samples, write_samples  # noqa: E402
from benchmarks.tiny import make_tokenizer, sft_kwargs  # noqa: E402
from dynsdpb_selfplay.errors import UserInputError  # noqa: E402
from dynsdpb_selfplay.stats import holm, paired_t_p  # noqa: E402

CONTROLS = REPO / "benchmarks/configs/regimes_decoder_controls.yaml"


def controls(**changes):
    data = yaml.safe_load(CONTROLS.read_text())
    data.update(changes)
    return from_mapping(regime_config.RegimesStudy, data, "controls.yaml")


def test_arms_change_only_their_own_training_fields():
    study = controls()
    regime = study.regimes[0]
    cfg = {arm: regime_config.run_config(study, regime, arm, 5, "c.yaml").training for arm in study.arms}
    assert cfg["sft-label-smoothing"].args["label_smoothing_factor"] == 0.1
    assert cfg["sft-lora-dropout"].lora.lora_dropout == 0.1 and cfg["sft-lora-dropout"].lora.r == 16
    assert cfg["sft"].lora.lora_dropout == 0.0 and "label_smoothing_factor" not in cfg["sft"].args
    assert cfg["static"].args["distillation_schedule"] == "static"
    # Every arm trains the same steps at the same learning rate.
    assert len({(c.args["max_steps"], c.args["learning_rate"]) for c in cfg.values()}) == 1


def test_an_arm_may_not_set_what_the_study_fixes_nor_add_lora_to_full_fine_tuning():
    data = yaml.safe_load(CONTROLS.read_text())
    data["arms"]["bad"] = {"trainer": "sft", "training": {"learning_rate": 1e-4}}
    with pytest.raises(UserInputError, match=r"arms.bad.*learning_rate"):
        from_mapping(regime_config.RegimesStudy, data, "c.yaml")
    study = controls(regimes=[{"label": "full-32", "size": 32, "learning_rate": 1e-5}])
    with pytest.raises(UserInputError, match="sft-lora-dropout changes lora.*full-32"):
        regime_config.run_config(study, study.regimes[0], "sft-lora-dropout", 5, "c.yaml")
    with pytest.raises(UserInputError, match=r"primary.*\['nope'\]"):
        controls(primary={"arm": "dynamic", "versus": ["nope"]})


def test_the_controls_study_pairs_its_new_arms_with_the_replications_runs(tmp_path):
    """Its sft and dynamic runs are the replication's, copied (identical run and scoring configs)."""
    import argparse

    study = controls()
    args = argparse.Namespace(seeds=study.seeds, arms=list(study.arms), regimes=None, config=str(CONTROLS))
    regime_config.select(study, args)
    log = tmp_path / "runs.jsonl"
    copied = regime_config.reuse_runs(study, args, log, str(CONTROLS))
    assert copied == 21  # base + 10 seeds x (sft, dynamic)


def test_paired_t_p_and_holm_by_hand():
    # differences 1, 2, 3, 4: mean 2.5, sd 1.291, t = 3.873 on 3 df -> two-sided p = 0.030466 (scipy.stats.ttest_1samp)
    assert paired_t_p([1, 2, 3, 4]) == pytest.approx(0.0304663, rel=1e-5)
    assert paired_t_p([0, 0, 0]) == 1.0 and paired_t_p([2, 2]) == 0.0
    # sorted 0.01, 0.03, 0.04 with m = 3: 3 x 0.01 = 0.03, 2 x 0.03 = 0.06, max(0.06, 1 x 0.04) = 0.06
    assert holm({"a": 0.01, "b": 0.04, "c": 0.03}) == pytest.approx({"a": 0.03, "b": 0.06, "c": 0.06})
    assert holm({"a": 0.6, "b": 0.7}) == pytest.approx({"a": 1.0, "b": 1.0})


def _run(arm, seed, correct, tmp_path):
    """A run of one epoch on test questions q0.. with the given 0/1 correctness, its per-sample file written."""
    rows = [
        {"epoch": 1, "split": "test", "id": f"q{i}", "flexible": bool(c), "strict": bool(c)}
        for i, c in enumerate(correct)
    ]
    path = write_samples(tmp_path / f"{arm}_{seed}.jsonl.gz", rows)
    acc = sum(correct) / len(correct)
    epoch = {"epoch": 1, "test": {"flexible": acc}, "val": {"flexible": 0.0}}
    return {"regime": "r", "arm": arm, "seed": seed, "epochs": [epoch], "samples": path}


def test_the_seed_by_item_bootstrap_and_the_primary_outcome(tmp_path):
    runs = [
        _run("dyn", 0, [1, 1, 0, 1], tmp_path),
        _run("dyn", 1, [1, 0, 1, 1], tmp_path),
        _run("dyn", 2, [1, 1, 1, 0], tmp_path),
        _run("ls", 0, [1, 0, 0, 0], tmp_path),
        _run("ls", 1, [0, 0, 1, 0], tmp_path),
        _run("ls", 2, [1, 0, 0, 0], tmp_path),
        _run("do", 0, [1, 1, 0, 0], tmp_path),
        _run("do", 1, [1, 0, 1, 1], tmp_path),
        _run("do", 2, [0, 1, 1, 0], tmp_path),
    ]
    row = {"epoch": 1, "split": "test", "id": "q2", "flexible": False, "strict": False}
    assert read_samples(runs[0]["samples"])[2] == row
    pairs = [(runs[s], runs[3 + s], 1, 1) for s in range(3)]
    boot = paired_bootstrap(pairs, "flexible")
    # dyn - ls per seed: 0.5, 0.5, 0.5 -> mean 0.5; items differ, so the interval has width
    assert boot["mean"] == pytest.approx(0.5) and boot["seeds"] == 3 and boot["items"] == 4
    assert boot["low"] < 0.5 < boot["high"] and -1 <= boot["low"] and boot["high"] <= 1
    primary = regime_config.Primary(arm="dyn", versus=["ls", "do"])
    out = primary_outcome(runs, "flexible", primary)
    ls, do = out["versus"]["ls"], out["versus"]["do"]
    assert ls["mean"] == pytest.approx(0.5) and ls["p"] == 0.0  # the same +0.5 on every seed
    # dyn - do: 0.25, 0, 0.25 -> t-test p by hand: mean 1/6, sd 0.1443, t = 2.0 on 2 df -> p = 0.18350
    assert do["p"] == pytest.approx(0.183503, rel=1e-4)
    assert ls["p_holm"] == 0.0 and do["p_holm"] == pytest.approx(0.183503, rel=1e-4)
    assert ls["below_alpha"] and not do["below_alpha"] and "bootstrap" in do
    # A control paired on one seed only has no p yet and stays out of Holm's family.
    one = primary_outcome([r for r in runs if r["arm"] != "do" or r["seed"] == 0], "flexible", primary)
    assert one["versus"]["do"]["p_holm"] != one["versus"]["do"]["p_holm"] and one["versus"]["ls"]["p_holm"] == 0.0
    assert not one["versus"]["do"]["below_alpha"]
    # A run without its file: no bootstrap, the t-interval and p stay.
    del runs[6]["samples"]
    out = primary_outcome(runs, "flexible", primary)
    assert "bootstrap" not in out["versus"]["do"] and "bootstrap" in out["versus"]["ls"]
    md = markdown({"metric": "flexible", "regimes": {}, "primary": {"r": out}}, {"baselines": []})
    assert "| ls | 50.0 ± 0.0 (3/3) **>0** |" in md and "| do |" in md and "Holm" in md


def test_label_smoothing_reaches_trls_sft_loss(tmp_path):
    """SFT with label_smoothing_factor eps: (1 - eps) * NLL + eps * mean over the vocabulary of -log p, on the
    completion tokens (transformers' LabelSmoother, which TRL's SFTTrainer calls), not the plain NLL."""
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    tok = make_tokenizer()
    model = make_model(len(tok))
    rows = [{"prompt": [{"role": "user", "content": "1+1"}], "completion": [{"role": "assistant", "content": "2"}]}]
    args = SFTConfig(**sft_kwargs(tmp_path, label_smoothing_factor=0.1))
    with pytest.warns(FutureWarning, match="label_smoothing_factor"):
        trainer = SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tok)
    batch = trainer.data_collator([trainer.train_dataset[0]])
    loss = trainer.compute_loss(model, dict(batch)).detach()
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"]).logits[0, :-1].float()
    labels = batch["labels"][0, 1:]
    keep = labels != -100
    logp = torch.log_softmax(logits[keep], dim=-1)
    nll = -logp.gather(1, labels[keep, None]).mean()
    smooth = -logp.mean()
    assert float(loss) == pytest.approx(float(0.9 * nll + 0.1 * smooth), rel=1e-4)
    assert abs(float(loss) - float(nll)) > 1e-3
