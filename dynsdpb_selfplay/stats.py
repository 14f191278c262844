"""Statistics for comparing models: one place for every interval and paired comparison the library and the
benchmarks report.

* :func:`t_quantile`: the exact Student t quantile (scipy's; no table, so 11-14 degrees of freedom get their own
  values: t(0.975, 14) = 2.1448, not 10's 2.228).
* :func:`mean_ci95` / :func:`t_summary`: mean and half-width of the 95% t-interval over seeds,
  ``t(0.975, n-1) * stdev / sqrt(n)``; a binomial interval of one run would hide the seed-to-seed spread.
* :func:`wilson_interval`: the Wilson score interval of one proportion (accuracy on ``n`` questions).
* :func:`paired_differences`: the paired (same seed) difference of two arms: mean, t-interval, per-seed values, and
  how many seeds each side is ahead; the seed's own spread (data subset, initialisation, order) cancels in it.
* :func:`paired_t_p` / :func:`holm`: the two-sided p-value of a paired t-test (mean difference 0), and Holm's
  step-down adjustment of several such p-values (one pre-declared arm against each of ``m`` controls):
  the ``k``-th smallest ``p_(k)`` becomes ``max_{j<=k} min(1, (m - j + 1) p_(j))``, which keeps the chance of any
  false "different" at or below alpha over the ``m`` comparisons.
* :func:`bootstrap_ci`: a percentile interval of the grand mean over a seed x item table, resampling seeds and
  items, for when questions as well as seeds vary.
* :func:`paired_drop`: is model B worse than model A on the same n questions, beyond noise? Only the discordant
  questions carry information (McNemar): with ``b`` = right under A and wrong under B, ``c`` = wrong under A and right
  under B, under "no difference" each discordant question falls either way with probability 1/2, so the one-sided
  exact p-value of a drop is::

      p = P(X >= b),  X ~ Binomial(b + c, 1/2)

  e.g. strict accuracy 4% -> 0% on 100 questions (b = 4, c = 0): p = 1/16 = 0.0625.
"""

from __future__ import annotations

import math
import random
import statistics
from collections.abc import Callable, Mapping, Sequence
from functools import lru_cache
from math import comb

__all__ = [
    "bootstrap_ci",
    "difference_summary",
    "holm",
    "mean_ci95",
    "paired_differences",
    "paired_drop",
    "paired_t_p",
    "t_quantile",
    "t_summary",
    "wilson_interval",
]

Z975 = 1.959964  # the standard normal's 97.5% quantile, to the 6 decimals every committed Wilson interval used


@lru_cache(maxsize=1024)
def t_quantile(p: float, df: float) -> float:
    """The ``p`` quantile of Student's t with ``df`` degrees of freedom (``scipy.stats.t.ppf``: exact, no table)."""
    if not 0.0 < p < 1.0 or not df > 0:
        raise ValueError(f"t_quantile(p={p}, df={df}): need 0 < p < 1 and df > 0")
    from scipy.stats import t

    return float(t.ppf(p, df))


def mean_ci95(values: Sequence[float]) -> tuple[float, float]:
    """Mean and half-width of its 95% Student-t interval, ``t(0.975, n-1) * stdev / sqrt(n)`` (NaN for one value);
    over seeds, where a binomial interval of one run would hide the seed-to-seed spread."""
    if not values:
        raise ValueError("mean_ci95 of no values")
    mean = statistics.fmean(values)
    if len(values) < 2:
        return mean, float("nan")
    return mean, t_quantile(0.975, len(values) - 1) * statistics.stdev(values) / math.sqrt(len(values))


def t_summary(values: Sequence[float]) -> dict:
    """``{"mean", "ci95", "n"}``: :func:`mean_ci95` of ``values`` and their count."""
    mean, half = mean_ci95(values)
    return {"mean": mean, "ci95": half, "n": len(values)}


def difference_summary(diffs: Sequence[float]) -> dict:
    """:func:`t_summary` of paired differences, the differences themselves (``per_seed``) and how many are above
    (``wins``) and below (``losses``) zero."""
    return {
        **t_summary(diffs),
        "per_seed": list(diffs),
        "wins": sum(d > 0 for d in diffs),
        "losses": sum(d < 0 for d in diffs),
    }


