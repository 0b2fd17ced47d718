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
from transformers.trainer_utils import TrainOutput, get_last_checkpoint
from trl import DPOConfig

from dpo_studio.config.arguments import ConfigError, ModelArguments, ScriptArguments
from dpo_studio.config.precision import Precision, PrecisionError, for_family, precision_of
from dpo_studio.data.prompt_format import PromptFormat
from dpo_studio.data.reading import to_dataset
from dpo_studio.data.splits import PreparedData, prepare_data
from dpo_studio.evaluation.degeneration import diagnose
from dpo_studio.evaluation.evidence import generation_evidence
from dpo_studio.evaluation.held_out import evaluate_pairs
from dpo_studio.json_files import write_json
from dpo_studio.models.families import (
    Architecture,
    architecture_of,
    check_quantization,
    describe_quantization,
    load_architecture,
    load_model,
    load_model_and_tokenizer,
    prepare_tokenizer,
    quantization_config,
    resolve_model_id,
)
from dpo_studio.models.licenses import base_lineage, base_model_license, dataset_license
from dpo_studio.names import DPO_CONFIG_FILE  # beta etc., read back by the app to score implicit rewards
from dpo_studio.outputs.card_conventions import framework_versions
from dpo_studio.outputs.report import write_plots, write_report_html
from dpo_studio.public_refs import public_ref
from dpo_studio.run_layout import FamilyPaths, RunMetrics
from dpo_studio.training.progress_log import ProgressLog, carry
from dpo_studio.training.signals import StopOnSignal, TrainingInterrupted
from dpo_studio.training.speed import settings_for, trainer_class_for
from dpo_studio.training.tracking import log_held_out, tracking_record, with_tracking_defaults

logger = logging.getLogger(__name__)


class OutputExistsError(RuntimeError):
    pass


@dataclass
class FamilyResult:
    family: str
    output_dir: Path
    metrics: RunMetrics | None  # None when skipped
    skipped: bool = False


@dataclass(frozen=True)
class TrainOutcome:
    """What `train` hands on to `measure` and to the rank-0 tail: the trainer as trained and what it measured."""

    trainer: Any  # the family's named DPO trainer (`speed.trainer_class_for`), after `train`
    output: TrainOutput  # `Trainer.train`'s return (training_loss, global_step, ...)
    runtime_s: float  # wall-clock seconds of `Trainer.train` in this process
    truncation: dict[str, dict[str, int]]  # per split: pairs truncated / dropped to fit max_length (`count_truncation`)
    lora_config: Any  # PEFT's `LoraConfig`, or None for full-parameter DPO
    train_pairs: int
    eval_before: dict[str, float]  # held-out metrics of the base (TRL's names, `evaluation.held_out`)
    eval_after: dict[str, float]  # the same after DPO


def is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


