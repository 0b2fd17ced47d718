"""One home for the `FusedCausalLMOutput` contract of TRL 1.16's `fused_lm_head=True` forward, shared by the compact
causal head (`speed.heads`) and the seq2seq head (`seq2seq_dpo`): the per-token fields, which ones the policy is
asked for, and how per-token values of the labelled positions become the `[rows, positions]` output."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from trl.trainer.utils import FusedCausalLMOutput

# The per-token fields of `FusedCausalLMOutput`, in the order TRL's `ChunkedLogProbFunction` returns them.
FUSED_OUTPUT_FIELDS = ("log_probs", "entropy", "log_sum_sq_probs", "mean_logits", "is_top1")


def policy_fields(use_weighting: bool) -> tuple[str, ...]:
    """The fields `DPOTrainer` reads from the policy's fused forward (the reference needs `log_probs` only)."""
    fields = ("log_probs", "entropy", "mean_logits", "is_top1")
    return fields + ("log_sum_sq_probs",) if use_weighting else fields


def fused_output(
    values: Sequence[torch.Tensor | None], mask: torch.Tensor, num_items_in_batch: int | torch.Tensor | None = None
) -> FusedCausalLMOutput:
    """`FusedCausalLMOutput` from per-token values of the labelled positions (`values` in FUSED_OUTPUT_FIELDS order,
    each `[mask.sum()]` or None): zeros elsewhere, and TRL's loss (mean negative log-prob over labelled tokens, or
    summed over `num_items_in_batch`)."""
    # `masked_scatter` keeps the output connected to the graph even when no label is valid (as TRL does).
    fields = {
        name: None if value is None else value.new_zeros(mask.shape).masked_scatter(mask, value)
        for name, value in zip(FUSED_OUTPUT_FIELDS, values, strict=True)
    }
    denominator = mask.sum().clamp(min=1) if num_items_in_batch is None else num_items_in_batch
    return FusedCausalLMOutput(loss=-fields["log_probs"].sum() / denominator, label_mask=mask, **fields)
