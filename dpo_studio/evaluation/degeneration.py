"""Degeneration after DPO, and what to do about it: one sentence for metrics.json, report.html and the card.

The signs are the common DPO complaint (TRL #1884, #2382): the chosen replies' own log-probabilities falling on
held-out pairs (DPO only widens the chosen - rejected gap, so both can sink), and, where generations were measured,
replies that repeat or collapse in length. The remedy TRL's maintainers recommend is to add the SFT term on the
chosen replies (`loss_type=["sigmoid", "sft"]`, the RPO recipe), or to move less far from the reference: a lower
learning rate, or a higher beta (beta is the strength of DPO's pull towards the reference model).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from dpo_studio.evaluation.texts import HEALTH_CHECKS
from dpo_studio.run_layout import RunMetrics

# The held-out chosen replies' mean summed log-probability falling by more than this share of its base value: DPO
# made the replies it was asked to prefer less likely (nats are summed per reply, so a relative threshold).
CHOSEN_LOGP_MAX_REL_DROP = 0.02
# Health checks (evaluation/texts.py) that count as each sign; length collapse is a drift towards shorter replies.
SIGN_CHECKS = {"repetition": ("repeated_trigram_rate", "distinct_2"), "length collapse": ("mean_length_tokens", "empty_rate")}


def chosen_logp_drop(eval_before: Mapping[str, Any], eval_after: Mapping[str, Any]) -> float | None:
    """How far the held-out chosen log-probability fell, as a share of its base value (> 0: it fell); None when
    either evaluation lacks it."""
    before, after = eval_before.get("logps/chosen"), eval_after.get("logps/chosen")
    if before is None or after is None or before == 0:
        return None
    return (before - after) / abs(before)


def degeneration_signs(metrics: RunMetrics) -> list[str]:
    """The signs of degeneration a run's metrics show, in a fixed order."""
    signs = []
    drop = chosen_logp_drop(metrics.eval_before, metrics.eval_after)
    if drop is not None and drop > CHOSEN_LOGP_MAX_REL_DROP:
        signs.append("falling chosen log-probs")
    before, after = metrics.generation_before, metrics.generation_after
    if before and after:
        checks = {key: worse for key, worse, _ in HEALTH_CHECKS}
        for sign, keys in SIGN_CHECKS.items():
            for key in keys:
                if before.get(key) is None or after.get(key) is None:
                    continue
                b, a = float(before[key]), float(after[key])
                shorter = key != "mean_length_tokens" or a < b
                if checks[key](b, a) and shorter:
                    signs.append(sign)
                    break
    return signs


def advice(signs: list[str], hyperparameters: Mapping[str, Any]) -> str | None:
    """One sentence: what was found and the remedy with the flags to pass (None when no sign was found)."""
    if not signs:
        return None
    beta, lr = hyperparameters.get("beta"), hyperparameters.get("learning_rate")
    loss = str(hyperparameters.get("loss_type", "sigmoid"))
    sft = "sft" in loss.split(",")
    first = ("keep the SFT term but give it more weight (e.g. `--loss_weights 1.0 2.0`)" if sft else
             "add the SFT term on the chosen replies with `--loss_type sigmoid sft --loss_weights 1.0 1.0` (the RPO "
             "recipe)")
    now = lambda value: f" (now {value:g})" if isinstance(value, (int, float)) else ""  # noqa: E731
    return (f"DPO degenerated here ({', '.join(signs)}): {first}, or move less far from the base with a lower "
            f"`--learning_rate`{now(lr)} or a higher `--beta`{now(beta)}.")


def diagnose(metrics: RunMetrics) -> dict[str, Any]:
    """metrics.json's `degeneration`: the signs found, the chosen log-prob drop they were judged by, and the advice."""
    signs = degeneration_signs(metrics)
    drop = chosen_logp_drop(metrics.eval_before, metrics.eval_after)
    return {"signs": signs, "chosen_logp_rel_drop": None if drop is None else round(drop, 6),
            "advice": advice(signs, metrics.hyperparameters)}