# ------------------------------------------------------------------------------------------------------------ models
def prepare_base(
    family: str, data: PreparedData, script_args: ScriptArguments, model_args: ModelArguments, paths: FamilyPaths,
    seed: int, quant=None, device: str = "cpu",
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase, Architecture, str, bool]:
    """Returns (model, tokenizer, architecture, base model id, built_locally). With `quant` (bitsandbytes settings)
    the model is loaded quantized onto the run's `device` ("cuda" or "cpu"); the demo quantizes its warm-started base,
    reloaded from `paths.demo_base`."""
    if not script_args.demo:
        model_id = resolve_model_id(family)
        model, tokenizer, arch = load_model_and_tokenizer(
            model_id, model_args.model_revision, script_args.trust_remote_code_models, quant, device=device
        )
        return model, tokenizer, arch, model_id, False

    from dpo_studio.models.demo import build_model, tokenizer_texts, train_tokenizer, warm_start

    encoder_decoder = family == "t5"  # `run` has checked that demo families are gpt2/t5
    base_dir = paths.demo_base.folder
    if paths.demo_base.is_finished():  # a resumed demo reuses the exact warm-started base
        model, tokenizer, arch = load_model_and_tokenizer(str(base_dir), quantization_config=quant, device=device)
        return model, tokenizer, arch, str(base_dir), True
    tokenizer = train_tokenizer(tokenizer_texts(data.train), script_args.demo_vocab_size, encoder_decoder)
    model = build_model(tokenizer, encoder_decoder, script_args.demo_hidden_size, script_args.demo_layers, seed)
    arch = architecture_of(model.config)
    logger.info("[%s] demo warm start: %d pairs x 2 replies", family, len(data.train))
    history = warm_start(
        model, tokenizer, data.train, arch.prompt_format, script_args.demo_sft_epochs,
        script_args.demo_sft_learning_rate, seed, use_cpu=device == "cpu",
    )
    if is_main_process():
        tmp = base_dir.with_name("base.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        arch.prompt_format.save(tmp)
        write_json(FamilyPaths(tmp).metrics, {"warm_start_log_history": history})
        shutil.rmtree(base_dir, ignore_errors=True)
        os.replace(tmp, base_dir)
    wait_for_every_rank()  # under torchrun no rank reads the demo base before rank 0 has written it
    if quant is not None:  # QLoRA on the demo: DPO runs on the quantized warm-started base
        model = load_model(str(base_dir), arch, quantization_config=quant, device=device)
    return model, tokenizer, arch, str(base_dir), True


def wait_for_every_rank() -> None:
    """A barrier across torchrun's ranks (accelerate's distributed state); nothing in a single process."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        from accelerate import PartialState

        PartialState().wait_for_everyone()


# ----------------------------------------------------------------------------------------------------------- saving
def save_outputs(
    stage: FamilyPaths,
    model,
    tokenizer: PreTrainedTokenizerBase,
    arch: Architecture,
    base_dir: Path | None,
    base_model_id: str,
    training_args: DPOConfig,
    metrics: RunMetrics,
) -> None:
    """adapter/, merged/, base/ (demo), plots/, metrics.json (last) into the staging folder.

    Args:
        stage: the staging folder that is moved into place once complete.
        model: the trained model (a PeftModel, or the full model with `--use-peft false`).
        base_dir: the locally built base (demo) to copy into base/, else None.
        base_model_id: the base's public ref (Hub id), recorded in the adapter config and the cards.
        metrics: what metrics.json will hold (written last, by `save`).
    """
    prompt_format: PromptFormat = arch.prompt_format
    dpo_settings = {"beta": training_args.beta, "loss_type": list(training_args.loss_type), "base_model": base_model_id}
    adapter_dir, merged_dir = stage.adapter, stage.merged
    if hasattr(model, "peft_config"):
        model.peft_config["default"].base_model_name_or_path = base_model_id
        # A demo base is named relative to the adapter, which PEFT's vocabulary check cannot resolve (and the demo's
        # vocabulary never changes): skip the check rather than warn about a config it cannot find.
        demo = {"save_embedding_layers": False} if base_model_id == FamilyPaths.DEMO_BASE_REF else {}
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
        shutil.copytree(base_dir, stage.base, ignore=shutil.ignore_patterns(FamilyPaths.METRICS_FILE))
    write_plots(metrics.log_history, stage.plots, title_prefix=f"{metrics.family}: ")
    write_report_html(stage.folder, metrics)
    from dpo_studio.outputs.cards import write_model_cards

    write_model_cards(stage.folder, metrics)


def publish_staging(stage: Path, paths: FamilyPaths) -> None:
    """Swap the complete staging folder into place; an existing finished folder is replaced only after that."""
    final, old = paths.folder, paths.old
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        os.replace(final, old)
    os.replace(stage, final)
    shutil.rmtree(old, ignore_errors=True)


def device_of(model: torch.nn.Module) -> torch.device:
    """The device a (trained) model's weights live on: everything else built for its family goes there."""
    return next(model.parameters()).device


def published_model(trained, load_full_precision_base, quantized: bool):
    """What is saved, merged and served: the trained model, except after QLoRA, where the trained adapter is put on
    the full-precision base (so merged/ is adapter + full-precision weights and loads without bitsandbytes). That base
    is loaded onto the trained model's device, so the merge and the evidence run where training ran."""
    if not quantized:
        return trained
    from peft import (
        get_peft_model,
        get_peft_model_state_dict,
        set_peft_model_state_dict,
    )

    model = get_peft_model(load_full_precision_base(device_of(trained)), trained.peft_config["default"])
    set_peft_model_state_dict(model, get_peft_model_state_dict(trained))
    return model


def serving_pair(model, load_full_precision_base, tokenizer: PreTrainedTokenizerBase, arch: Architecture):
    """Base vs DPO for the evidence generations: one set of weights with the adapter on/off (LoRA), or the frozen
    base, loaded onto the trained model's device, and the trained model as two models (full DPO)."""
    from dpo_studio.inference.generation import LoadedPair

    model.eval()  # PEFT's mixed-adapter generation needs eval mode
    common = {"tokenizer": tokenizer, "prompt_format": arch.prompt_format, "is_encoder_decoder": arch.is_encoder_decoder}
    if hasattr(model, "peft_config"):
        return LoadedPair(model=model, **common)
    return LoadedPair(model=None, base_model=load_full_precision_base(device_of(model)).eval(), dpo_model=model, **common)


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
    args: DPOConfig, lora_config, reference_store: Path | None = None,
):
    """The DPO trainer for one family (`speed.trainer_class_for(arch)`: `speed.CausalDPOTrainer` for causal LMs,
    `speed.FastSeq2SeqDPOTrainer` for encoder-decoders), with every speed feature of `speed.SpeedSettings` on.

    The reference model is the base with the LoRA adapter disabled (no second copy of the weights).

    Args:
        train_ds, eval_ds: preference datasets (`prompt`, `chosen`, `rejected`) as `data.PreparedData` holds them.
        args: TRL's `DPOConfig` as the CLI resolved it (precision, compile and product defaults applied).
        lora_config: PEFT's `LoraConfig`, or None for full-parameter DPO.
        reference_store: folder of the keyed reference log-probs (`speed.ref_cache`), or None: computed afresh.
    """
    settings = settings_for(args, model, train_ds)  # the final arguments: compile, reference batches, sampler
    trainer = trainer_class_for(arch)(
        model=model, **settings.as_kwargs(), train_dataset=train_ds, eval_dataset=eval_ds, processing_class=tokenizer,
        peft_config=lora_config, reference_store=reference_store,
    )
    warn_if_fsdp_not_applied(args, trainer.accelerator.distributed_type.value)
    return trainer


