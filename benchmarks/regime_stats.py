"""Statistics of the regime studies (``bench_regimes``, ``bench_nlu_regimes``): per-epoch curves over seeds, the
epoch chosen on the validation split, and paired differences between arms with 95% t-intervals.

A run is a dict ``{"regime", "arm", "seed", "epochs": [{"epoch": e, "test": {...}, "val": {...}}, ...]}`` whose
``test``/``val`` hold metric values (accuracy, MCC, ...) after epoch ``e`` (1-based). Two arms are compared on the
same seed, which means the same training subset, initialisation and data order, so the seed-to-seed spread of the
data cancels in the difference.

* **final**: the metric on the test split after the last epoch.
* **validation-selected**: the test metric after the epoch with the best *validation* metric (the earliest on ties);
  the test split never chooses anything.

Where runs carry per-sample files (:mod:`benchmarks.samples`), a paired difference also gets a seed x item bootstrap
interval (``..._bootstrap``), which counts the choice of test questions as well as the seeds. A pre-declared
:func:`primary_outcome` adds paired t-test p-values, Holm-adjusted over its controls.
"""

from __future__ import annotations

from collections import Counter

from benchmarks.samples import paired_bootstrap
from dynsdpb_selfplay.stats import difference_summary, holm, paired_differences, paired_t_p, t_summary

__all__ = [
    "curve",
    "machines",
    "paired",
    "paired_bootstrap_of",
    "paired_curve",
    "pick",
    "picked_epoch",
    "primary_outcome",
    "seeds_across_machines",
    "select_epoch",
    "summarize",
    "summarize_regime",
]


def select_epoch(val: list[float]) -> int:
    """Index of the best validation value, the earliest on ties (the cheaper model when nothing is gained)."""
    if not val:
        raise ValueError("select_epoch of no epochs")
    return max(range(len(val)), key=lambda i: (val[i], -i))


def picked_epoch(run: dict, metric: str, how: str) -> dict:
    """The epoch record of ``run`` read for ``how``: its last (``"final"``) or its best on validation ``metric``
    (``"val"``)."""
    epochs = run["epochs"]
    if how == "final":
        return epochs[-1]
    if how == "val":
        return epochs[select_epoch([e["val"][metric] for e in epochs])]
    raise ValueError(f"how={how!r}: expected 'final' or 'val'")


def pick(run: dict, metric: str, how: str) -> float:
    """The test ``metric`` of ``run`` after its last epoch (``how="final"``) or after the epoch with the best
    validation ``metric`` (``how="val"``)."""
    return picked_epoch(run, metric, how)["test"][metric]


def _pairs(runs: list[dict], arm: str, baseline: str) -> list[tuple[dict, dict]]:
    """``(arm's run, baseline's run)`` for each seed both ran, by seed."""
    by = {(r["arm"], r["seed"]): r for r in runs}
    return [(by[(arm, s)], by[(baseline, s)]) for s in sorted(s for a, s in by if a == arm and (baseline, s) in by)]


def paired(runs: list[dict], arm: str, baseline: str, metric: str, how: str) -> dict | None:
    """Mean and 95% t-interval of ``pick(arm) - pick(baseline)`` over the seeds both arms ran (``None`` if none)."""
    mine = {r["seed"]: pick(r, metric, how) for r in runs if r["arm"] == arm}
    theirs = {r["seed"]: pick(r, metric, how) for r in runs if r["arm"] == baseline}
    return paired_differences(mine, theirs)


def paired_bootstrap_of(runs: list[dict], arm: str, baseline: str, metric: str, how: str) -> dict | None:
    """Seed x item bootstrap of ``arm - baseline`` at the epoch ``how`` picks (``None`` without per-sample files)."""
    pairs = [
        (a, b, picked_epoch(a, metric, how)["epoch"], picked_epoch(b, metric, how)["epoch"])
        for a, b in _pairs(runs, arm, baseline)
    ]
    return paired_bootstrap(pairs, metric) if pairs else None


def primary_outcome(runs: list[dict], metric: str, primary) -> dict:
    """The pre-declared comparison ``primary`` (``arm``, ``versus``, ``how``, ``alpha``): per control, the paired
    difference (t-interval), its two-sided paired t-test p-value, the Holm-adjusted p over the controls present and
    whether it is below ``alpha``, and the seed x item bootstrap where per-sample files exist."""
    out = {"arm": primary.arm, "how": primary.how, "alpha": primary.alpha, "versus": {}}
    for control in primary.versus:
        diff = paired(runs, primary.arm, control, metric, primary.how)
        if diff is not None:
            out["versus"][control] = {**diff, "p": paired_t_p(diff["per_seed"])}
            if boot := paired_bootstrap_of(runs, primary.arm, control, metric, primary.how):
                out["versus"][control]["bootstrap"] = boot
    # A control paired on one seed has no test yet (p NaN): it stays out of the family until it has two.
    adjusted = holm({c: d["p"] for c, d in out["versus"].items() if d["p"] == d["p"]})
    for control, d in out["versus"].items():
        p = adjusted.get(control, float("nan"))
        d.update(p_holm=p, below_alpha=p <= primary.alpha)
    return out


