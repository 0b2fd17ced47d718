"""`train_dpo.py` behind the thin script: parse, run, summarise, and turn bad input into one line + exit code 2."""

from __future__ import annotations

import logging
import sys

from .config import ConfigError, parse_config
from .data import DataError
from .pipeline import FamilyResult, OutputExistsError, is_main_process, run

EXIT_BAD_INPUT = 2

logger = logging.getLogger("dpo_studio")


def summary_table(results: list[FamilyResult]) -> str:
    """A plain-text table of held-out metrics before/after DPO, one row per family."""
    header = f"{'family':<10} {'acc before':>10} {'acc after':>10} {'margin after':>12} {'logp gap before':>15} {'logp gap after':>14} {'pairs/s':>8}"
    lines = [header, "-" * len(header)]
    for result in results:
        if result.skipped:
            lines.append(f"{result.family:<10} (already finished, skipped)")
            continue
        before, after = result.metrics["eval_before"], result.metrics["eval_after"]
        lines.append(
            f"{result.family:<10} {before['rewards/accuracies']:>10.3f} {after['rewards/accuracies']:>10.3f} "
            f"{after['rewards/margins']:>12.3f} {before['logps/gap']:>15.2f} {after['logps/gap']:>14.2f} "
            f"{result.metrics['train_pairs_per_s']:>8.1f}"
        )
    return "\n".join(lines)


def run_cli(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    try:
        script_args, training_args, model_args = parse_config(argv)
        results = run(script_args, training_args, model_args)
    except (DataError, ConfigError, OutputExistsError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    if is_main_process():
        print(summary_table(results))
        for result in results:
            print(f"{result.family}: {result.output_dir}")
    return 0