def warn_if_fsdp_not_applied(args: DPOConfig, distributed_type: str) -> None:
    """accelerate applies `--fsdp` only on GPUs/accelerators; on CPUs it trains with DDP (or one process) instead:
    say so rather than let the flag look honoured."""
    if args.fsdp and distributed_type != "FSDP":
        logger.warning("--fsdp: accelerate runs FSDP only on GPUs/accelerators; this run trains with %s instead "
                       "(metrics.json 'distributed')", "DDP" if distributed_type == "MULTI_CPU" else distributed_type)


def count_truncation(trainer, n_train: int, n_eval: int, max_length: int | None) -> dict[str, dict[str, int]]:
    """How many pairs the trainer truncates (or drops) to fit `max_length`, per split.

    Our seq2seq trainer counts while tokenising; for TRL's causal path each pair TRL tokenised is classified by
    `data.tokenize.causal_fit` (the rule check-data uses too), and the pairs TRL filtered out are the dropped ones.
    """
    from dpo_studio.data.tokenize import TokenizedPair, causal_fit

    if hasattr(trainer, "truncation_counts"):
        return {split: {"rows": c["rows"], "dropped": 0, "total": c["total"]} for split, c in trainer.truncation_counts.items()}
    out = {}
    for split, dataset, total in (("train", trainer.train_dataset, n_train), ("eval", trainer.eval_dataset, n_eval)):
        rows = 0
        if max_length is not None and dataset is not None:
            columns = (dataset["prompt_ids"], dataset["chosen_ids"], dataset["rejected_ids"])
            rows = sum(causal_fit(TokenizedPair(*ids), max_length, trainer.args.truncation_mode) == "truncated"
                       for ids in zip(*columns))
        out[split] = {"rows": rows, "dropped": total - (len(dataset) if dataset is not None else 0), "total": total}
    return out


