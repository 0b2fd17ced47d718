"""Pure measures of generated texts (no models): tokenization, health metrics and health warnings.

    the text is lower-cased and typographic apostrophes (U+2019) become "'"; then every maximal run of letters
    and digits (Unicode-aware, underscore excluded), optionally joined by internal apostrophes ("don't", "it's"),
    is one word. Whitespace and punctuation only
    separate words and are dropped. "Hello, World! It's 2 p.m." -> ["hello", "world", "it's", "2", "p", "m"].
The style judge additionally keeps every single punctuation mark / symbol / emoji as its own token
(`judge_tokens`), because "!" or an emoji is exactly the kind of cue that separates a warm from a formal reply.
"""


from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
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


def output_field(output: Any, name: str, index: int) -> Any:
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
        text = output_field(out, "text", i)
        num_tokens = output_field(out, "num_tokens", i)
        eos = output_field(out, "ended_with_eos", i)
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


def format_figure(x: float) -> str:
    # Rates and probabilities get 3 decimals; lengths (>= 10) one.
    return f"{x:.1f}" if abs(x) >= 10 else f"{x:.3f}"


def _length_drift(b: float, a: float) -> str:
    return (f"mean_length_tokens went from {format_figure(b)} (base) to {format_figure(a)} (DPO), {abs(a / b - 1):.0%} "
            f"{'longer' if a > b else 'shorter'} [limit: {LENGTH_DRIFT_MAX:.0%}]: replies drifted in length; likely "
            f"causes: learning rate too high, beta too low, too many epochs, or a length gap between chosen and "
            f"rejected replies in the data.")


# Each health check: metric, "got worse past its threshold" given (base, DPO) values, and the one-line message.
HEALTH_CHECKS: tuple[tuple[str, Callable[[float, float], bool], Callable[[float, float], str]], ...] = (
    ("repeated_trigram_rate",
     lambda b, a: a > b + REPETITION_MAX_INCREASE or (a > REPETITION_CEILING and a > b),
     lambda b, a: f"repeated_trigram_rate rose from {format_figure(b)} (base) to {format_figure(a)} (DPO) [limits: "
                  f"+{REPETITION_MAX_INCREASE} or {REPETITION_CEILING}]: the DPO model repeats itself; likely "
                  f"causes: {_USUAL_CAUSES}."),
    ("mean_length_tokens", lambda b, a: b > 0 and abs(a / b - 1) > LENGTH_DRIFT_MAX, _length_drift),
    ("eos_rate", lambda b, a: b - a > EOS_RATE_MAX_DROP,
     lambda b, a: f"eos_rate fell from {format_figure(b)} (base) to {format_figure(a)} (DPO) [limit: -{EOS_RATE_MAX_DROP}]: the DPO "
                  f"model often runs to the token cap without stopping; likely causes: {_USUAL_CAUSES}."),
    ("distinct_2", lambda b, a: b > 0 and a < b * (1 - DISTINCT2_MAX_REL_DROP),
     lambda b, a: f"distinct_2 fell from {format_figure(b)} (base) to {format_figure(a)} (DPO), {1 - a / b:.0%} lower [limit: "
                  f"{DISTINCT2_MAX_REL_DROP:.0%}]: less varied wording (mode collapse); likely causes: "
                  f"{_USUAL_CAUSES}."),
    ("empty_rate", lambda b, a: a - b > EMPTY_RATE_MAX_INCREASE,
     lambda b, a: f"empty_rate rose from {format_figure(b)} (base) to {format_figure(a)} (DPO) [limit: +{EMPTY_RATE_MAX_INCREASE}]: "
                  f"the DPO model often emits nothing; likely causes: {_USUAL_CAUSES}."),
    ("preferred_style_rate", lambda b, a: b - a > STYLE_RATE_MAX_DROP,
     lambda b, a: f"preferred_style_rate fell from {format_figure(b)} (base) to {format_figure(a)} (DPO) [limit: "
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
