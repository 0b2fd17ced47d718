"""Generation evidence: base and DPO generate on held-out prompts and are measured side by side, for
`metrics.json` after training, for `--evaluate` and for the model card's table.

`generation_evidence` has the generation engine produce one output per held-out prompt from the base and from the
DPO model; `evaluate_generations` (a pure function of the texts, cheap and deterministic) turns the two lists into
the `generation_before` / `generation_after` / `comparison` / `warnings` figures recorded in `metrics.json` and shown
on the model card.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from dpo_studio.config.arguments import ScriptArguments
from dpo_studio.data.splits import PreparedData
from dpo_studio.evaluation.style_judge import StyleJudge, judge_scores
from dpo_studio.evaluation.texts import (
    HEALTH_METRICS,
    format_figure,
    health_metrics,
    health_warnings,
    output_field,
)

# Sampling settings of the evidence generations: the same for base and DPO, and the app's defaults.
EVIDENCE_SAMPLING = {"temperature": 0.7, "top_p": 0.95}
NUM_CARD_SAMPLES = 5


def generation_evidence(pair, data: PreparedData, script_args: ScriptArguments, seed: int) -> dict[str, Any]:
    """Generate from base and DPO (`generation.LoadedPair`) on held-out prompts and measure both sides.

    Returns the metrics.json keys `generation_before`, `generation_after`, `generation_comparison`,
    `generation_warnings`, `generation_settings`, `samples` and `judge` (the style judge, trained on the training
    split's replies).
    """
    from dpo_studio.inference.generation import generate_pair_results

    judge = StyleJudge.fit([p.chosen for p in data.train], [p.rejected for p in data.train])
    prompts = [list(pair_.message_dicts()) for pair_ in data.eval[: script_args.eval_generations]]
    results = generate_pair_results(
        pair, prompts, max_new_tokens=script_args.generation_max_new_tokens, seed=seed, batch_size=16,
        **EVIDENCE_SAMPLING,
    )
    base_outputs, dpo_outputs = [r[0] for r in results], [r[1] for r in results]
    evaluation = evaluate_generations(base_outputs, dpo_outputs, judge)
    return {
        "generation_before": evaluation["generation_before"],
        "generation_after": evaluation["generation_after"],
        "generation_comparison": evaluation["comparison"],
        "generation_warnings": evaluation["warnings"],
        "generation_settings": {
            **EVIDENCE_SAMPLING, "max_new_tokens": script_args.generation_max_new_tokens, "seed": seed,
            "prompts": len(prompts),
        },
        "samples": [
            {"prompt": prompt[-1]["content"], "base": base.text, "dpo": dpo.text}
            for prompt, (base, dpo) in list(zip(prompts, results))[:NUM_CARD_SAMPLES]
        ],
        "judge": {
            "kind": "naive Bayes on word unigrams+bigrams",
            "train_replies": 2 * len(data.train),
            "heldout_accuracy": judge.accuracy([p.chosen for p in data.eval], [p.rejected for p in data.eval]),
            "top_features": judge.top_features(8),
        },
    }


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
        scores = judge_scores(judge, [output_field(o, "text", i) for i, o in enumerate(base_outputs)],
                              [output_field(o, "text", i) for i, o in enumerate(dpo_outputs)])
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
        cells = ["—" if r[s] is None else format_figure(float(r[s])) for s in ("base", "dpo")]
        lines.append(f"| {r['metric']} | {cells[0]} | {cells[1]} | {r['note']} |")
    return "\n".join(lines)
