"""Every committed study result (benchmarks/results/*.json) re-summarized by this version of the code gives the
numbers and the tables that are committed beside it: what ``--summarize-only`` (or a rerun with every run finished)
rebuilds from a result's runs does not silently change a published table.

Intervals are compared to 2e-4 relative: the committed ones used a 3-decimal t table (4.303 for t(0.975, 2)), this
code the exact quantile (4.30265); no printed digit moves. Three results predate the per-epoch differences and
per-seed tables: their committed table must appear, line for line and in order, inside the regenerated one."""

import json
import math
import sys
from pathlib import Path

import pytest
from helpers import REPO

if str(REPO) not in sys.path:  # the benchmarks package, as `python -m pytest` from the repository root has it
    sys.path.insert(0, str(REPO))

from benchmarks import bench_gsm8k, bench_nlu_regimes, bench_regimes, bench_self_training  # noqa: E402
from benchmarks.harness import from_mapping  # noqa: E402

RESULTS = REPO / "benchmarks" / "results"
STUDIES = {
    "gsm8k": bench_gsm8k,
    "regimes": bench_regimes,
    "nlu_regimes": bench_nlu_regimes,
    "self_training": bench_self_training,
}
# Written before the tables gained per-epoch differences and per-seed curves (and the machine fields).
OLDER_TABLES = {"regimes_decoder_cpu", "regimes_decoder_long", "regimes_nlu_cpu"}
# The one printed digit the exact t quantile moves (issue 32): MCC of `repeat`, final, half-width 2.776 * s / sqrt(5)
# = 9.849... with the old table's t(0.975, 4) = 2.776, 9.850... with the exact 2.77645.
T_QUANTILE_CHANGES = {"regimes_nlu_cpu": [("| repeat | 5 | 7.0 ± 9.8 |", "| repeat | 5 | 7.0 ± 9.9 |")]}


def current_spelling(config: dict) -> dict:
    """A committed config in today's key names: the gsm8k results were written before ``distillation:`` took the
    DynSDPBConfig field names (``alpha`` then, ``distillation_alpha`` now)."""
    fields = config.get("distillation") or {}
    renamed = {k if k.startswith("distillation_") else f"distillation_{k}": v for k, v in fields.items()}
    return {**config, "distillation": renamed} if fields else config


def committed_studies() -> list[Path]:
    return [p for p in sorted(RESULTS.glob("*.json")) if json.loads(p.read_text()).get("benchmark") in STUDIES]


def assert_contains(committed, new, where: str) -> None:
    """Every key and value of ``committed`` is in ``new`` (``new`` may say more); intervals to 2e-4 relative."""
    if isinstance(committed, dict):
        assert isinstance(new, dict), where
        for key, value in committed.items():
            assert str(key) in {str(k) for k in new}, f"{where}.{key}: missing"
            assert_contains(value, new[key if key in new else int(key)], f"{where}.{key}")
    elif isinstance(committed, list):
        assert isinstance(new, list) and len(new) == len(committed), where
        for i, (a, b) in enumerate(zip(committed, new, strict=True)):
            assert_contains(a, b, f"{where}[{i}]")
    elif isinstance(committed, float) and not isinstance(new, bool):
        assert math.isnan(committed) == math.isnan(new) and (
            math.isnan(committed) or new == pytest.approx(committed, rel=2e-4, abs=1e-12)
        ), f"{where}: {committed} committed, {new} now"
    else:
        assert committed == new, f"{where}: {committed!r} committed, {new!r} now"


def test_every_study_result_is_found():
    names = {p.stem for p in committed_studies()}
    assert {"gsm8k_cpu", "regimes_decoder_long_replication", "regimes_nlu_cpu", "self_training_cpu"} <= names


@pytest.mark.parametrize("path", committed_studies(), ids=lambda p: p.stem)
def test_committed_result_resummarizes_to_its_committed_tables(path):
    result = json.loads(path.read_text())
    study = STUDIES[result["benchmark"]]
    # The committed config, read as the study reads its YAML (its effective values: the batch-size default is one)
    config = from_mapping(study.Config, current_spelling(result["config"]), path.name)
    summary, table = study.summary_and_table(config, result["runs"])
    summary = json.loads(json.dumps(summary))  # as the JSON holds it: string keys, tuples as lists
    assert_contains(result["summary"], summary, path.stem)
    md = path.with_suffix(".md")
    if not md.exists():
        return
    committed = md.read_text()
    if path.stem not in OLDER_TABLES:
        assert table == committed
        return
    lines = iter(table.splitlines())
    old = committed.replace(" -0.0 ", " 0.0 ")  # older tables printed a difference of zero to 0.1 points as -0.0
    for before, after in T_QUANTILE_CHANGES.get(path.stem, []):
        assert old.count(before) == 1
        old = old.replace(before, after)
    missing = [line for line in old.splitlines() if not any(line == new for new in lines)]
    assert not missing, f"{md.name}: committed lines not regenerated (in order): {missing[:3]}"
