"""Evidence that DPO helped without breaking generation: health metrics, a style judge, warnings.

Everything here is a pure function of generated texts (no models), so it is cheap, deterministic and testable.
After training, the generation engine produces one output per held-out prompt from the base and from the DPO
model; `evaluate_generations` turns the two lists into the `generation_before` / `generation_after` /
`comparison` / `warnings` figures recorded in `metrics.json` and shown on the model card.

Tokenization used by the health metrics (`words`):
    the text is lower-cased and typographic apostrophes (U+2019) become "'"; then every maximal run of letters
    and digits (Unicode-aware, underscore excluded), optionally joined by internal apostrophes ("don't", "it's"),
    is one word. Whitespace and punctuation only
    separate words and are dropped. "Hello, World! It's 2 p.m." -> ["hello", "world", "it's", "2", "p", "m"].
The style judge additionally keeps every single punctuation mark / symbol / emoji as its own token
(`judge_tokens`), because "!" or an emoji is exactly the kind of cue that separates a warm from a formal reply.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

# --------------------------------------------------------------------------------------------------------------
# Tokenization
# --------------------------------------------------------------------------------------------------------------

_WORD = r"[^\W_]+(?:'[^\W_]+)*"
_WORD_RE = re.compile(_WORD)
# A word, or one character that is neither a word character nor whitespace (punctuation, symbol, emoji).
_JUDGE_TOKEN_RE = re.compile(_WORD + r"|[^\w\s]")


def _normalize(text: str) -> str:
    # Models and datasets mix "don't" and "don’t"; both must be the same word.
    return text.lower().replace("\u2019", "'")


def words(text: str) -> list[str]:
    """Lower-cased word tokens of `text` (see the module docstring for the exact rule)."""
    return _WORD_RE.findall(_normalize(text))


def judge_tokens(text: str) -> list[str]:
    """Lower-cased words plus single punctuation/symbol characters, in order: the style judge's tokens."""
    return _JUDGE_TOKEN_RE.findall(_normalize(text))


def ngrams(tokens: Sequence[str], n: int) -> list[tuple[str, ...]]:
    """Contiguous n-grams of one token sequence (never spanning two outputs)."""
    return [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]


# --------------------------------------------------------------------------------------------------------------
# Health metrics
# --------------------------------------------------------------------------------------------------------------

HEALTH_METRICS = (
    "mean_length_tokens",
    "eos_rate",
    "distinct_1",
    "distinct_2",
    "repeated_trigram_rate",
    "empty_rate",
)


def _field(output: Any, name: str, index: int) -> Any:
    """Read a field from a mapping or an object (the generation engine may return either)."""
    if isinstance(output, Mapping):
        if name not in output:
            raise ValueError(f"generation output #{index}: missing field '{name}'")
        return output[name]
    if not hasattr(output, name):
        raise ValueError(f"generation output #{index}: missing field '{name}' on {type(output).__name__}")
    return getattr(output, name)


def _normalize_outputs(outputs: Iterable[Any]) -> list[tuple[str, int, bool]]:
    """Validate outputs into (text, num_tokens, ended_with_eos) triples with clear per-output errors."""
    rows = []
    for i, out in enumerate(outputs):
        text = _field(out, "text", i)
        num_tokens = _field(out, "num_tokens", i)
        eos = _field(out, "ended_with_eos", i)
        if not isinstance(text, str):
            raise ValueError(f"generation output #{i}: field 'text' must be a string, got {type(text).__name__}")
        if isinstance(num_tokens, bool) or not isinstance(num_tokens, (int, np.integer)) or num_tokens < 0:
            raise ValueError(f"generation output #{i}: field 'num_tokens' must be an integer >= 0, got {num_tokens!r}")
        if not isinstance(eos, (bool, np.bool_)):
            raise ValueError(f"generation output #{i}: field 'ended_with_eos' must be a bool, got {eos!r}")
        rows.append((text, int(num_tokens), bool(eos)))
    if not rows:
        raise ValueError("generation outputs: the list is empty; need at least one output to measure")
    return rows


def distinct_n(texts: Sequence[str], n: int) -> float:
    """Unique n-grams / total n-grams, pooled over all texts (n-grams never cross texts); 0.0 if none."""
    grams: list[tuple[str, ...]] = []
    for text in texts:
        grams.extend(ngrams(words(text), n))
    return len(set(grams)) / len(grams) if grams else 0.0


def repeated_trigram_share(text: str) -> float:
    """Share of a text's word trigrams that already occurred earlier in the same text.

    With trigrams t_1..t_m (m = words - 2), count the positions i where t_i equals some t_j, j < i, and divide by m.
    A text with fewer than 3 words has no trigrams and scores 0.0. "a b c a b c" -> trigrams abc, bca, cab, abc
    -> 1 repeat of 4 = 0.25.
    """
    grams = ngrams(words(text), 3)
    if not grams:
        return 0.0
    seen: set[tuple[str, ...]] = set()
    repeats = 0
    for g in grams:
        if g in seen:
            repeats += 1
        seen.add(g)
    return repeats / len(grams)


