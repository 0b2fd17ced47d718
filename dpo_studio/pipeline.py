"""The training pipeline, per family:

    (demo: build + warm start) -> evaluate before -> LoRA DPO -> evaluate after -> save outputs atomically

Outputs of family F are assembled in `DIR/.work/F/staging` and moved to `DIR/F` only when complete, so an interrupted
run never leaves a folder that looks finished. Trainer checkpoints live in `DIR/.work/F/checkpoints` (for --resume).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase, set_seed
from transformers.trainer_utils import get_last_checkpoint
from trl import DPOConfig

from . import __version__
from .config import ConfigError, ModelArguments, ScriptArguments, family_dir_name
from .data import LoadReport, PreferencePair, load_pairs, split_pairs, to_dataset
from .families import (
    Architecture,
    architecture_of,
    check_quantization,
    describe_quantization,
    load_model,
    load_model_and_tokenizer,
    prepare_tokenizer,
    quantization_config,
    resolve_model_id,
)
from .precision import Precision, precision_of
from .prompt_format import PromptFormat
from .public_refs import public_ref, scrub
from .signals import StopOnSignal, TrainingInterrupted
from .evaluation import evaluate_pairs
from .licenses import base_model_license
from .names import DPO_CONFIG_FILE  # beta etc., read back by the app to score implicit rewards
from .report import write_json, write_plots, write_report_html

logger = logging.getLogger("dpo_studio")

FINISHED_MARKER = "metrics.json"  # written last into the staging folder: a family folder with it is complete
DEMO_BASE_REF = "../base"  # a demo adapter's / merged model's base: DIR/F/base, relative to DIR/F/adapter


class OutputExistsError(RuntimeError):
    pass


@dataclass
class PreparedData:
    train: list[PreferencePair]
    eval: list[PreferencePair]
    info: dict[str, Any]


@dataclass
class FamilyResult:
    family: str
    output_dir: Path
    metrics: dict[str, Any]
    skipped: bool = False


def is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


# ------------------------------------------------------------------------------------------------------------- data
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


# ------------------------------------------------------------------------------------------------------------ models
def prepare_base(
    family: str, data: PreparedData, script_args: ScriptArguments, model_args: ModelArguments, work: Path, seed: int,
    quant=None,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase, Architecture, str, bool]:
    """Returns (model, tokenizer, architecture, base model id, built_locally). With `quant` (bitsandbytes settings)
    the model is loaded quantized; the demo quantizes its warm-started base, reloaded from `work/base`."""
    if not script_args.demo:
        model_id = resolve_model_id(family)
        model, tokenizer, arch = load_model_and_tokenizer(
            model_id, model_args.model_revision, script_args.trust_remote_code_models, quant
        )
        return model, tokenizer, arch, model_id, False

    from .demo import build_model, tokenizer_texts, train_tokenizer, warm_start

    encoder_decoder = family == "t5"  # `run` has checked that demo families are gpt2/t5
    base_dir = work / "base"
    if (base_dir / FINISHED_MARKER).exists():  # a resumed demo reuses the exact warm-started base
        model, tokenizer, arch = load_model_and_tokenizer(str(base_dir), quantization_config=quant)
        return model, tokenizer, arch, str(base_dir), True
    tokenizer = train_tokenizer(tokenizer_texts(data.train), script_args.demo_vocab_size, encoder_decoder)
    model = build_model(tokenizer, encoder_decoder, script_args.demo_hidden_size, script_args.demo_layers, seed)
    arch = architecture_of(model.config)
    logger.info("[%s] demo warm start: %d pairs x 2 replies", family, len(data.train))
    history = warm_start(
        model, tokenizer, data.train, arch.prompt_format, script_args.demo_sft_epochs,
        script_args.demo_sft_learning_rate, seed,
    )
    if is_main_process():
        tmp = base_dir.with_name("base.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        arch.prompt_format.save(tmp)
        write_json(tmp / FINISHED_MARKER, {"warm_start_log_history": history})
        shutil.rmtree(base_dir, ignore_errors=True)
        os.replace(tmp, base_dir)
    if quant is not None:  # QLoRA on the demo: DPO runs on the quantized warm-started base
        model = load_model(str(base_dir), arch, quantization_config=quant)
    return model, tokenizer, arch, str(base_dir), True


# ----------------------------------------------------------------------------------------------------------- saving
def save_outputs(
    stage: Path,
    model,
    tokenizer: PreTrainedTokenizerBase,
    arch: Architecture,
    base_dir: Path | None,
    base_model_id: str,
    training_args: DPOConfig,
    metrics: dict[str, Any],
) -> None:
    """adapter/, merged/, base/ (demo), plots/, metrics.json (last) into the staging folder."""
    prompt_format: PromptFormat = arch.prompt_format
    dpo_settings = {"beta": training_args.beta, "loss_type": list(training_args.loss_type), "base_model": base_model_id}
    adapter_dir, merged_dir = stage / "adapter", stage / "merged"
    if hasattr(model, "peft_config"):
        model.peft_config["default"].base_model_name_or_path = base_model_id
        # A demo base is named relative to the adapter, which PEFT's vocabulary check cannot resolve (and the demo's
        # vocabulary never changes): skip the check rather than warn about a config it cannot find.
        demo = {"save_embedding_layers": False} if base_model_id == DEMO_BASE_REF else {}
        model.save_pretrained(adapter_dir, safe_serialization=True, **demo)
        tokenizer.save_pretrained(adapter_dir)
        prompt_format.save(adapter_dir)
        write_json(adapter_dir / DPO_CONFIG_FILE, dpo_settings)
        merged = model.merge_and_unload()  # PEFT folds the LoRA deltas into the base weights
    else:
        merged = model  # full DPO: the trained model itself
    merged.save_pretrained(merged_dir, safe_serialization=True)
    tokenizer.save_pretrained(merged_dir)
    prompt_format.save(merged_dir)
    write_json(merged_dir / DPO_CONFIG_FILE, dpo_settings)
    if base_dir is not None:
        shutil.copytree(base_dir, stage / "base", ignore=shutil.ignore_patterns(FINISHED_MARKER))
    write_plots(metrics["log_history"], stage / "plots", title_prefix=f"{metrics['family']}: ")
    write_report_html(stage, metrics)
    from .cards import write_model_cards  # cards in merged/ and adapter/ use local paths until published

    write_model_cards(stage, metrics)


def publish_staging(stage: Path, final: Path) -> None:
    """Swap the complete staging folder into place; an existing finished folder is replaced only after that."""
    old = final.with_name(final.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        os.replace(final, old)
    os.replace(stage, final)
    shutil.rmtree(old, ignore_errors=True)


def published_model(trained, load_full_precision_base, quantized: bool):
    """What is saved, merged and served: the trained model, except after QLoRA, where the trained adapter is put on
    the full-precision base (so merged/ is adapter + full-precision weights and loads without bitsandbytes)."""
    if not quantized:
        return trained
    from peft import get_peft_model, get_peft_model_state_dict, set_peft_model_state_dict

    model = get_peft_model(load_full_precision_base(), trained.peft_config["default"])
    set_peft_model_state_dict(model, get_peft_model_state_dict(trained))
    return model


def serving_pair(model, load_full_precision_base, tokenizer: PreTrainedTokenizerBase, arch: Architecture):
    """Base vs DPO for the evidence generations: one set of weights with the adapter on/off (LoRA), or the frozen
    base and the trained model as two models (full DPO)."""
    from .generation import LoadedPair

    model.eval()  # PEFT's mixed-adapter generation needs eval mode
    common = {"tokenizer": tokenizer, "prompt_format": arch.prompt_format, "is_encoder_decoder": arch.is_encoder_decoder}
    if hasattr(model, "peft_config"):
        return LoadedPair(model=model, **common)
    return LoadedPair(model=None, base_model=load_full_precision_base().eval(), dpo_model=model, **common)


# --------------------------------------------------------------------------------------------------------- training
def selected_hyperparameters(training_args: DPOConfig, model_args: ModelArguments, lora_config) -> dict[str, Any]:
    keys = (
        "beta", "loss_type", "learning_rate", "num_train_epochs", "per_device_train_batch_size",
        "gradient_accumulation_steps", "max_length", "lr_scheduler_type", "warmup_steps", "seed",
        "precompute_ref_log_probs", "bf16", "fp16", "optim",
    )
    params = {key: getattr(training_args, key) for key in keys}
    params["optim"] = str(getattr(params["optim"], "value", params["optim"]))
    params.update(use_peft=model_args.use_peft, load_in_4bit=model_args.load_in_4bit, load_in_8bit=model_args.load_in_8bit)
    params["loss_type"] = ",".join(params["loss_type"])
    if lora_config is not None:
        params.update(
            lora_r=lora_config.r, lora_alpha=lora_config.lora_alpha, lora_dropout=lora_config.lora_dropout,
            lora_target_modules=sorted(lora_config.target_modules) if lora_config.target_modules else "peft default",
        )
    return params


def shared_on_disk(dataset, path: Path, args: DPOConfig):
    """Under DDP, give every rank the same on-disk copy of a dataset.

    TRL caches precomputed reference log-probs next to the dataset's files, written by rank 0 and read by the others;
    an in-memory dataset's cache lives in a per-process temp dir that the other ranks cannot see.
    """
    from datasets import load_from_disk

    with args.main_process_first(desc=f"saving {path.name} split"):
        if args.process_index == 0:
            dataset.save_to_disk(str(path))
    return load_from_disk(str(path))


def build_trainer(
    arch: Architecture, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, train_ds, eval_ds,
    args: DPOConfig, lora_config,
):
    """The DPO trainer for one family: TRL's DPOTrainer for causal LMs, our Seq2SeqDPOTrainer for encoder-decoders.

    The reference model is the base with the LoRA adapter disabled (no second copy of the weights). Speed features
    (length-grouped batches, in-batch length buckets, compact LM head, threads, native-CPU bf16) come from `speed`.
    """
    from .speed import fast_trainer

    return fast_trainer(
        arch.trainer_class(), model=model, args=args, train_dataset=train_ds, eval_dataset=eval_ds,
        processing_class=tokenizer, peft_config=lora_config,
    )


def count_truncation(trainer, n_train: int, n_eval: int, max_length: int | None) -> dict[str, dict[str, int]]:
    """How many pairs the trainer truncates (or drops) to fit `max_length`, per split.

    Our seq2seq trainer counts while tokenising; for TRL's causal path we count from its tokenised columns: a pair is
    truncated when prompt + the longer completion exceeds max_length, and dropped when the prompt alone fills it.
    """
    if hasattr(trainer, "truncation_counts"):
        return {split: {"rows": c["rows"], "dropped": 0, "total": c["total"]} for split, c in trainer.truncation_counts.items()}
    out = {}
    for split, dataset, total in (("train", trainer.train_dataset, n_train), ("eval", trainer.eval_dataset, n_eval)):
        rows = 0
        if max_length is not None and dataset is not None:
            for prompt, chosen, rejected in zip(dataset["prompt_ids"], dataset["chosen_ids"], dataset["rejected_ids"]):
                rows += len(prompt) + max(len(chosen), len(rejected)) > max_length
        out[split] = {"rows": rows, "dropped": total - (len(dataset) if dataset is not None else 0), "total": total}
    return out


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


def train_family(
    family: str,
    data: PreparedData,
    script_args: ScriptArguments,
    training_args: DPOConfig,
    model_args: ModelArguments,
    precision: Precision | None = None,
) -> FamilyResult:
    out_root = Path(training_args.output_dir)
    name = family_dir_name(family)
    final, work = out_root / name, out_root / ".work" / name
    if (final / FINISHED_MARKER).exists():
        if script_args.resume:
            logger.info("[%s] already finished in %s; skipping", family, final)
            return FamilyResult(family, final, {}, skipped=True)
        if not script_args.overwrite:
            raise OutputExistsError(f"{final}: finished outputs already exist; pass --overwrite to replace them or --resume")
    checkpoints = work / "checkpoints"
    last_checkpoint = get_last_checkpoint(str(checkpoints)) if script_args.resume and checkpoints.is_dir() else None
    if is_main_process():  # under DDP only rank 0 touches the output tree
        if not script_args.resume:
            shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True, exist_ok=True)

    set_seed(training_args.seed)
    precision = precision or precision_of(training_args)
    quant = quantization_config(model_args.load_in_4bit, model_args.load_in_8bit, precision,
                                model_args.bnb_4bit_quant_type, model_args.use_bnb_nested_quant)
    model, tokenizer, arch, base_model_id, built_locally = prepare_base(
        family, data, script_args, model_args, work, training_args.seed, quant
    )
    # The full-precision base, reloaded for a QLoRA merge and as the frozen side of full-DPO comparisons.
    base_source, base_revision = (str(work / "base"), None) if built_locally else (base_model_id, model_args.model_revision)

    def load_full_precision_base() -> PreTrainedModel:
        return load_model(base_source, arch, base_revision, script_args.trust_remote_code_models)

    if built_locally:  # the copy in the finished folder, named relative to adapter/ and merged/ (no local path)
        base_model_id = DEMO_BASE_REF
    prepare_tokenizer(tokenizer, arch)
    train_ds = to_dataset(data.train, arch.prompt_format)
    eval_ds = to_dataset(data.eval, arch.prompt_format)
    args = dataclasses.replace(training_args, output_dir=str(checkpoints))
    if args.world_size > 1:
        train_ds = shared_on_disk(train_ds, work / "data" / "train", args)
        eval_ds = shared_on_disk(eval_ds, work / "data" / "eval", args)
    lora_config = (
        arch.lora_config(model_args.lora_r, model_args.lora_alpha, model_args.lora_dropout, model_args.lora_target_modules)
        if model_args.use_peft
        else None
    )
    trainer = build_trainer(arch, model, tokenizer, train_ds, eval_ds, args, lora_config)
    truncation = count_truncation(trainer, len(train_ds), len(eval_ds), args.max_length)
    if any(counts["rows"] for counts in truncation.values()):
        logger.warning("[%s] over-long pairs truncated to max_length=%s: %s", family, args.max_length, truncation)
    logger.info("[%s] evaluating the base model on %d held-out pairs", family, len(eval_ds))
    eval_before = evaluate_pairs(trainer)
    logger.info("[%s] DPO on %d pairs (%s)", family, len(train_ds), arch.kind)
    stopper = StopOnSignal()
    trainer.add_callback(stopper)
    started = time.perf_counter()
    with stopper.installed():
        train_output = trainer.train(resume_from_checkpoint=last_checkpoint)
    runtime = time.perf_counter() - started
    if stopper.requested:
        raise TrainingInterrupted(
            f"[{family}] {stopper.signal_name} received: checkpoint saved at step {stopper.stopped_at_step} in "
            f"{checkpoints}; nothing was published. Continue with the same command plus --resume"
        )
    logger.info(
        "[%s] rank %d/%d finished %d DPO steps", family, args.process_index, args.world_size, trainer.state.global_step
    )
    eval_after = evaluate_pairs(trainer)
    # Pairs trained in this process (a resumed run counts only the steps it ran itself).
    start_step = int(last_checkpoint.rsplit("-", 1)[-1]) if last_checkpoint else 0
    steps_run = trainer.state.global_step - start_step
    pairs_per_step = args.per_device_train_batch_size * args.gradient_accumulation_steps * args.world_size
    pairs_seen = min(steps_run * pairs_per_step, len(train_ds) * float(args.num_train_epochs))
    metrics: dict[str, Any] = {
        "family": name,
        "architecture": arch.kind,
        "model_type": arch.model_type,
        "base_model": public_ref(base_model_id) if not built_locally else f"{name} built from config (demo), see base/",
        "base_license": base_model_license(base_model_id, built_locally=built_locally),  # the cards' `license`
        "dataset": data.info["dataset"],
        "data": data.info,
        "train_runtime_s": round(runtime, 3),
        "train_pairs_per_s": round(pairs_seen / runtime, 3) if runtime > 0 else None,
        "train_loss": train_output.training_loss,
        "truncation": truncation,
        "resumed_from_step": start_step or None,
        "world_size": args.world_size,
        "precision": precision.as_dict(),
        "training": "full-parameter DPO" if lora_config is None else "QLoRA DPO" if quant is not None else "LoRA DPO",
        "quantization": describe_quantization(quant),
        "eval_before": eval_before,
        "eval_after": eval_after,
        # trainer.args: the settings as trained
        "hyperparameters": selected_hyperparameters(trainer.args, model_args, lora_config),
        "prompt_format": dataclasses.asdict(arch.prompt_format),
        "versions": _versions(),
        "log_history": trainer.state.log_history,
    }
    model = published_model(trainer.model, load_full_precision_base, quant is not None) if trainer.is_world_process_zero() else None
    if script_args.eval_generations > 0 and trainer.is_world_process_zero():
        logger.info("[%s] generating from base and DPO on %d held-out prompts", family, script_args.eval_generations)
        pair = serving_pair(model, load_full_precision_base, tokenizer, arch)
        metrics.update(generation_evidence(pair, data, script_args, args.seed))
        for warning in metrics["generation_warnings"]:
            logger.warning("[%s] %s", family, warning)
    if not trainer.is_world_process_zero():  # DDP: rank 0 alone writes outputs
        return FamilyResult(family, final, metrics)
    stage = work / "staging"
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir(parents=True)
    save_outputs(
        stage, model, tokenizer, arch, work / "base" if built_locally else None, base_model_id, args, metrics
    )
    write_json(stage / FINISHED_MARKER, metrics)  # last file: its presence marks the folder complete
    publish_staging(stage, final)
    if not script_args.keep_checkpoints:
        shutil.rmtree(work, ignore_errors=True)
    logger.info("[%s] outputs written to %s", family, final)
    return FamilyResult(family, final, metrics)


def _versions() -> dict[str, str]:
    import peft
    import transformers
    import trl

    return {
        "dpo_studio": __version__, "torch": torch.__version__, "transformers": transformers.__version__,
        "trl": trl.__version__, "peft": peft.__version__,
    }


def run(script_args: ScriptArguments, training_args: DPOConfig, model_args: ModelArguments) -> list[FamilyResult]:
    """Train every requested family; data is loaded and validated once, before any model is touched."""
    families = script_args.family_list()
    if model_args.model_name_or_path:
        families = [model_args.model_name_or_path]
    check_quantization(model_args.load_in_4bit, model_args.load_in_8bit, model_args.use_peft)
    if script_args.demo:  # option errors first: nothing is loaded before the whole command is known to be valid
        unknown = [family for family in families if family not in ("gpt2", "t5")]
        if unknown:
            raise ConfigError(f"--demo builds 'gpt2' and 't5' architectures only, got family '{unknown[0]}'")
    precision = precision_of(training_args)
    logger.info("precision: %s", precision.describe())
    data = prepare_data(script_args, training_args.seed)
    return [train_family(family, data, script_args, training_args, model_args, precision) for family in families]
