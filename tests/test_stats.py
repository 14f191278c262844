"""The paired test that decides whether a round is kept (dynsdpb_selfplay/stats.py), by hand."""

import pytest

from dynsdpb_selfplay.stats import paired_drop


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
