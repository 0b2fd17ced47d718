"""Length-controlled ratings (ratings.rate_length_controlled, votes.scoreboard's LC win rate): checked against an
independent fit (plain gradient ascent on the same likelihood, another parametrisation), and on synthetic votes where
length alone decides (controlled ≈ 0.5) and where quality alone decides (controlled ≈ raw)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from dpo_studio.arena.ratings import ELO_SCALE, GAMMA_RIDGE, rate_length_controlled
from dpo_studio.arena.votes import length_comparisons, lengths_of, make_vote, mean_lengths, scoreboard

MODELS = ["base", "dpo", "round2"]


def independent_fit(comparisons, models, steps=40_000, lr=2.0):
    """θ (θ_first = 0) and γ by gradient ascent on the mean log-likelihood of σ(θ_a − θ_b + γ·r), minus the
    documented weak prior GAMMA_RIDGE·γ²/2."""
    index = {m: k for k, m in enumerate(models)}
    a = np.array([index[c[0]] for c in comparisons])
    b = np.array([index[c[1]] for c in comparisons])
    y = np.array([c[2] for c in comparisons])
    r = np.array([c[3] for c in comparisons])
    theta, gamma = np.zeros(len(models)), 0.0
    for _ in range(steps):
        p = 1 / (1 + np.exp(-(theta[a] - theta[b] + gamma * r)))
        residual = (y - p) / len(y)
        grad = np.bincount(a, residual, len(models)) - np.bincount(b, residual, len(models))
        grad[0] = 0.0  # the reference model stays at 0
        theta += lr * grad
        gamma += lr * (float(residual @ r) - GAMMA_RIDGE * gamma / len(y))
    return theta, gamma


def synthetic(n, quality, length_effect, dpo_longer, seed=0):
    """Base-vs-dpo votes: lengths log-normal (DPO's `dpo_longer` nats longer in log), P(dpo wins) =
    σ(quality + length_effect · log length ratio)."""
    rng = np.random.default_rng(seed)
    records = []
    for i in range(n):
        lengths = {"base": int(math.exp(rng.normal(4.0, 0.5))), "dpo": int(math.exp(rng.normal(4.0 + dpo_longer, 0.5)))}
        ratio = math.log1p(lengths["dpo"]) - math.log1p(lengths["base"])
        dpo_wins = rng.random() < 1 / (1 + math.exp(-(quality + length_effect * ratio)))
        sides = {"A": "base", "B": "dpo"} if i % 2 else {"A": "dpo", "B": "base"}
        replies = {side: f"{side}{i}".ljust(lengths[model], "w") for side, model in sides.items()}
        winner = next(side for side, model in sides.items() if model == ("dpo" if dpo_wins else "base"))
        records.append(make_vote(prompt=f"p{i}", replies=replies, sides=sides, choice=winner, family="gpt2",
                                 settings={}))
    return records


def test_fit_agrees_with_an_independent_fit():
    rng = np.random.default_rng(1)
    strength = {"base": 0.0, "dpo": 0.6, "round2": -0.3}
    comparisons = []
    for _ in range(600):
        a, b = rng.choice(MODELS, 2, replace=False)
        ratio = rng.normal(0, 0.6)
        p = 1 / (1 + math.exp(-(strength[a] - strength[b] + 0.9 * ratio)))
        u = rng.random()
        comparisons.append((str(a), str(b), 1.0 if u < p - 0.05 else 0.5 if u < p + 0.05 else 0.0, float(ratio)))
    result = rate_length_controlled(MODELS, comparisons, rounds=200)
    theta, gamma = independent_fit(comparisons, MODELS)
    ratings = [row["rating"] for row in result["models"]]
    assert ratings == pytest.approx([1000 + ELO_SCALE * t for t in theta], abs=0.05)
    assert result["length_coef"]["value"] == pytest.approx(gamma, abs=1e-4)
    assert result["length_coef"]["ci_low"] < gamma < result["length_coef"]["ci_high"]
    for row in result["models"]:
        assert row["ci_low"] <= row["rating"] <= row["ci_high"]
    assert result["votes"] == 600


def test_length_alone_decides_the_controlled_win_rate_is_one_half():
    board = scoreboard(synthetic(2000, quality=0.0, length_effect=1.5, dpo_longer=0.7))["gpt2"]
    assert board["dpo_win_rate"] > 0.65  # raw: DPO "wins" by writing longer
    assert board["dpo_win_rate_lc"] == pytest.approx(0.5, abs=0.04)
    assert board["lc_ci_low"] < 0.5 < board["lc_ci_high"]
    assert board["mean_length_dpo"] > 1.8 * board["mean_length_base"]
    assert board["lc_votes"] == 2000


def test_quality_alone_decides_the_controlled_win_rate_equals_raw():
    board = scoreboard(synthetic(2000, quality=0.8, length_effect=0.0, dpo_longer=0.0, seed=2))["gpt2"]
    assert board["dpo_win_rate"] == pytest.approx(1 / (1 + math.exp(-0.8)), abs=0.03)
    assert board["dpo_win_rate_lc"] == pytest.approx(board["dpo_win_rate"], abs=0.02)


def test_lengths_are_recorded_and_old_votes_files_stay_readable():
    vote = make_vote(prompt="p", replies={"A": "short", "B": "a longer one"}, sides={"A": "base", "B": "dpo"},
                     choice="B", family="gpt2", settings={})
    assert vote["lengths"] == {"A": 5, "B": 12}
    old_decisive = {k: v for k, v in vote.items() if k != "lengths"}
    assert lengths_of(old_decisive) == {"A": 5, "B": 12}  # from chosen / rejected
    old_tie = {"prompt": "p", "chosen": None, "rejected": None, "vote": "tie", "outcome": "tie", "family": "gpt2",
               "pair": {"A": "base", "B": "dpo"}}
    assert lengths_of(old_tie) is None
    found = length_comparisons([old_decisive, old_tie], "gpt2")
    assert found == [("base", "dpo", 0.0, pytest.approx(math.log(6) - math.log(13)))]
    assert mean_lengths([old_decisive, old_tie], "gpt2") == {"base": 5, "dpo": 12}
    board = scoreboard([old_tie])["gpt2"]
    assert board["votes"] == 1 and board["dpo_win_rate_lc"] is None and board["lc_votes"] == 0