def paired_differences(a: Mapping, b: Mapping) -> dict | None:
    """:func:`difference_summary` of ``a[k] - b[k]`` over the keys (seeds) both have, in sorted key order; ``None``
    when they share none."""
    keys = sorted(k for k in a if k in b)
    return difference_summary([a[k] - b[k] for k in keys]) if keys else None


def paired_t_p(diffs: Sequence[float]) -> float:
    """Two-sided p-value of the paired t-test that the mean of ``diffs`` is 0: ``2 * P(T > |mean| / (sd / sqrt(n)))``
    with ``T ~ t(n - 1)``; 1.0 when every difference is 0, 0.0 when they are all equal and not 0, NaN below 2."""
    n = len(diffs)
    if n < 2:
        return float("nan")
    mean, sd = statistics.fmean(diffs), statistics.stdev(diffs)
    if sd == 0:
        return 1.0 if mean == 0 else 0.0
    from scipy.stats import t

    return float(2 * t.sf(abs(mean) / (sd / math.sqrt(n)), n - 1))


def holm(pvalues: Mapping[str, float]) -> dict[str, float]:
    """Holm-adjusted p-values of ``pvalues`` (module docstring), by the same keys. Compare each with alpha."""
    order = sorted(pvalues, key=lambda k: pvalues[k])
    m, running, out = len(order), 0.0, {}
    for j, key in enumerate(order):
        running = max(running, min(1.0, (m - j) * pvalues[key]))
        out[key] = running
    return {k: out[k] for k in pvalues}


def wilson_interval(correct: int, total: int, z: float = Z975) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion (well-behaved near 0 and 1, unlike the normal one)."""
    if total == 0:
        return (0.0, 1.0)
    p = correct / total
    denom = 1 + z * z / total
    centre = (p + z * z / (2 * total)) / denom
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def bootstrap_ci(
    table: Sequence[Sequence[float]],
    level: float = 0.95,
    resamples: int = 2000,
    seed: int = 0,
    stat: Callable[[list[list[float]]], float] | None = None,
) -> tuple[float, float, float]:
    """``(estimate, low, high)``: ``stat`` (default: the grand mean) of a seed x item ``table`` (``table[s][i]``: item
    ``i``'s score under seed ``s``, e.g. 0/1 correctness) and its percentile bootstrap interval. Each resample draws
    seeds with replacement and, independently, items with replacement (the same items for every drawn seed, as all
    seeds answer the same questions), so both sources of noise widen the interval."""
    rows = [list(map(float, r)) for r in table]
    if not rows or not rows[0] or any(len(r) != len(rows[0]) for r in rows):
        raise ValueError("bootstrap_ci: give a non-empty seed x item table with the same items for every seed")
    if not 0 < level < 1:
        raise ValueError(f"bootstrap_ci: level={level}: must be in (0, 1)")
    stat = stat or (lambda t: statistics.fmean(v for r in t for v in r))
    rng = random.Random(seed)
    n_seeds, n_items = len(rows), len(rows[0])
    draws = []
    for _ in range(resamples):
        seeds = [rng.randrange(n_seeds) for _ in range(n_seeds)]
        items = [rng.randrange(n_items) for _ in range(n_items)]
        draws.append(stat([[rows[s][i] for i in items] for s in seeds]))
    draws.sort()
    tail = (1 - level) / 2
    low = draws[max(0, math.floor(tail * resamples))]
    high = draws[min(resamples - 1, math.ceil((1 - tail) * resamples) - 1)]
    return stat(rows), low, high


def paired_drop(before: list[bool], after: list[bool]) -> dict:
    """The one-sided exact McNemar test of ``after`` being worse than ``before`` (module docstring): ``lost`` (b),
    ``gained`` (c), ``delta`` (accuracy after - before) and ``p``."""
    if len(before) != len(after):
        raise ValueError(f"paired_drop: {len(before)} results before and {len(after)} after; pair them by question")
    lost = sum(bool(a) and not bool(b) for a, b in zip(before, after, strict=True))
    gained = sum(not bool(a) and bool(b) for a, b in zip(before, after, strict=True))
    m = lost + gained
    p = sum(comb(m, k) for k in range(lost, m + 1)) / 2**m if m else 1.0
    n = len(before)
    return {"lost": lost, "gained": gained, "delta": (gained - lost) / n if n else 0.0, "p": p}