def paired_curve(runs: list[dict], arm: str, baseline: str, metric: str) -> list[dict]:
    """Per epoch ``e``, mean and 95% t-interval over the seeds both arms ran of arm's test ``metric`` after ``e``
    minus the baseline's after ``e`` (epochs both have; ``[]`` without a common seed). Every epoch, not one chosen:
    it shows where a difference appears and whether it lasts."""
    pairs = _pairs(runs, arm, baseline)
    n = min((min(len(a["epochs"]), len(b["epochs"])) for a, b in pairs), default=0)
    return [
        difference_summary([a["epochs"][e]["test"][metric] - b["epochs"][e]["test"][metric] for a, b in pairs])
        for e in range(n)
    ]


def curve(runs: list[dict], arm: str, metric: str, split: str = "test") -> list[dict]:
    """Mean and 95% t-interval over seeds of ``split``'s ``metric`` after each epoch."""
    mine = [r for r in runs if r["arm"] == arm]
    n = min(len(r["epochs"]) for r in mine)
    return [t_summary([r["epochs"][e][split][metric] for r in mine]) for e in range(n)]


def summarize_regime(runs: list[dict], metric: str, baselines: tuple[str, ...]) -> dict:
    """Per arm: test curve, final and validation-selected metric, chosen epochs, each seed's test curve, and paired
    differences to each baseline present, for both ways of picking the epoch and after every epoch."""
    out = {}
    for arm in dict.fromkeys(r["arm"] for r in runs):
        mine = [r for r in runs if r["arm"] == arm]
        cell = {
            "seeds": sorted(r["seed"] for r in mine),
            "curve": curve(runs, arm, metric),
            "val_curve": curve(runs, arm, metric, "val"),
            "final": t_summary([pick(r, metric, "final") for r in mine]),
            "val_selected": t_summary([pick(r, metric, "val") for r in mine]),
            "selected_epochs": [select_epoch([e["val"][metric] for e in r["epochs"]]) + 1 for r in mine],
            "per_seed": [
                {
                    "seed": r["seed"],
                    "test": [e["test"][metric] for e in r["epochs"]],
                    "selected_epoch": select_epoch([e["val"][metric] for e in r["epochs"]]) + 1,
                }
                for r in sorted(mine, key=lambda r: r["seed"])
            ],
        }
        for baseline in baselines:
            if baseline != arm:
                for how in ("final", "val"):
                    diff = paired(runs, arm, baseline, metric, how)
                    if diff is not None:
                        cell[f"minus_{baseline}_{how}"] = diff
                    if boot := paired_bootstrap_of(runs, arm, baseline, metric, how):
                        cell[f"minus_{baseline}_{how}_bootstrap"] = boot
                if per_epoch := paired_curve(runs, arm, baseline, metric):
                    cell[f"minus_{baseline}_curve"] = per_epoch
        out[arm] = cell
    return out


def machines(runs: list[dict]) -> list[dict]:
    """The processor kinds and number formats the trained runs came from, with their run counts: a study's paired
    differences mean something only within one (runs recorded before these fields existed count as unknown)."""
    kinds = Counter((r.get("cpu"), r.get("bf16")) for r in runs if r["arm"] != "base")
    return [{"cpu": cpu, "bf16": bf16, "runs": n} for (cpu, bf16), n in kinds.items()]


def seeds_across_machines(runs: list[dict]) -> list[str]:
    """``"<regime> seed <s>"`` for each seed whose arms ran on more than one processor kind or number format: its
    paired differences compare more than the arm. A study continued on another machine keeps every seed's arms
    together (runs go seed by seed), so this is empty unless a machine change fell between two arms of a seed."""
    kinds: dict[tuple, set] = {}
    for r in runs:
        if r["arm"] != "base":
            kinds.setdefault((r["regime"], r["seed"]), set()).add((r.get("cpu"), r.get("bf16")))
    return [f"{regime} seed {seed}" for (regime, seed), k in kinds.items() if len(k) > 1]


def summarize(
    runs: list[dict], metric: str = "flexible", baselines: tuple[str, ...] = ("sft", "repeat"), primary=None
) -> dict:
    """Per regime: :func:`regime_stats.summarize_regime`; with ``primary`` (a :class:`Primary`), also its outcome
    per regime (:func:`regime_stats.primary_outcome`)."""
    base = next((r for r in runs if r["arm"] == "base"), None)
    out = {
        "metric": metric,
        "base": base["epochs"][0] if base else None,
        "machines": machines(runs),
        "seeds_across_machines": seeds_across_machines(runs),
        "regimes": {},
    }
    for label in dict.fromkeys(r["regime"] for r in runs if r["arm"] != "base"):
        mine = [r for r in runs if r["regime"] == label]
        out["regimes"][label] = summarize_regime(mine, metric, baselines)
        if primary is not None:
            out.setdefault("primary", {})[label] = primary_outcome(mine, metric, primary)
    return out
