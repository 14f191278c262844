"""Statistics for comparing models on the same questions.

:func:`paired_drop`: is model B worse than model A on the same n questions, beyond noise? Only the discordant
questions carry information (McNemar): with ``b`` = right under A and wrong under B, ``c`` = wrong under A and right
under B, under "no difference" each discordant question falls either way with probability 1/2, so the one-sided
exact p-value of a drop is::

    p = P(X >= b),  X ~ Binomial(b + c, 1/2)

e.g. strict accuracy 4% -> 0% on 100 questions (b = 4, c = 0): p = 1/16 = 0.0625.
"""

from __future__ import annotations

from math import comb

__all__ = ["paired_drop"]


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