@dataclass
class FamilyRun:
    """One family's run in progress: where it writes, what it resumes from, and the base it trains."""

    family: str
    paths: FamilyPaths  # DIR/F, the finished outputs, and its work folder DIR/.work/F
    last_checkpoint: str | None
    quant: Any = None  # bitsandbytes settings (QLoRA), or None
    model: Any = None
    tokenizer: PreTrainedTokenizerBase | None = None
    arch: Architecture | None = None
    base_model_id: str = ""
    built_locally: bool = False
    base_source: str = ""  # where the full-precision base reloads from
    base_revision: str | None = None
    reference_store: Path | None = None  # the keyed store of reference log-probs (speed.ref_cache)

    @property
    def name(self) -> str:
        """The output folder's name."""
        return self.paths.name

    @property
    def final(self) -> Path:
        return self.paths.folder

    @property
    def work(self) -> Path:
        return self.paths.work

    @property
    def checkpoints(self) -> Path:
        return self.paths.checkpoints

    def load_full_precision_base(self, trust_remote_code: bool, device: torch.device | str = "cpu") -> PreTrainedModel:
        """The full-precision base, reloaded onto `device` for a QLoRA merge and as the frozen side of full-DPO
        comparisons."""
        return load_model(self.base_source, self.arch, self.base_revision, trust_remote_code, device=device)


def claim_output(family: str, script_args: ScriptArguments, out_root: Path,
                 checkpoint: str | None = None) -> FamilyRun | None:
    """The family's folders, or None when --resume finds it finished; refuses to overwrite finished outputs."""
    paths = FamilyPaths.of(out_root, family)
    final, work = paths.folder, paths.work
    if paths.is_finished():
        if script_args.resume:
            logger.info("[%s] already finished in %s; skipping", family, final)
            return None
        if not script_args.overwrite:
            raise OutputExistsError(f"{final}: finished outputs already exist; pass --overwrite to replace them or --resume")
    checkpoints = paths.checkpoints
    last_checkpoint = checkpoint or (  # checkpoint: --resume_from_checkpoint PATH
        get_last_checkpoint(str(checkpoints)) if script_args.resume and checkpoints.is_dir() else None)
    if is_main_process():  # under DDP only rank 0 touches the output tree
        if not script_args.resume:
            shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True, exist_ok=True)
    return FamilyRun(family, paths, last_checkpoint, reference_store=paths.reference_store(script_args.ref_logps_dir))


def load_base(
    job: FamilyRun, data: PreparedData, script_args: ScriptArguments, model_args: ModelArguments, seed: int,
    precision: Precision,
) -> None:
    """Load (or build, for the demo) the base into `job`, quantized for QLoRA."""
    job.quant = quantization_config(model_args.load_in_4bit, model_args.load_in_8bit, precision,
                                    model_args.bnb_4bit_quant_type, model_args.use_bnb_nested_quant)
    job.model, job.tokenizer, job.arch, job.base_model_id, job.built_locally = prepare_base(
        job.family, data, script_args, model_args, job.paths, seed, job.quant, precision.device
    )
    job.base_source, job.base_revision = (
        (str(job.paths.demo_base.folder), None) if job.built_locally else (job.base_model_id, model_args.model_revision)
    )
    if job.built_locally:  # the copy in the finished folder, named relative to adapter/ and merged/ (no local path)
        job.base_model_id = FamilyPaths.DEMO_BASE_REF
    prepare_tokenizer(job.tokenizer, job.arch)


def family_args(training_args: DPOConfig, precision: Precision | None, **changes) -> DPOConfig:
    """The run's arguments for one family, in the family's precision (`precision.for_family`: T5 on an fp16-only GPU
    trains in fp32 while GPT-2 trains in fp16)."""
    if precision is not None and (precision.bf16, precision.fp16) != (bool(training_args.bf16), bool(training_args.fp16)):
        changes.update(bf16=precision.bf16, fp16=precision.fp16)
    args = dataclasses.replace(training_args, **changes)
    if precision is not None:
        args.precision = precision  # what ran, as chosen (auto stays auto in metrics.json)
    return args