def health_metrics(outputs: Iterable[Any]) -> dict[str, float]:
    """Generation health of a list of outputs (each has `text`, `num_tokens`, `ended_with_eos`).

    - mean_length_tokens: mean of `num_tokens` (generated tokens, as counted by the generation engine);
    - eos_rate: share of outputs that ended with EOS before hitting the max-new-tokens cap;
    - distinct_1 / distinct_2: unique word uni-/bigrams over all outputs / total uni-/bigrams (`distinct_n`);
    - repeated_trigram_rate: mean over ALL outputs of `repeated_trigram_share` (outputs with < 3 words count as
      0.0; empty or near-empty outputs are reported separately by empty_rate);
    - empty_rate: share of outputs whose text is empty or whitespace only.
    """
    rows = _normalize_outputs(outputs)
    texts = [t for t, _, _ in rows]
    n = len(rows)
    return {
        "mean_length_tokens": sum(k for _, k, _ in rows) / n,
        "eos_rate": sum(1 for _, _, e in rows if e) / n,
        "distinct_1": distinct_n(texts, 1),
        "distinct_2": distinct_n(texts, 2),
        "repeated_trigram_rate": sum(repeated_trigram_share(t) for t in texts) / n,
        "empty_rate": sum(1 for t in texts if not t.strip()) / n,
    }


# --------------------------------------------------------------------------------------------------------------
# Style judge
# --------------------------------------------------------------------------------------------------------------

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


# --------------------------------------------------------------------------------------------------------------
# Health warnings
# --------------------------------------------------------------------------------------------------------------

# Repetition: DPO's repeated-trigram rate more than this far above the base (absolute) means it loops.
REPETITION_MAX_INCREASE = 0.10
# Repetition: above this rate a quarter of the trigrams are repeats; warned only when DPO is also worse than
# the base, since a warning is about what DPO changed (tiny demo bases can already repeat a lot).
REPETITION_CEILING = 0.25
# Length: |mean length after / before - 1| above this (replies 50% longer or shorter) is a drift, not a style.
LENGTH_DRIFT_MAX = 0.5
# EOS: a fall of more than 25 points in the share of replies that end means the model rambles to the cap.
EOS_RATE_MAX_DROP = 0.25
# Diversity: distinct-2 falling by more than 30% of its base value points at mode collapse.
DISTINCT2_MAX_REL_DROP = 0.3
# Emptiness: more than 10 points more empty replies than the base is broken output.
EMPTY_RATE_MAX_INCREASE = 0.10
# Style: the preferred-style rate falling more than 10 points means DPO moved away from the chosen style.
STYLE_RATE_MAX_DROP = 0.10

_USUAL_CAUSES = "learning rate too high, beta too low, or too many epochs"


def _fmt(x: float) -> str:
    # Rates and probabilities get 3 decimals; lengths (>= 10) one.
    return f"{x:.1f}" if abs(x) >= 10 else f"{x:.3f}"


def _length_drift(b: float, a: float) -> str:
    return (f"mean_length_tokens went from {_fmt(b)} (base) to {_fmt(a)} (DPO), {abs(a / b - 1):.0%} "
            f"{'longer' if a > b else 'shorter'} [limit: {LENGTH_DRIFT_MAX:.0%}]: replies drifted in length; likely "
            f"causes: learning rate too high, beta too low, too many epochs, or a length gap between chosen and "
            f"rejected replies in the data.")


# Each health check: metric, "got worse past its threshold" given (base, DPO) values, and the one-line message.
HEALTH_CHECKS: tuple[tuple[str, Callable[[float, float], bool], Callable[[float, float], str]], ...] = (
    ("repeated_trigram_rate",
     lambda b, a: a > b + REPETITION_MAX_INCREASE or (a > REPETITION_CEILING and a > b),
     lambda b, a: f"repeated_trigram_rate rose from {_fmt(b)} (base) to {_fmt(a)} (DPO) [limits: "
                  f"+{REPETITION_MAX_INCREASE} or {REPETITION_CEILING}]: the DPO model repeats itself; likely "
                  f"causes: {_USUAL_CAUSES}."),
    ("mean_length_tokens", lambda b, a: b > 0 and abs(a / b - 1) > LENGTH_DRIFT_MAX, _length_drift),
    ("eos_rate", lambda b, a: b - a > EOS_RATE_MAX_DROP,
     lambda b, a: f"eos_rate fell from {_fmt(b)} (base) to {_fmt(a)} (DPO) [limit: -{EOS_RATE_MAX_DROP}]: the DPO "
                  f"model often runs to the token cap without stopping; likely causes: {_USUAL_CAUSES}."),
    ("distinct_2", lambda b, a: b > 0 and a < b * (1 - DISTINCT2_MAX_REL_DROP),
     lambda b, a: f"distinct_2 fell from {_fmt(b)} (base) to {_fmt(a)} (DPO), {1 - a / b:.0%} lower [limit: "
                  f"{DISTINCT2_MAX_REL_DROP:.0%}]: less varied wording (mode collapse); likely causes: "
                  f"{_USUAL_CAUSES}."),
    ("empty_rate", lambda b, a: a - b > EMPTY_RATE_MAX_INCREASE,
     lambda b, a: f"empty_rate rose from {_fmt(b)} (base) to {_fmt(a)} (DPO) [limit: +{EMPTY_RATE_MAX_INCREASE}]: "
                  f"the DPO model often emits nothing; likely causes: {_USUAL_CAUSES}."),
    ("preferred_style_rate", lambda b, a: b - a > STYLE_RATE_MAX_DROP,
     lambda b, a: f"preferred_style_rate fell from {_fmt(b)} (base) to {_fmt(a)} (DPO) [limit: "
                  f"-{STYLE_RATE_MAX_DROP}]: DPO moved away from the chosen style; likely causes: chosen and "
                  f"rejected swapped in the data, or training that did not converge."),
)


