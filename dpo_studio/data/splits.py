"""The data of a run, loaded and checked once before any model is touched: training and held-out pairs (split by
prompt hash or from --eval-dataset), the caps, and what metrics.json says about them (public references only)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from dpo_studio.config.arguments import ScriptArguments
from dpo_studio.data.reading import LoadReport, PreferencePair, load_pairs, split_pairs
from dpo_studio.public_refs import public_ref, scrub

logger = logging.getLogger(__name__)


@dataclass
class PreparedData:
    train: list[PreferencePair]
    eval: list[PreferencePair]
    info: dict[str, Any]


def prepare_data(script_args: ScriptArguments, seed: int) -> PreparedData:
    pairs, report = load_pairs(script_args.dataset, script_args.dataset_split, script_args.skip_invalid)
    reports: list[LoadReport] = [report]
    if script_args.eval_dataset:
        eval_pairs, eval_report = load_pairs(script_args.eval_dataset, "test", script_args.skip_invalid)
        reports.append(eval_report)
        train_pairs = pairs
    else:
        train_pairs, eval_pairs = split_pairs(pairs, script_args.eval_fraction, seed)
    if script_args.max_train_pairs:
        train_pairs = train_pairs[: script_args.max_train_pairs]
    if script_args.max_eval_pairs:
        eval_pairs = eval_pairs[: script_args.max_eval_pairs]
    for rep in reports:
        if rep.rows_skipped:
            logger.warning("%s: skipped %d invalid rows (first: %s)", rep.source, rep.rows_skipped, rep.skipped_examples[0])
    dataset = public_ref(script_args.dataset)  # metrics.json and the cards are published: no local paths
    load_reports = [rep.as_dict() for rep in reports]
    for rep in load_reports:
        rep["skipped_examples"] = [scrub(message, rep["source"]) for message in rep["skipped_examples"]]
        rep["source"] = public_ref(rep["source"])
    info = {
        "dataset": dataset,
        "eval_dataset": public_ref(script_args.eval_dataset) or f"{script_args.eval_fraction:g} of {dataset} (by prompt hash)",
        "train_pairs": len(train_pairs),
        "eval_pairs": len(eval_pairs),
        "load_reports": load_reports,
    }
    return PreparedData(train_pairs, eval_pairs, info)