def train(job: FamilyRun, data: PreparedData, training_args: DPOConfig, model_args: ModelArguments,
          progress: ProgressLog | None = None, precision: Precision | None = None) -> TrainOutcome:
    """Held-out metrics before, DPO (stoppable by a signal, resumable; its steps and logs in `progress`), held-out
    metrics after, in the family's `precision`."""
    arch = job.arch
    train_ds = to_dataset(data.train, arch.prompt_format)
    eval_ds = to_dataset(data.eval, arch.prompt_format)
    args = family_args(training_args, precision, output_dir=str(job.checkpoints))
    args = with_tracking_defaults(args, job.name, job.final.parent, job.work)  # trackio: project and run names
    if args.world_size > 1:
        train_ds = shared_on_disk(train_ds, job.paths.shared_split("train"), args)
        eval_ds = shared_on_disk(eval_ds, job.paths.shared_split("eval"), args)
    lora_config = (
        arch.lora_config(model_args.lora_r, model_args.lora_alpha, model_args.lora_dropout, model_args.lora_target_modules)
        if model_args.use_peft
        else None
    )
    store = job.reference_store if is_main_process() else None
    trainer = build_trainer(arch, job.model, job.tokenizer, train_ds, eval_ds, args, lora_config, store)
    truncation = count_truncation(trainer, len(train_ds), len(eval_ds), args.max_length)
    if any(counts["rows"] for counts in truncation.values()):
        logger.warning("[%s] over-long pairs truncated to max_length=%s: %s", job.family, args.max_length, truncation)
    logger.info("[%s] evaluating the base model on %d held-out pairs", job.family, len(eval_ds))
    eval_before = evaluate_pairs(trainer)
    logger.info("[%s] DPO on %d pairs (%s)", job.family, len(train_ds), arch.kind)
    stopper = StopOnSignal()
    trainer.add_callback(stopper)
    if progress is not None:
        trainer.add_callback(progress)
    started = time.perf_counter()
    with stopper.installed():
        train_output = trainer.train(resume_from_checkpoint=job.last_checkpoint)
    runtime = time.perf_counter() - started
    if stopper.requested:
        raise TrainingInterrupted(
            f"[{job.family}] {stopper.signal_name} received: checkpoint saved at step {stopper.stopped_at_step} in "
            f"{job.checkpoints}; nothing was published. Continue with the same command plus --resume"
        )
    logger.info(
        "[%s] rank %d/%d finished %d DPO steps", job.family, args.process_index, args.world_size,
        trainer.state.global_step,
    )
    eval_after = evaluate_pairs(trainer)
    log_held_out(args, [(0, eval_before), (trainer.state.global_step, eval_after)])
    return TrainOutcome(trainer=trainer, output=train_output, runtime_s=runtime, truncation=truncation,
                        lora_config=lora_config, train_pairs=len(train_ds), eval_before=eval_before,
                        eval_after=eval_after)


def measure(
    job: FamilyRun, data: PreparedData, trained: TrainOutcome, model_args: ModelArguments, precision: Precision
) -> RunMetrics:
    """metrics.json's content (without the generation evidence)."""
    trainer, runtime, lora_config = trained.trainer, trained.runtime_s, trained.lora_config
    args = trainer.args  # the settings as trained
    # Pairs trained in this process (a resumed run counts only the steps it ran itself).
    start_step = int(job.last_checkpoint.rsplit("-", 1)[-1]) if job.last_checkpoint else 0
    steps_run = trainer.state.global_step - start_step
    pairs_per_step = args.per_device_train_batch_size * args.gradient_accumulation_steps * args.world_size
    pairs_seen = min(steps_run * pairs_per_step, trained.train_pairs * float(args.num_train_epochs))
    built_locally, base_model_id = job.built_locally, job.base_model_id
    return RunMetrics(
        family=job.name,
        architecture=job.arch.kind,
        model_type=job.arch.model_type,
        base_model=public_ref(base_model_id) if not built_locally else f"{job.name} built from config (demo), see base/",
        base_license=base_model_license(base_model_id, built_locally=built_locally),  # the cards' `license`
        base_lineage=base_lineage(base_model_id, built_locally=built_locally),  # round two: round one's repo
        dataset=data.info["dataset"],
        data=data.info,
        train_runtime_s=round(runtime, 3),
        train_pairs_per_s=round(pairs_seen / runtime, 3) if runtime > 0 else None,
        train_loss=trained.output.training_loss,
        truncation=trained.truncation,
        resumed_from_step=start_step or None,
        world_size=args.world_size,
        distributed=str(trainer.accelerator.distributed_type.value),  # NO, MULTI_CPU (DDP), FSDP, ...
        precision=precision.as_dict(),
        compile=trainer.compile_decision.as_dict(),  # whether training ran through torch.compile, and why
        training="full-parameter DPO" if lora_config is None else "QLoRA DPO" if job.quant is not None else "LoRA DPO",
        quantization=describe_quantization(job.quant),
        eval_before=trained.eval_before,
        eval_after=trained.eval_after,
        hyperparameters=selected_hyperparameters(args, model_args, lora_config),
        prompt_format=dataclasses.asdict(job.arch.prompt_format),
        versions=framework_versions(),  # as ran: the cards' "Framework versions"
        tracking=tracking_record(args),  # trackio's project/run (cards: TRL's `trackio` tag, dashboard link)
        log_history=trainer.state.log_history,
    )


