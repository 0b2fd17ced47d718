"""The style judge: a naive Bayes classifier, trained on the chosen vs rejected replies of the training split,
that says how much a generated text looks like the preferred style."""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from dpo_studio.evaluation.texts import judge_tokens

JUDGE_FORMAT = "dpo_studio.style_judge"
JUDGE_VERSION = 1


def _features(text: str) -> set[str]:
    """Binary unigram+bigram features of one text; a bigram is written "w1 w2"."""
    toks = judge_tokens(text)
    return set(toks) | {f"{a} {b}" for a, b in zip(toks, toks[1:])}


def _sigmoid(z: np.ndarray) -> np.ndarray:
    # Split by sign so large |z| never overflows exp().
    out = np.empty_like(z)
    pos = z >= 0
    out[pos] = 1.0 / (1.0 + np.exp(-z[pos]))
    ez = np.exp(z[~pos])
    out[~pos] = ez / (1.0 + ez)
    return out


class StyleJudge:
    """Binarized multinomial Naive Bayes on word unigrams+bigrams: p(text has the preferred style).

    Hand-written in numpy rather than taken from scikit-learn: it avoids a dependency for ~40 lines of
    arithmetic, and the whole model is one weight per n-gram (the log-ratio of its smoothed frequency in chosen vs
    rejected replies) plus a prior, so it can be printed on the model card and saved as plain JSON. Naive Bayes
    (not logistic regression) because it is closed-form: no iterations, no learning rate, exactly reproducible.

    Each text contributes each n-gram at most once (binarized counts, which work better than raw counts for short
    texts and keep "the the the ..." from dominating). With Laplace smoothing `alpha` over the vocabulary V:
        theta_c[f] = (docs of class c containing f + alpha) / (sum_f' of that + alpha * |V|)
        weight[f]  = log theta_preferred[f] - log theta_rejected[f]
        logit(x)   = log(n_chosen / n_rejected) + sum of weight[f] over the distinct known n-grams f in x
    and p = sigmoid(logit). Unknown n-grams are ignored; a text with none gets the prior (0.5 when balanced).
    """

    def __init__(self, vocabulary: list[str], weights: np.ndarray, bias: float, *, alpha: float = 1.0,
                 n_chosen: int = 0, n_rejected: int = 0) -> None:
        if len(vocabulary) != len(weights):
            raise ValueError(f"style judge: {len(vocabulary)} vocabulary entries but {len(weights)} weights")
        self.vocabulary = list(vocabulary)
        self.weights = np.asarray(weights, dtype=np.float64)
        self.bias = float(bias)
        self.alpha = float(alpha)
        self.n_chosen = int(n_chosen)
        self.n_rejected = int(n_rejected)
        self._index = {f: i for i, f in enumerate(self.vocabulary)}

    @classmethod
    def fit(cls, chosen: Sequence[str], rejected: Sequence[str], *, alpha: float = 1.0,
            max_features: int | None = 20000, min_df: int = 1) -> "StyleJudge":
        """Train on chosen replies (label 1, preferred style) vs rejected replies (label 0).

        `max_features` keeps the n-grams found in the most training texts (ties broken alphabetically, so the
        result is deterministic) to keep the saved JSON small; `min_df` drops n-grams seen in fewer texts.
        """
        if not chosen or not rejected:
            raise ValueError(f"style judge: need chosen and rejected texts, got {len(chosen)} chosen "
                             f"and {len(rejected)} rejected")
        if alpha <= 0:
            raise ValueError(f"style judge: alpha must be > 0, got {alpha}")
        df_pos: Counter[str] = Counter()
        df_neg: Counter[str] = Counter()
        for t in chosen:
            df_pos.update(_features(t))
        for t in rejected:
            df_neg.update(_features(t))
        df = df_pos + df_neg
        vocab = sorted((f for f, c in df.items() if c >= min_df), key=lambda f: (-df[f], f))
        if max_features is not None:
            vocab = vocab[:max_features]
        vocab.sort()  # stored alphabetically: easier to read and diff
        pos = np.array([df_pos[f] for f in vocab], dtype=np.float64) + alpha
        neg = np.array([df_neg[f] for f in vocab], dtype=np.float64) + alpha
        weights = (np.log(pos) - np.log(pos.sum())) - (np.log(neg) - np.log(neg.sum()))
        bias = math.log(len(chosen) / len(rejected))
        return cls(vocab, weights, bias, alpha=alpha, n_chosen=len(chosen), n_rejected=len(rejected))

    def logits(self, texts: Sequence[str]) -> np.ndarray:
        """Log-odds of the preferred style for each text."""
        if isinstance(texts, str):
            raise TypeError("style judge: pass a list of texts, not a single string")
        out = np.full(len(texts), self.bias, dtype=np.float64)
        for i, t in enumerate(texts):
            idx = sorted(self._index[f] for f in _features(t) if f in self._index)  # fixed order: exact sums
            if idx:
                out[i] += float(self.weights[idx].sum())
        return out

    def predict_proba(self, texts: Sequence[str]) -> np.ndarray:
        """Probability that each text has the preferred (chosen) style, shape (len(texts),)."""
        return _sigmoid(self.logits(texts))

    def accuracy(self, chosen: Sequence[str], rejected: Sequence[str]) -> float:
        """Share classified right: chosen needs p > 0.5, rejected needs p <= 0.5 (same cut as preferred_style_rate)."""
        if not chosen and not rejected:
            raise ValueError("style judge: accuracy needs at least one text")
        p_pos = self.predict_proba(list(chosen))
        p_neg = self.predict_proba(list(rejected))
        return float(((p_pos > 0.5).sum() + (p_neg <= 0.5).sum()) / (len(p_pos) + len(p_neg)))

    def top_features(self, k: int = 10) -> dict[str, list[tuple[str, float]]]:
        """The k most preferred-style and k most rejected-style n-grams with their weights (log-ratios)."""
        order = sorted(range(len(self.vocabulary)), key=lambda i: (-self.weights[i], self.vocabulary[i]))
        preferred = [(self.vocabulary[i], float(self.weights[i])) for i in order[:k] if self.weights[i] > 0]
        order = sorted(range(len(self.vocabulary)), key=lambda i: (self.weights[i], self.vocabulary[i]))
        rejected = [(self.vocabulary[i], float(self.weights[i])) for i in order[:k] if self.weights[i] < 0]
        return {"preferred": preferred, "rejected": rejected}

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict; Python floats round-trip exactly through JSON, so probabilities are identical."""
        return {
            "format": JUDGE_FORMAT,
            "version": JUDGE_VERSION,
            "model": "binarized multinomial naive bayes, word unigrams+bigrams",
            "alpha": self.alpha,
            "n_chosen": self.n_chosen,
            "n_rejected": self.n_rejected,
            "bias": self.bias,
            "vocabulary": list(self.vocabulary),
            "weights": [float(w) for w in self.weights],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "StyleJudge":
        """Inverse of `to_dict`."""
        if data.get("format") != JUDGE_FORMAT:
            raise ValueError(f"style judge: not a saved style judge (format={data.get('format')!r})")
        if data.get("version") != JUDGE_VERSION:
            raise ValueError(f"style judge: unsupported version {data.get('version')!r}, expected {JUDGE_VERSION}")
        return cls(list(data["vocabulary"]), np.asarray(data["weights"], dtype=np.float64), data["bias"],
                   alpha=data["alpha"], n_chosen=data["n_chosen"], n_rejected=data["n_rejected"])

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.write_text(json.dumps(self.to_dict()) + "\n", encoding="utf-8")
        return path

    @classmethod
    def load(cls, path: str | Path) -> "StyleJudge":
        return cls.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))


def judge_scores(judge: StyleJudge, base_texts: Sequence[str], dpo_texts: Sequence[str]) -> dict[str, float]:
    """Style figures of base vs DPO generations on the same prompts, in the same order.

    preferred_style_rate = share with p > 0.5; mean_p_preferred = mean probability; dpo_win_rate = share of
    prompts where p(dpo) > p(base), an exact tie counting half.
    """
    if len(base_texts) != len(dpo_texts):
        raise ValueError(f"judge_scores: {len(base_texts)} base texts but {len(dpo_texts)} DPO texts; "
                         "they must be outputs for the same prompts in the same order")
    if not base_texts:
        raise ValueError("judge_scores: no texts to score")
    pb = judge.predict_proba(list(base_texts))
    pd = judge.predict_proba(list(dpo_texts))
    wins = (pd > pb).sum() + 0.5 * (pd == pb).sum()
    return {
        "base_preferred_style_rate": float((pb > 0.5).mean()),
        "dpo_preferred_style_rate": float((pd > 0.5).mean()),
        "base_mean_p_preferred": float(pb.mean()),
        "dpo_mean_p_preferred": float(pd.mean()),
        "dpo_win_rate": float(wins / len(pb)),
        "num_prompts": float(len(pb)),
    }
