"""Ratings of many models from pairwise votes: a Bradley–Terry fit with 95 % bootstrap intervals (as Chatbot Arena).

A comparison is `(model_a, model_b, score_a)` with score_a 1 (a won), 0 (b won) or 0.5 (a tie: half a win each).
The fit maximises the Bradley–Terry likelihood P(a beats b) = 1 / (1 + exp(θ_b − θ_a)) over log-strengths θ by
Newton's method (a tiny ridge keeps θ finite when one model won every vote); ratings are on the Elo scale,
`1000 + 400·log10(e)·(θ − θ̂_anchor)` (θ of mean 0, θ̂_anchor the first model's, the base, point estimate). Intervals come from refitting
on bootstrap resamples of the comparisons; rank = 1 + the number of models whose interval lies wholly above.

With two models the fit is closed-form: P(b beats a) = b's wins (ties as half) / comparisons, the empirical win
rate; its bootstrap interval is close to the Wilson interval of that rate. numpy only (scipy is not a dependency).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

ELO_SCALE = 400.0 / math.log(10.0)  # θ (natural log-odds) -> Elo points
BASE_RATING = 1000.0
RIDGE = 1e-9  # keeps the Newton system regular and θ finite under perfect separation
BOOTSTRAP_ROUNDS = 1000
Comparison = tuple[str, str, float]


@dataclass(frozen=True)
class PairCounts:
    """Head-to-head counts over one unordered pair (a listed before b in the model order)."""

    a: str
    b: str
    a_wins: int = 0
    b_wins: int = 0
    ties: int = 0

    @property
    def total(self) -> int:
        return self.a_wins + self.b_wins + self.ties


def _cells(models: Sequence[str], comparisons: Sequence[Comparison]) -> tuple[np.ndarray, np.ndarray]:
    """Distinct (i, j, score_i) cells with their counts: the data as a multinomial (bootstrap resamples cells)."""
    index = {name: k for k, name in enumerate(models)}
    cells: dict[tuple[int, int, float], int] = {}
    for a, b, score in comparisons:
        if a not in index or b not in index or a == b or score not in (0.0, 0.5, 1.0):
            raise ValueError(f"bad comparison {(a, b, score)!r}: two different known models and a score of "
                             "0, 0.5 or 1")
        i, j = index[a], index[b]
        key = (i, j, float(score)) if i < j else (j, i, 1.0 - float(score))
        cells[key] = cells.get(key, 0) + 1
    keys = np.array(list(cells), dtype=float).reshape(-1, 3)
    return keys, np.array(list(cells.values()), dtype=float)


def _fit(n_models: int, keys: np.ndarray, counts: np.ndarray, start: np.ndarray | None = None,
         iterations: int = 50) -> np.ndarray:
    """Log-strengths θ (mean 0) maximising the BT likelihood of weighted cells (i, j, score_i).

    `counts` may be a matrix (one row of cell counts per bootstrap resample): all rows are fitted at once, Newton
    steps batched; `start` warm-starts them (from the point estimate they converge in a few steps).
    """
    batched = counts.ndim == 2
    counts = counts if batched else counts[None, :]
    i, j, score = keys[:, 0].astype(int), keys[:, 1].astype(int), keys[:, 2]
    rows = counts.shape[0]
    theta = np.zeros((rows, n_models)) if start is None else np.tile(start, (rows, 1))
    pick_i, pick_j = np.eye(n_models)[i], np.eye(n_models)[j]  # cells -> models, as matrices
    for _ in range(iterations):
        p = 1.0 / (1.0 + np.exp(theta[:, j] - theta[:, i]))  # P(i beats j) per cell
        residual = counts * (score - p)
        gradient = residual @ pick_i - residual @ pick_j - RIDGE * theta
        weight = counts * p * (1.0 - p)
        off = np.einsum("rc,ca,cb->rab", weight, pick_i, pick_j)
        diagonal = weight @ pick_i + weight @ pick_j + RIDGE
        hessian = np.einsum("ra,ab->rab", diagonal, np.eye(n_models)) - off - off.transpose(0, 2, 1)
        # + 1/n on every entry fixes the one free direction (adding a constant to θ) so the system is regular.
        step = np.linalg.solve(hessian + 1.0 / n_models, gradient[..., None])[..., 0]
        theta = np.clip(theta + step, -30.0, 30.0)
        theta -= theta.mean(axis=1, keepdims=True)
        if np.max(np.abs(step)) < 1e-9:
            break
    return theta if batched else theta[0]


def fit_strengths(models: Sequence[str], comparisons: Sequence[Comparison]) -> np.ndarray:
    """Bradley–Terry log-strengths (mean 0) of `models` from `comparisons` (no bootstrap)."""
    keys, counts = _cells(models, comparisons)
    return _fit(len(models), keys, counts) if len(counts) else np.zeros(len(models))


def win_probability(theta: np.ndarray, i: int, j: int) -> float:
    """P(model i beats model j) under log-strengths θ."""
    return float(1.0 / (1.0 + math.exp(theta[j] - theta[i])))


def head_to_head(models: Sequence[str], comparisons: Sequence[Comparison]) -> list[PairCounts]:
    """Counts per unordered pair that met at least once, in model order."""
    index = {name: k for k, name in enumerate(models)}
    table: dict[tuple[int, int], list[int]] = {}
    for a, b, score in comparisons:
        i, j = sorted((index[a], index[b]))
        a_score = score if index[a] == i else 1.0 - score
        row = table.setdefault((i, j), [0, 0, 0])
        row[0 if a_score == 1.0 else 1 if a_score == 0.0 else 2] += 1
    return [PairCounts(models[i], models[j], *table[(i, j)]) for i, j in sorted(table)]


def rate(models: Sequence[str], comparisons: Sequence[Comparison], *, rounds: int = BOOTSTRAP_ROUNDS,
         seed: int = 0) -> dict[str, Any]:
    """Ratings, 95 % bootstrap intervals, ranks and head-to-head counts.

    Args:
        models: every model of the family, the anchor (base) first; models without votes are listed unrated.
        comparisons: `(model_a, model_b, score_a)` per decisive or tied vote.
        rounds: bootstrap resamples; seed: the resampling's seed (the board is reproducible).

    Returns `{"votes", "models": [{model, rating, ci_low, ci_high, rank, votes}], "pairs": [{a, b, a_wins,
    b_wins, ties, p_b_beats_a, ci_low, ci_high}]}`; ratings are None for a model that has no comparison.
    """
    models = list(models)
    keys, counts = _cells(models, comparisons)
    theta = _fit(len(models), keys, counts) if len(counts) else np.zeros(len(models))
    generator = np.random.default_rng(seed)  # a local generator: no global RNG is touched
    total = int(counts.sum())
    samples = (_fit(len(models), keys, generator.multinomial(total, counts / total, size=rounds).astype(float),
                    start=theta) if total else np.zeros((1, len(models))))
    # Every fit has mean θ 0; one shift puts the first model's point rating at 1000, so its interval is real too.
    elo = lambda t: BASE_RATING + ELO_SCALE * (t - theta[0])  # noqa: E731
    point, boot = elo(theta), elo(samples)
    low, high = np.percentile(boot, 2.5, axis=0), np.percentile(boot, 97.5, axis=0)
    played = {name for a, b, _ in comparisons for name in (a, b)}
    votes = {name: sum(1 for a, b, _ in comparisons if name in (a, b)) for name in models}
    rows = []
    for k, name in enumerate(models):
        rated = name in played
        above = sum(1 for m, other in enumerate(models) if other in played and m != k and low[m] > high[k])
        rows.append({"model": name, "rating": float(point[k]) if rated else None,
                     "ci_low": float(low[k]) if rated else None, "ci_high": float(high[k]) if rated else None,
                     "rank": 1 + above if rated else None, "votes": votes[name]})
    index = {name: k for k, name in enumerate(models)}
    pairs = []
    for pc in head_to_head(models, comparisons):
        i, j = index[pc.a], index[pc.b]
        boot_p = 1.0 / (1.0 + np.exp(samples[:, i] - samples[:, j]))
        pairs.append({"a": pc.a, "b": pc.b, "a_wins": pc.a_wins, "b_wins": pc.b_wins, "ties": pc.ties,
                      "p_b_beats_a": win_probability(theta, j, i), "ci_low": float(np.percentile(boot_p, 2.5)),
                      "ci_high": float(np.percentile(boot_p, 97.5))})
    return {"votes": len(comparisons), "models": rows, "pairs": pairs}


# --------------------------------------------------------------------------------------------------------------
# Length-controlled ratings
# --------------------------------------------------------------------------------------------------------------
# Raters prefer longer replies, and DPO lengthens them. As Chatbot Arena's style control does, the length difference
# joins the Bradley–Terry fit as a covariate: P(a beats b) = σ(θ_a − θ_b + γ·(log len_a − log len_b)). θ is then
# each model's strength at equal length (AlpacaEval's length-controlled win rate is σ(θ_dpo − θ_base) of such a
# fit), γ how much a doubling of length buys. Written here (numpy, Newton on the logistic likelihood, batched over
# bootstrap resamples) because numpy is all the app needs; tests check it against an independent fit.

# A weak L2 prior on γ (a penalty of GAMMA_RIDGE·γ²/2 on the log-likelihood): with replies of nearly equal length γ
# is not identified and would run off to the clip; with real data it is negligible (a hundred votes weigh ~10x more).
GAMMA_RIDGE = 0.5
LengthComparison = tuple[str, str, float, float]  # (model_a, model_b, score_a, log(len_a) - log(len_b))


def _design(models: Sequence[str], comparisons: Sequence[LengthComparison]) -> tuple[np.ndarray, np.ndarray]:
    """Rows `e_a − e_b` plus the log length ratio, and the scores (0, 0.5, 1)."""
    index = {name: k for k, name in enumerate(models)}
    x = np.zeros((len(comparisons), len(models) + 1))
    y = np.zeros(len(comparisons))
    for row, (a, b, score, log_ratio) in enumerate(comparisons):
        if a not in index or b not in index or a == b or score not in (0.0, 0.5, 1.0) or not math.isfinite(log_ratio):
            raise ValueError(f"bad comparison {(a, b, score, log_ratio)!r}: two different known models, a score of "
                             "0, 0.5 or 1 and a finite log length ratio")
        x[row, index[a]], x[row, index[b]], x[row, -1], y[row] = 1.0, -1.0, log_ratio, score
    return x, y


def _fit_length(x: np.ndarray, y: np.ndarray, counts: np.ndarray, start: np.ndarray | None = None,
                iterations: int = 50) -> np.ndarray:
    """(θ_1..θ_m with mean 0, γ) maximising the weighted logistic likelihood; `counts` (rounds × votes) batched."""
    m = x.shape[1] - 1
    beta = np.zeros((counts.shape[0], m + 1)) if start is None else np.tile(start, (counts.shape[0], 1))
    fix = np.zeros((m + 1, m + 1))
    fix[:m, :m] = 1.0 / m  # fixes the free shift of θ (every row of x sums to 0 over the models)
    penalty = np.full(m + 1, RIDGE)
    penalty[-1] = GAMMA_RIDGE
    for _ in range(iterations):
        p = 1.0 / (1.0 + np.exp(-(beta @ x.T)))
        gradient = (counts * (y - p)) @ x - penalty * beta
        hessian = np.einsum("rn,na,nb->rab", counts * p * (1.0 - p), x, x) + np.diag(penalty) + fix
        step = np.linalg.solve(hessian, gradient[..., None])[..., 0]
        beta = np.clip(beta + step, -30.0, 30.0)
        beta[:, :m] -= beta[:, :m].mean(axis=1, keepdims=True)
        if np.max(np.abs(step)) < 1e-9:
            break
    return beta


def rate_length_controlled(models: Sequence[str], comparisons: Sequence[LengthComparison], *,
                           rounds: int = BOOTSTRAP_ROUNDS, seed: int = 0) -> dict[str, Any]:
    """Bradley–Terry ratings at equal reply length, with 95 % bootstrap intervals (resampling the votes).

    Returns `{"votes", "length_coef": {"value", "ci_low", "ci_high"} (γ, log-odds per unit log length ratio),
    "models": [{model, rating, ci_low, ci_high, rank}], "pairs": [{a, b, p_b_beats_a, ci_low, ci_high}]}` on the same
    Elo scale as `rate` (the first model's point rating 1000); a model without a comparison has None.
    """
    models = list(models)
    m = len(models)
    played = {name for a, b, *_ in comparisons for name in (a, b)}
    if not comparisons:
        return {"votes": 0, "length_coef": None, "models": [
            {"model": name, "rating": None, "ci_low": None, "ci_high": None, "rank": None} for name in models],
            "pairs": []}
    x, y = _design(models, comparisons)
    point = _fit_length(x, y, np.ones((1, len(y))))[0]
    generator = np.random.default_rng(seed)  # a local generator: no global RNG is touched
    counts = generator.multinomial(len(y), np.full(len(y), 1.0 / len(y)), size=rounds).astype(float)
    boot = _fit_length(x, y, counts, start=point)
    elo = lambda t: BASE_RATING + ELO_SCALE * (t - point[0])  # noqa: E731
    low, high = np.percentile(elo(boot[:, :m]), 2.5, axis=0), np.percentile(elo(boot[:, :m]), 97.5, axis=0)
    rows = []
    for k, name in enumerate(models):
        rated = name in played
        above = sum(1 for j, other in enumerate(models) if other in played and j != k and low[j] > high[k])
        rows.append({"model": name, "rating": float(elo(point[k])) if rated else None,
                     "ci_low": float(low[k]) if rated else None, "ci_high": float(high[k]) if rated else None,
                     "rank": 1 + above if rated else None})
    pairs = []
    for pc in head_to_head(models, [(a, b, s) for a, b, s, _ in comparisons]):
        i, j = models.index(pc.a), models.index(pc.b)
        boot_p = 1.0 / (1.0 + np.exp(boot[:, i] - boot[:, j]))
        pairs.append({"a": pc.a, "b": pc.b, "p_b_beats_a": win_probability(point, j, i),
                      "ci_low": float(np.percentile(boot_p, 2.5)), "ci_high": float(np.percentile(boot_p, 97.5))})
    coef = {"value": float(point[-1]), "ci_low": float(np.percentile(boot[:, -1], 2.5)),
            "ci_high": float(np.percentile(boot[:, -1], 97.5))}
    return {"votes": len(comparisons), "length_coef": coef, "models": rows, "pairs": pairs}
