"""Generation evidence: base and DPO generate on held-out prompts and are measured side by side (for metrics.json
after training, and for `--evaluate`, which measures any existing base/DPO pair without training)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from trl import DPOConfig

from .config import ConfigError, ScriptArguments
from .report import write_json
from .training_data import PreparedData, prepare_data

# Sampling settings of the evidence generations: the same for base and DPO, and the app's defaults.
EVIDENCE_SAMPLING = {"temperature": 0.7, "top_p": 0.95}
NUM_CARD_SAMPLES = 5


def generation_evidence(pair, data: PreparedData, script_args: ScriptArguments, seed: int) -> dict[str, Any]:
    """Generate from base and DPO (`generation.LoadedPair`) on held-out prompts and measure both sides.

    Returns the metrics.json keys `generation_before`, `generation_after`, `generation_comparison`,
    `generation_warnings`, `generation_settings`, `samples` and `judge` (the style judge, trained on the training
    split's replies).
    """
    from .evidence import StyleJudge, evaluate_generations
    from .generation import generate_pair_results

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


def evaluate_existing(script_args: ScriptArguments, training_args: DPOConfig) -> tuple[Path, dict[str, Any]]:
    """`--evaluate`: the post-training evidence for any base/DPO pair (local dirs or Hub ids), without training.

    The judge is trained on the training split of --dataset and the prompts come from its held-out split (or
    --eval-dataset). Writes `evaluation.json` into --output-dir (atomically) and returns its path and content.
    """
    from .generation import load_pair

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
    tmp = out_dir / "evaluation.json.tmp"
    write_json(tmp, result)
    os.replace(tmp, out_dir / "evaluation.json")
    return out_dir / "evaluation.json", result