def save(job: FamilyRun, model, args: DPOConfig, metrics: RunMetrics, keep_checkpoints: bool) -> None:
    """Assemble the outputs in staging, metrics.json last, then swap them into DIR/F (rank 0 only)."""
    stage = job.paths.staging
    shutil.rmtree(stage.folder, ignore_errors=True)
    stage.folder.mkdir(parents=True)
    base_dir = job.paths.demo_base.folder if job.built_locally else None
    save_outputs(stage, model, job.tokenizer, job.arch, base_dir, job.base_model_id, args, metrics)
    metrics.save(stage.metrics)  # last file: its presence marks the folder complete
    carry(job.paths, stage)  # the live progress log goes on in the swapped-in folder
    publish_staging(stage.folder, job.paths)
    if not keep_checkpoints:
        shutil.rmtree(job.work, ignore_errors=True)
    logger.info("[%s] outputs written to %s", job.family, job.final)


def save_trained(job: FamilyRun, trainer) -> Path:
    """Save what training produced, on every rank, before evidence, merging or publishing can fail.

    `Trainer.save_model` is called by all ranks: under FSDP/DeepSpeed it gathers the full state dict (accelerate's
    `get_state_dict`) collectively and rank 0 writes it; under DDP or one process, rank 0 writes the adapter."""
    path = job.paths.trained
    trainer.save_model(str(path))
    if trainer.is_world_process_zero():
        logger.info("[%s] trained %s saved in %s", job.family, "adapter" if hasattr(trainer.model, "peft_config") else "model", path)
    return path


def sharded(trainer) -> bool:
    """Whether the trained weights are split across ranks (FSDP, DeepSpeed ZeRO), so no rank holds the whole model."""
    return bool(getattr(trainer, "is_fsdp_enabled", False) or getattr(trainer, "is_deepspeed_enabled", False))


def reload_trained(job: FamilyRun, saved: Path, load_full_precision_base, device: torch.device):
    """The trained model rebuilt from `save_trained`'s folder on `device` (after sharded training, rank 0 has only its
    shard in memory): the adapter on the full-precision base, or the full model itself."""
    if (saved / "adapter_config.json").exists():
        from peft import PeftModel

        return PeftModel.from_pretrained(load_full_precision_base(device), str(saved))
    return load_model(str(saved), job.arch, device=device)


def finish_on_rank_zero(job: FamilyRun, trainer, saved: Path, data: PreparedData, script_args: ScriptArguments,
                        metrics: RunMetrics) -> RunMetrics:
    """Merge (QLoRA: onto the full-precision base), generate the evidence and write the outputs, all on the trained
    model's device; returns the metrics as written. Whatever fails here, the trained adapter stays in `saved` and the
    error says so."""

    def load_full_precision_base(device: torch.device | str = "cpu") -> PreTrainedModel:
        return job.load_full_precision_base(script_args.trust_remote_code_models, device)

    try:
        if sharded(trainer):
            model = reload_trained(job, saved, load_full_precision_base, trainer.args.device)
        else:
            model = published_model(trainer.model, load_full_precision_base, job.quant is not None)
        if script_args.eval_generations > 0:
            logger.info("[%s] generating from base and DPO on %d held-out prompts", job.family,
                        script_args.eval_generations)
            pair = serving_pair(model, load_full_precision_base, job.tokenizer, job.arch)
            metrics = dataclasses.replace(metrics, **generation_evidence(pair, data, script_args, trainer.args.seed))
            for warning in metrics.generation_warnings:
                logger.warning("[%s] %s", job.family, warning)
        metrics.degeneration = diagnose(metrics)  # with the remedy, for metrics.json, report.html and the cards
        if metrics.degeneration["advice"]:
            logger.warning("[%s] %s", job.family, metrics.degeneration["advice"])
        save(job, model, trainer.args, metrics, script_args.keep_checkpoints)
        return metrics
    except BaseException:
        logger.error("[%s] the trained weights are kept in %s (nothing was published)", job.family, saved)
        raise


