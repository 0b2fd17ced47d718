"""Bradley–Terry ratings against independent computations: the two-model closed form, Wilson, a brute-force MLE."""

import itertools
import math

import numpy as np
import pytest

from dpo_studio.arena.ratings import ELO_SCALE, fit_strengths, rate
from dpo_studio.arena.votes import wilson_interval


def _comparisons(counts: dict[tuple[str, str], tuple[int, int, int]]) -> list[tuple[str, str, float]]:
    out = []
    for (a, b), (a_wins, b_wins, ties) in counts.items():
        out += [(a, b, 1.0)] * a_wins + [(b, a, 1.0)] * b_wins + [(a, b, 0.5)] * ties
    return out


@pytest.mark.parametrize("dpo_wins,base_wins,ties", [(30, 20, 0), (140, 60, 0), (12, 30, 6)])
def test_two_models_give_the_empirical_win_rate_and_a_wilson_like_interval(dpo_wins, base_wins, ties):
    board = rate(["base", "dpo"], _comparisons({("base", "dpo"): (base_wins, dpo_wins, ties)}), rounds=2000)
    [pair] = board["pairs"]
    n = dpo_wins + base_wins + ties
    assert pair["p_b_beats_a"] == pytest.approx((dpo_wins + ties / 2) / n, abs=1e-6)
    if ties == 0:  # no ties: at these sizes the bootstrap interval lands near the scoreboard's Wilson interval
        low, high = wilson_interval(dpo_wins, n)
        assert pair["ci_low"] == pytest.approx(low, abs=0.06) and pair["ci_high"] == pytest.approx(high, abs=0.06)
    rows = {row["model"]: row for row in board["models"]}
    expected = ELO_SCALE * math.log((dpo_wins + ties / 2) / (base_wins + ties / 2))
    assert rows["base"]["rating"] == pytest.approx(1000.0)
    assert rows["dpo"]["rating"] == pytest.approx(1000.0 + expected, abs=1e-4)
    assert rows["dpo"]["ci_low"] < rows["dpo"]["rating"] < rows["dpo"]["ci_high"]


def _brute_force_mle(models, comparisons, grid=np.linspace(-3, 3, 121)):
    """Log-likelihood maximised over a grid of (θ1 − θ0, θ2 − θ0): no Newton, no shared code."""
    best, best_theta = -np.inf, None
    for t1, t2 in itertools.product(grid, grid):
        theta = {models[0]: 0.0, models[1]: t1, models[2]: t2}
        ll = 0.0
        for a, b, s in comparisons:
            p = 1 / (1 + math.exp(theta[b] - theta[a]))
            ll += s * math.log(p) + (1 - s) * math.log(1 - p)
        if ll > best:
            best, best_theta = ll, (t1, t2)
    return best_theta


def test_three_models_match_a_brute_force_maximum_likelihood():
    models = ["base", "round1", "round2"]
    comparisons = _comparisons({("base", "round1"): (8, 14, 4), ("base", "round2"): (5, 17, 2),
                                ("round1", "round2"): (9, 12, 5)})
    theta = fit_strengths(models, comparisons)
    t1, t2 = _brute_force_mle(models, comparisons)
    assert theta[1] - theta[0] == pytest.approx(t1, abs=0.05)
    assert theta[2] - theta[0] == pytest.approx(t2, abs=0.05)


def test_rank_head_to_head_and_unrated_models():
    models = ["base", "round1", "round2", "round3"]
    comparisons = _comparisons({("base", "round1"): (5, 40, 0), ("base", "round2"): (2, 45, 1),
                                ("round1", "round2"): (20, 22, 3)})
    board = rate(models, comparisons, rounds=300)
    rows = {row["model"]: row for row in board["models"]}
    assert rows["base"]["rank"] == 3  # both rounds' intervals lie wholly above base's
    assert rows["round1"]["rank"] == rows["round2"]["rank"] == 1  # overlapping intervals share the rank
    assert rows["round3"] == {"model": "round3", "rating": None, "ci_low": None, "ci_high": None, "rank": None,
                              "votes": 0}
    counts = {(p["a"], p["b"]): (p["a_wins"], p["b_wins"], p["ties"]) for p in board["pairs"]}
    assert counts == {("base", "round1"): (5, 40, 0), ("base", "round2"): (2, 45, 1),
                      ("round1", "round2"): (20, 22, 3)}
    assert board["votes"] == len(comparisons)


def test_one_sided_votes_stay_finite_and_the_board_is_reproducible():
    comparisons = [("dpo", "base", 1.0)] * 5
    first, second = rate(["base", "dpo"], comparisons, rounds=50), rate(["base", "dpo"], comparisons, rounds=50)
    assert first == second
    assert first["pairs"][0]["p_b_beats_a"] > 0.999 and math.isfinite(first["models"][1]["rating"])


def test_bad_comparisons_are_refused():
    with pytest.raises(ValueError, match="two different known models"):
        rate(["base", "dpo"], [("base", "base", 1.0)])
    with pytest.raises(ValueError, match="score"):
        rate(["base", "dpo"], [("base", "dpo", 2.0)])
