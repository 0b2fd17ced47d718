"""Evaluation: what a run's numbers and evidence are, and where each is computed.

- `held_out`: the held-out DPO metrics (loss, rewards, accuracy as k/n) as means over pairs.
- `texts`: pure measures of generated texts (tokenization, health metrics, health warnings).
- `style_judge`: the naive Bayes style judge trained on the chosen vs rejected replies.
- `evidence`: base vs DPO generations on held-out prompts, measured side by side (metrics.json, the card table).
- `existing`: `--evaluate`, the same evidence for any existing base/DPO pair without training.
"""

from dpo_studio.evaluation.evidence import (
    card_table_markdown,
    evaluate_generations,
    generation_evidence,
    summarize_for_card,
)
from dpo_studio.evaluation.existing import evaluate_existing
from dpo_studio.evaluation.held_out import EVAL_METRICS, PAIR_METRICS, evaluate_pairs
from dpo_studio.evaluation.style_judge import StyleJudge, judge_scores
from dpo_studio.evaluation.texts import HEALTH_METRICS, health_metrics, health_warnings, words

__all__ = [
    "EVAL_METRICS", "HEALTH_METRICS", "PAIR_METRICS", "StyleJudge", "card_table_markdown", "evaluate_existing",
    "evaluate_generations", "evaluate_pairs", "generation_evidence", "health_metrics", "health_warnings",
    "judge_scores", "summarize_for_card", "words",
]
