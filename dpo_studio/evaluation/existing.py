"""`--evaluate`: the generation evidence of any existing base/DPO pair (local dirs or Hub ids), without training."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from trl import DPOConfig

from dpo_studio.config.arguments import ConfigError, ScriptArguments
from dpo_studio.data.splits import prepare_data
from dpo_studio.evaluation.evidence import generation_evidence
from dpo_studio.json_files import write_json_atomic


def evaluate_existing(script_args: ScriptArguments, training_args: DPOConfig) -> tuple[Path, dict[str, Any]]:
    """`--evaluate`: the post-training evidence for any base/DPO pair (local dirs or Hub ids), without training.

    The judge is trained on the training split of --dataset and the prompts come from its held-out split (or
    --eval-dataset). Writes `evaluation.json` into --output-dir (atomically) and returns its path and content.
    """
    from dpo_studio.inference.generation import load_pair

    if not (script_args.eval_adapter or script_args.eval_merged):
        raise ConfigError("--evaluate needs the DPO model: --eval-adapter DIR_OR_ID and/or --eval-merged DIR_OR_ID")
    if script_args.eval_generations < 1:
        raise ConfigError("--evaluate needs --eval-generations >= 1")
    data = prepare_data(script_args, training_args.seed)
    try:
        pair = load_pair(
            script_args.eval_base, script_args.eval_adapter, script_args.eval_merged,
            trust_remote_code=script_args.trust_remote_code_models,
        )
    except (OSError, ValueError) as exc:
        raise ConfigError(f"--evaluate: cannot load the models: {exc}") from None
    result = {
        "base": pair.base_source, "dpo": pair.dpo_source, "shares_weights": pair.shares_weights,
        "dataset": data.info, **generation_evidence(pair, data, script_args, training_args.seed),
    }
    out_dir = Path(training_args.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out_dir / "evaluation.json", result)
    return out_dir / "evaluation.json", result
