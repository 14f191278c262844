"""dynsdpb_selfplay/stats.py by hand: the paired test that decides whether a round is kept, the exact t quantile,
t-, Wilson and bootstrap intervals, and paired differences."""

import math
import statistics

import pytest

from dynsdpb_selfplay.stats import (
    Z975,
    bootstrap_ci,
    mean_ci95,
    paired_differences,
    paired_drop,
    t_quantile,
    t_summary,
    wilson_interval,
)


def test_paired_drop_by_hand():
    # strict 4% -> 0% on 100 questions: 4 lost, none gained, p = 1/2^4.
    got = paired_drop([True] * 4 + [False] * 96, [False] * 100)
    assert got == {"lost": 4, "gained": 0, "delta": -0.04, "p": 0.0625}
    # 3 lost, 1 gained: P(X >= 3), X ~ Bin(4, 1/2) = (4 + 1) / 16; the same questions right in both do not count.
    got = paired_drop([1, 1, 1, 0, 1, 1], [0, 0, 0, 1, 1, 1])
    assert (got["lost"], got["gained"], got["p"]) == (3, 1, 5 / 16) and got["delta"] == pytest.approx(-2 / 6)
    assert paired_drop([True, False], [True, False])["p"] == 1.0  # nothing discordant: no evidence of a drop
    assert paired_drop([False] * 3, [True] * 3)["p"] == 1.0  # all gained
    with pytest.raises(ValueError, match="pair them by question"):
        paired_drop([True], [True, False])


def test_t_quantile_is_exact_where_the_old_table_had_gaps():
    # Published two-sided 95% values, incl. 11-14 degrees of freedom that a table ending at 10, 15, 20 lacked.
    for df, t in {
        1: 12.7062,
        2: 4.3027,
        4: 2.7764,
        10: 2.2281,
        11: 2.2010,
        12: 2.1788,
        13: 2.1604,
        14: 2.1448,
        30: 2.0423,
        120: 1.9799,
    }.items():
        assert t_quantile(0.975, df) == pytest.approx(t, abs=5e-5), df
    assert t_quantile(0.025, 12) == pytest.approx(-t_quantile(0.975, 12)) and t_quantile(0.5, 7) == 0.0
    assert t_quantile(0.995, 5) == pytest.approx(4.0321, abs=5e-5)
    assert t_quantile(0.975, 10**6) == pytest.approx(Z975, abs=1e-5)  # the normal limit
    with pytest.raises(ValueError):
        t_quantile(1.0, 3)


def test_mean_ci95_and_paired_differences_by_hand():
    # stdev 0.1 over 3 seeds: half-width t(0.975, 2) * 0.1 / sqrt(3) = 4.30265 * 0.057735 = 0.24841.
    mean, half = mean_ci95([0.1, 0.2, 0.3])
    assert mean == pytest.approx(0.2) and half == pytest.approx(0.24841, abs=1e-5)
    assert math.isnan(mean_ci95([0.5])[1])
    values = [float(v) for v in range(15)]  # 15 seeds: t(0.975, 14) = 2.1448 (the table's fallback gave 2.228)
    assert mean_ci95(values)[1] == pytest.approx(2.14479 * statistics.stdev(values) / math.sqrt(15), rel=1e-5)
    with pytest.raises(ValueError):
        mean_ci95([])
    # Paired by seed: seed 3 only in b is left out; differences 0.1, 0.0, 0.2 -> mean 0.1, stdev 0.1 (as above).
    got = paired_differences({0: 0.5, 1: 0.6, 2: 0.7}, {2: 0.5, 0: 0.4, 1: 0.6, 3: 0.9})
    assert got["per_seed"] == pytest.approx([0.1, 0.0, 0.2]) and (got["n"], got["wins"], got["losses"]) == (3, 2, 0)
    assert got["mean"] == pytest.approx(0.1) and got["ci95"] == pytest.approx(0.24841, abs=1e-5)
    assert paired_differences({0: 1.0}, {1: 1.0}) is None
    # Two seeds: stdev sqrt(2), half-width t(0.975, 1) * sqrt(2) / sqrt(2) = 12.7062.
    assert t_summary([2.0, 4.0]) == {"mean": 3.0, "ci95": pytest.approx(12.7062, abs=1e-4), "n": 2}


def test_wilson_interval_by_hand():
    # 7/100, z = 1.96: centre (0.07 + z^2/200) / (1 + z^2/100) = 0.085908,
    # half z * sqrt(0.07 * 0.93 / 100 + z^2 / 40000) / 1.038415 = 0.051588 -> (0.03432, 0.13750).
    lo, hi = wilson_interval(7, 100)
    assert lo == pytest.approx(0.03432, abs=1e-5) and hi == pytest.approx(0.13750, abs=1e-5)
    assert (
        wilson_interval(0, 100)[0] == pytest.approx(0, abs=1e-12)
        and wilson_interval(100, 100)[1] == 1
        and wilson_interval(0, 0) == (0, 1)
    )


def test_bootstrap_ci_over_seeds_and_items():
    est, lo, hi = bootstrap_ci([[1, 0, 1, 1], [1, 1, 0, 1]], resamples=500)
    assert est == 0.75 and 0 <= lo < est < hi <= 1
    assert bootstrap_ci([[1, 1], [1, 1]]) == (1.0, 1.0, 1.0)  # no spread anywhere: a point
    assert bootstrap_ci([[0, 1]], resamples=300, seed=1) == bootstrap_ci([[0, 1]], resamples=300, seed=1)
    with pytest.raises(ValueError, match="same items"):
        bootstrap_ci([[1, 0], [1]])
