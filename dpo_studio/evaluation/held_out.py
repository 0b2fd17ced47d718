"""Held-out DPO metrics as means over pairs (accuracy = k/n), under TRL's metric names.

`Trainer.evaluate()` reports TRL's per-batch means averaged over batches, so an uneven last batch weighs as much as a
full one (81 pairs in batches of 32, 32, 17: accuracy 0.9896 where 80/81 = 0.9877 of pairs are right). Here the same
trainer code runs on every batch (`prediction_step` -> TRL's `_compute_loss`, or the seq2seq trainer's, with the
run's loss types, beta and reference), and each batch's means are weighted by its number of pairs. Hand-written
because neither TRL nor Trainer offers a per-pair reduction of these metrics.
"""

from __future__ import annotations

import time
from typing import Any

from torch.utils.data import DataLoader

from dpo_studio.private_api import trl_eval_metrics

# TRL's metric names reported for the held-out split. Each is a mean over pairs of TRL's per-pair values.
PAIR_METRICS = (
    "rewards/chosen",
    "rewards/rejected",
    "rewards/accuracies",
    "rewards/margins",
    "logps/chosen",
    "logps/rejected",
)
EVAL_METRICS = ("loss", *PAIR_METRICS)


def evaluate_pairs(trainer) -> dict[str, float]:
    """Mean over the held-out pairs of `trainer.eval_dataset` of `loss` and TRL's reward / log-prob metrics.

    Also returns `logps/gap` (mean log p(chosen) - log p(rejected)), `pairs` (n), `correct` (k) and `runtime`.
    Under DDP every rank scores the whole split (small by design), so ranks agree without a padded last batch.
    """
    # Our own sequential loader (not `get_eval_dataloader`, which shards under DDP); the preference collators read
    # only the columns they need, so the text columns can stay.
    loader = DataLoader(trainer.eval_dataset, batch_size=trainer.args.per_device_eval_batch_size, shuffle=False,
                        collate_fn=trainer.data_collator)
    model = trainer.model
    was_training = model.training
    model.eval()  # TRL files metrics under "eval" when the model is in eval mode; dropout off
    recorded = trl_eval_metrics(trainer)
    saved = {key: list(values) for key, values in recorded.items()}
    sums = dict.fromkeys(EVAL_METRICS, 0.0)
    n_pairs = 0
    started = time.perf_counter()
    try:
        for batch in loader:
            size = _pairs_in(batch)
            recorded.clear()
            # The run's mixed precision, as TRL scores the reference: before `train` accelerate has not wrapped the
            # model's forward in autocast yet, and a bf16 reference against an fp32 policy reads as non-zero rewards.
            with trainer.accelerator.autocast():
                loss, _, _ = trainer.prediction_step(model, batch, prediction_loss_only=True)  # it moves the batch
            sums["loss"] += float(loss.detach().float()) * size
            for key in PAIR_METRICS:
                sums[key] += recorded[key][-1] * size  # TRL's mean over this batch's pairs
            n_pairs += size
    finally:
        recorded.clear()
        recorded.update(saved)
        model.train(was_training)
    if n_pairs == 0:
        raise ValueError("evaluate_pairs: the held-out split is empty")
    correct = round(sums["rewards/accuracies"])  # each batch contributed k_b/n_b * n_b: an integer up to rounding
    metrics = {key: sums[key] / n_pairs for key in EVAL_METRICS}
    metrics["rewards/accuracies"] = correct / n_pairs
    metrics["logps/gap"] = metrics["logps/chosen"] - metrics["logps/rejected"]
    metrics.update(pairs=n_pairs, correct=correct, runtime=round(time.perf_counter() - started, 3))
    return metrics


def _pairs_in(batch: dict[str, Any]) -> int:
    """Pairs in a collated batch: causal and seq2seq batches stack [chosen; rejected] decoder rows."""
    return int(batch["input_ids"].shape[0]) // 2