def train_family(
    family: str,
    data: PreparedData,
    script_args: ScriptArguments,
    training_args: DPOConfig,
    model_args: ModelArguments,
    precision: Precision | None = None,
) -> FamilyResult:
    """One family: claim the output folder -> load the base -> train -> save the trained weights -> measure
    (+ generation evidence) -> save the outputs, followed live in `DIR/F/progress.jsonl` (`progress_log`).
    `precision`: the family's own (`precision.for_family`), else the one its arguments carry."""
    job = claim_output(family, script_args, Path(training_args.output_dir), training_args.resume_from_checkpoint)
    if job is None:
        return FamilyResult(family, FamilyPaths.of(training_args.output_dir, family).folder, None, skipped=True)
    progress = ProgressLog(job.paths.progress, append=script_args.resume, enabled=is_main_process())
    with progress.outcome():  # its last line: finished (outputs saved), failed or cancelled
        return _train_family(job, data, script_args, training_args, model_args, precision, progress)


def _train_family(
    job: FamilyRun, data: PreparedData, script_args: ScriptArguments, training_args: DPOConfig,
    model_args: ModelArguments, precision: Precision | None, progress: ProgressLog,
) -> FamilyResult:
    set_seed(training_args.seed)
    precision = precision or precision_of(training_args)
    load_base(job, data, script_args, model_args, training_args.seed, precision)
    trained = train(job, data, training_args, model_args, progress, precision)
    trainer = trained.trainer
    metrics = measure(job, data, trained, model_args, precision)
    saved = save_trained(job, trainer)  # every rank (sharded weights are gathered collectively)
    if trainer.is_world_process_zero():
        metrics = finish_on_rank_zero(job, trainer, saved, data, script_args, metrics)
    trainer.accelerator.wait_for_everyone()  # DDP: the other ranks wait here while rank 0 writes
    return FamilyResult(job.family, job.final, metrics)


def run(script_args: ScriptArguments, training_args: DPOConfig, model_args: ModelArguments) -> list[FamilyResult]:
    """Train every requested family; data is loaded and validated once, before any model is touched."""
    families = script_args.family_list()  # --model_name_or_path is folded into --models (inherited_flags.py)
    check_quantization(model_args.load_in_4bit, model_args.load_in_8bit, model_args.use_peft)
    if script_args.demo:  # option errors first: nothing is loaded before the whole command is known to be valid
        unknown = [family for family in families if family not in ("gpt2", "t5")]
        if unknown:
            raise ConfigError(f"--demo builds 'gpt2' and 't5' architectures only, got family '{unknown[0]}'")
    precision = precision_of(training_args)
    logger.info("precision: %s", precision.describe())
    per_family = family_precisions(families, precision, script_args, model_args)
    data = prepare_data(script_args, training_args.seed)
    data.info["license"] = dataset_license(script_args.dataset)  # stated on the cards beside the model's
    return [train_family(family, data, script_args, training_args, model_args, per_family[family]) for family in families]


def family_precisions(families: list[str], precision: Precision, script_args: ScriptArguments,
                      model_args: ModelArguments) -> dict[str, Precision]:
    """Each family's precision (`precision.for_family`), decided before any data or weights are loaded: fp16 on a
    T5-family model is refused here, and on an fp16-only GPU T5 trains in fp32 (one log line says why)."""
    out = {}
    for family in families:
        out[family] = precision
        if not precision.fp16:
            continue
        if script_args.demo:
            model_type = "t5" if family == "t5" else "gpt2"
        else:
            model_type = load_architecture(resolve_model_id(family), model_args.model_revision,
                                           script_args.trust_remote_code_models).model_type
        try:
            out[family] = for_family(precision, model_type, script_args.allow_fp16_t5)
        except PrecisionError as exc:
            raise ConfigError(f"[{family}] {exc}") from None
        if out[family] is not precision:
            logger.info("[%s] precision: %s", family, out[family].describe())
    return out
