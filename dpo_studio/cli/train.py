"""`train_dpo.py` behind the thin script: parse, run, summarise, and turn bad input into one line + exit code 2."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from dpo_studio.hub.publish import (
    PublishError,
    PushTarget,
    check_push_access,
    parse_repo_ids,
    push_outputs,
    push_requested,
    require_token,
)
from dpo_studio.logs import argv_log_level, setup_logging

if TYPE_CHECKING:  # the training stack (torch, TRL) is imported inside run_cli, after the fast --push token check
    from dpo_studio.training.pipeline import FamilyResult

EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130  # the shell convention for a run stopped by a signal

logger = logging.getLogger(__name__)


def summary_table(results: list["FamilyResult"]) -> str:
    """A plain-text table of held-out metrics before/after DPO, one row per family."""
    header = f"{'family':<10} {'acc before':>10} {'acc after':>10} {'margin after':>12} {'logp gap before':>15} {'logp gap after':>14} {'pairs/s':>8}"
    lines = [header, "-" * len(header)]
    for result in results:
        if result.skipped:
            lines.append(f"{result.family:<10} (already finished, skipped)")
            continue
        before, after = result.metrics.eval_before, result.metrics.eval_after
        lines.append(
            f"{result.family:<10} {before['rewards/accuracies']:>10.3f} {after['rewards/accuracies']:>10.3f} "
            f"{after['rewards/margins']:>12.3f} {before['logps/gap']:>15.2f} {after['logps/gap']:>14.2f} "
            f"{result.metrics.train_pairs_per_s:>8.1f}"
        )
    return "\n".join(lines)


def run_cli(argv: list[str] | None = None) -> int:
    """Parse, run and summarise one command; bad input is one line on stderr and exit code 2."""
    early = _early_checks(sys.argv[1:] if argv is None else argv)
    if early is not None:
        return early

    from dpo_studio.config.arguments import ConfigError
    from dpo_studio.data.reading import DataError
    from dpo_studio.training.pipeline import OutputExistsError
    from dpo_studio.training.signals import TrainingInterrupted

    try:
        return _run_command(argv)
    except (DataError, ConfigError, OutputExistsError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except TrainingInterrupted as exc:
        print(f"interrupted: {exc}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except PublishError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code


def _early_checks(args: list[str]) -> int | None:
    """The log level and, for --push, the token: checked before TRL/torch are imported; an exit code on failure."""
    try:
        setup_logging(argv_log_level(args))
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    try:  # --push without a token fails here, in about a second
        if push_requested(args) or _asks_push_to_hub(args):
            require_token()
    except PublishError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    return None


def _asks_push_to_hub(args: list[str]) -> bool:
    """TRL's `--push_to_hub` (= --push, see inherited_flags.py), for the same fast token check."""
    for i, token in enumerate(args):
        name, _, value = token.partition("=")
        if name in ("--push_to_hub", "--push-to-hub"):
            value = value or (args[i + 1] if i + 1 < len(args) and not args[i + 1].startswith("-") else "true")
            return value.lower() in ("true", "1", "yes")
    return False


def _run_command(argv: list[str] | None) -> int:
    """--check-data, --evaluate, --push-only or training (+ --push), after the push rights are checked."""
    from dpo_studio.config.arguments import parse_config
    from dpo_studio.training.pipeline import is_main_process, run
    from dpo_studio.training.speed.host_tuning import tune_host  # process-wide: once per command, CPU runs only

    join_cpu_ranks()
    script_args, training_args, model_args = parse_config(argv)
    if script_args.estimate and not script_args.check_data:
        from dpo_studio.config.arguments import ConfigError

        raise ConfigError("--estimate goes with --check-data (dpo-studio check-data --estimate)")
    if script_args.check_data:  # validation only: no push, no training, nothing written
        from dpo_studio.training.check_data import check_data, format_report

        print(format_report(check_data(script_args, training_args, model_args)), flush=True)
        if script_args.estimate:  # a few timed steps in a temporary folder, removed afterwards
            from dpo_studio.training.estimate import report_lines

            tune_host(training_args.precision.device)  # timed as training runs
            print(report_lines(script_args, training_args, model_args))
        return 0
    target = _push_target(script_args) if script_args.push or script_args.push_only else None
    if script_args.evaluate:
        return _evaluate(script_args, training_args)
    results = []
    if script_args.push_only:
        pushed = push_outputs(Path(script_args.push_only), target)
    else:
        tune_host(training_args.precision.device)
        results = run(script_args, training_args, model_args)
        pushed = {}
        if target is not None and is_main_process():
            pushed = push_outputs(Path(training_args.output_dir), target, [r.output_dir for r in results])
    if is_main_process():
        if not script_args.push_only:
            print(summary_table(results))
            for result in results:
                print(f"{result.family}: {result.output_dir}")
        for repo_id, commit in pushed.items():
            print(f"pushed {repo_id} (commit {commit[:10]})")
    return 0


def join_cpu_ranks() -> None:
    """At the command's start (never while parsing): without a GPU, transformers sets up a single CPU process even under
    torchrun/accelerate launch; with ACCELERATE_USE_CPU, CPU ranks join a gloo process group and train with DDP."""
    import torch

    if not torch.cuda.is_available():
        os.environ.setdefault("ACCELERATE_USE_CPU", "true")


def _push_target(script_args) -> PushTarget:
    """whoami + namespace rights, before any data or model; --hub-repo-ids must name families of --models."""
    from dpo_studio.config.arguments import ConfigError, family_dir_name

    target = check_push_access(PushTarget(
        script_args.hub_namespace, parse_repo_ids(script_args.hub_repo_ids), script_args.private,
        script_args.revision, script_args.commit_message))
    unknown = set(target.explicit or {}) - {family_dir_name(f) for f in script_args.family_list()}
    if unknown and not script_args.push_only:
        raise ConfigError(f"--hub-repo-ids names families not in --models: {', '.join(sorted(unknown))}")
    return target


def _evaluate(script_args, training_args) -> int:
    """--evaluate: the evidence table and warnings of an existing base/DPO pair, written to evaluation.json."""
    from dpo_studio.evaluation.evidence import card_table_markdown
    from dpo_studio.evaluation.existing import evaluate_existing

    path, result = evaluate_existing(script_args, training_args)
    print(card_table_markdown({"generation_before": result["generation_before"],
                               "generation_after": result["generation_after"],
                               "comparison": result["generation_comparison"]}))
    for warning in result["generation_warnings"]:
        print(f"warning: {warning}")
    print(f"evaluation written to {path}")
    return 0