def health_warnings(before: Mapping[str, float], after: Mapping[str, float]) -> list[str]:
    """One-line messages for each health metric that got worse past its threshold (constants above)."""
    msgs: list[str] = []
    for key, worse, message in HEALTH_CHECKS:
        if before.get(key) is None or after.get(key) is None:
            continue
        b, a = float(before[key]), float(after[key])
        if worse(b, a):
            msgs.append(message(b, a))
    return msgs


# --------------------------------------------------------------------------------------------------------------
# Putting it together
# --------------------------------------------------------------------------------------------------------------


def evaluate_generations(base_outputs: Sequence[Any], dpo_outputs: Sequence[Any],
                         judge: StyleJudge | None) -> dict[str, Any]:
    """Health and style figures of base vs DPO outputs on the same prompts, plus health warnings.

    Returns {"generation_before": {...}, "generation_after": {...}, "comparison": {...}, "warnings": [...]}.
    With `judge=None` the style figures are left out.
    """
    if len(base_outputs) != len(dpo_outputs):
        raise ValueError(f"evaluate_generations: {len(base_outputs)} base outputs but {len(dpo_outputs)} DPO "
                         "outputs; they must be for the same prompts in the same order")
    before: dict[str, float] = {**health_metrics(base_outputs), "num_outputs": float(len(base_outputs))}
    after: dict[str, float] = {**health_metrics(dpo_outputs), "num_outputs": float(len(dpo_outputs))}
    comparison: dict[str, float] = {}
    if judge is not None:
        scores = judge_scores(judge, [_field(o, "text", i) for i, o in enumerate(base_outputs)],
                              [_field(o, "text", i) for i, o in enumerate(dpo_outputs)])
        before["preferred_style_rate"] = scores["base_preferred_style_rate"]
        before["mean_p_preferred"] = scores["base_mean_p_preferred"]
        after["preferred_style_rate"] = scores["dpo_preferred_style_rate"]
        after["mean_p_preferred"] = scores["dpo_mean_p_preferred"]
        comparison["dpo_win_rate"] = scores["dpo_win_rate"]
        comparison["preferred_style_rate_delta"] = after["preferred_style_rate"] - before["preferred_style_rate"]
    for key in HEALTH_METRICS:
        comparison[f"{key}_delta"] = after[key] - before[key]
    comparison["num_prompts"] = float(len(base_outputs))
    return {
        "generation_before": before,
        "generation_after": after,
        "comparison": comparison,
        "warnings": health_warnings(before, after),
    }


# (key, label for the card, how to read it) in table order.
CARD_METRICS = (
    ("preferred_style_rate", "Preferred style rate (judge p > 0.5)", "higher = more like the chosen replies"),
    ("mean_p_preferred", "Mean p(preferred style)", "judge probability, averaged"),
    ("mean_length_tokens", "Mean length (tokens)", "large drifts are suspicious"),
    ("eos_rate", "Ended with EOS", "share that stopped before the token cap"),
    ("distinct_1", "Distinct-1", "unique words / words"),
    ("distinct_2", "Distinct-2", "unique word bigrams / bigrams"),
    ("repeated_trigram_rate", "Repeated trigram rate", "lower = less looping"),
    ("empty_rate", "Empty replies", "share of empty outputs"),
)


def summarize_for_card(evaluation: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Rows {metric, base, dpo, note} for a markdown table; the win rate row has base=None."""
    before, after = evaluation["generation_before"], evaluation["generation_after"]
    rows = [{"metric": label, "base": before[key], "dpo": after[key], "note": note}
            for key, label, note in CARD_METRICS if key in before and key in after]
    if "dpo_win_rate" in evaluation.get("comparison", {}):
        rows.append({"metric": "DPO judged more preferred-style than base", "base": None,
                     "dpo": evaluation["comparison"]["dpo_win_rate"], "note": "share of prompts, ties count half"})
    return rows


def card_table_markdown(evaluation: Mapping[str, Any]) -> str:
    """The `summarize_for_card` rows as a markdown table (3 decimals; '—' where a side has no value)."""
    lines = ["| Metric | Base | DPO | Reading |", "|---|---:|---:|---|"]
    for r in summarize_for_card(evaluation):
        cells = ["—" if r[s] is None else _fmt(float(r[s])) for s in ("base", "dpo")]
        lines.append(f"| {r['metric']} | {cells[0]} | {cells[1]} | {r['note']} |")
    return "\n".join(lines)
