"""What each flag inherited from TRL's DPOConfig / ModelConfig and Transformers' TrainingArguments means here.

`train_dpo.py --help` lists every field of those dataclasses. A TRL user expects each to do what it does in
`trl dpo`, so every one has a decision, checked by tests/test_cli_flags.py against --help:

- ALIASES: TRL's spelling of one of our options (`--push_to_hub` = `--push`), folded into ours after parsing;
- REFUSED: options this product replaces or cannot honour; giving one is a one-line error naming what to use;
- HONOURED: passed unchanged to TRL's DPOTrainer / Transformers' Trainer, which apply them as in `trl dpo`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

# inherited field -> our field it stands for
ALIASES: dict[str, str] = {
    "model_name_or_path": "models",
    "resume_from_checkpoint": "resume",
    "push_to_hub": "push",
    "hub_model_id": "hub_repo_ids",
    "hub_private_repo": "private",
    "hub_revision": "revision",
    "trust_remote_code": "trust_remote_code_models",
}

_LORA = "the adapter is built from --lora-r, --lora-alpha, --lora-dropout and --lora-target-modules only"
_PUBLISH = "dpo_studio publishes once, after the model is saved: use --push (or --push-only DIR)"
_STAGES = "every run trains, then evaluates held-out pairs before/after; use --check-data or --evaluate to do less"
_LOADING = "dpo_studio loads the models itself (safetensors only): use --model-revision, --bf16/--fp16, --load-in-4bit"

REFUSED: dict[str, str] = {
    "hub_token": "give the token through HF_TOKEN or `hf auth login` (a flag leaves it in shell history)",
    "hub_strategy": _PUBLISH,
    "hub_always_push": _PUBLISH,
    "do_train": _STAGES,
    "do_eval": _STAGES,
    "do_predict": _STAGES,
    "model_init_kwargs": _LOADING,
    "dtype": "precision is chosen by --bf16 / --fp16 (unset bf16 = auto)",
    "attn_implementation": "dpo_studio loads every model with its default attention; this option is not supported",
    "lora_target_parameters": _LORA,
    "lora_modules_to_save": _LORA,
    "lora_task_type": "the LoRA task type follows the architecture (causal LM or seq2seq); " + _LORA,
    "use_rslora": _LORA,
    "use_dora": _LORA,
    "bnb_4bit_quant_storage": "4-bit storage is bitsandbytes' default; use --load-in-4bit, --bnb-4bit-quant-type",
    "use_liger_kernel": "dpo_studio's trainers use their own fused output head (dpo_studio/training/fused_output.py), not Liger",
    "liger_kernel_config": "dpo_studio's trainers use their own fused output head (dpo_studio/training/fused_output.py), not Liger",
    "padding_free": "TRL 1.16's DPO collator ignores it",  # completed per device by `refusal`
}

# What stands in for padding-free batching, per device (speed.trainer.cpu_training decides which path a run takes).
PADDING_FREE_INSTEAD = {
    "cpu": "this CPU run trims each batch into length buckets instead (exact, on by default; see docs/training.md)",
    "cuda": "this CUDA run pads each batch to its longest pair (TRL's collator); --train_sampling_strategy "
            "group_by_length batches pairs of similar length",
}


def refusal(name: str, training_args: Any) -> str:
    """The one-line reason `--name` is refused, true for the device this run trains on."""
    if name == "padding_free":
        device = getattr(getattr(training_args, "precision", None), "device", "cpu")
        return f"{REFUSED[name]}; {PADDING_FREE_INSTEAD.get(device, PADDING_FREE_INSTEAD['cuda'])}"
    return REFUSED[name]

# Passed unchanged to DPOTrainer / Trainer (`--output_dir` is our `--output-dir`: the same option).
HONOURED: frozenset[str] = frozenset("""
accelerator_config activation_checkpointing activation_checkpointing_kwargs activation_offloading adam_beta1
adam_beta2 adam_epsilon auto_find_batch_size average_tokens_across_devices batch_eval_metrics beta bf16
bf16_full_eval bnb_4bit_quant_type data_seed dataloader_drop_last dataloader_in_order
dataloader_multiprocessing_context dataloader_num_workers dataloader_persistent_workers dataloader_pin_memory
dataloader_prefetch_factor dataset_num_proc ddp_backend ddp_broadcast_buffers ddp_bucket_cap_mb
ddp_find_unused_parameters ddp_static_graph ddp_timeout debug deepspeed disable_dropout disable_tqdm discopop_tau
enable_jit_checkpoint eval_accumulation_steps eval_delay eval_do_concat_batches eval_on_start eval_steps
eval_strategy eval_use_gather_object f_alpha_divergence_coef f_divergence_type fp16 fp16_full_eval fsdp fsdp_config
full_determinism gradient_accumulation_steps gradient_checkpointing gradient_checkpointing_kwargs greater_is_better
ignore_data_skip include_for_metrics include_num_input_tokens_seen label_names label_smoothing
label_smoothing_factor ld_alpha learning_rate length_column_name load_best_model_at_end load_in_4bit load_in_8bit
local_rank log_level log_level_replica log_on_each_node logging_first_step logging_nan_inf_filter logging_steps
logging_strategy lora_alpha lora_dropout lora_r lora_target_modules loss_type loss_weights lr_scheduler_kwargs
lr_scheduler_type max_grad_norm max_length max_steps metric_for_best_model model_revision neftune_noise_alpha
num_train_epochs optim optim_args optim_target_modules output_dir pad_to_multiple_of pad_token parallelism_config
per_device_eval_batch_size per_device_train_batch_size precompute_ref_batch_size precompute_ref_log_probs
prediction_loss_only project ref_model_mixup_alpha ref_model_sync_steps remove_unused_columns report_to
restore_callback_states_from_checkpoint router_aux_loss_coef run_name save_on_each_node save_only_model save_steps
save_strategy save_total_limit seed skip_memory_metrics sync_ref_model tf32 torch_compile torch_compile_backend
torch_compile_mode torch_empty_cache_steps trackio_bucket_id trackio_space_id trackio_static_space_id
train_sampling_strategy truncation_mode use_bnb_nested_quant use_cache use_cpu use_peft use_weighting warmup_steps
weight_decay
""".split())


class FlagError(ValueError):
    """An inherited flag this product refuses, or one that contradicts ours; reported as one line, exit code 2."""


def given_options(argv: list[str], config_values: dict[str, Any]) -> set[str]:
    """Field names the user set: `--foo-bar`, `--foo_bar`, `--foo_bar=x` on the command line, or keys of --config."""
    names = {token[2:].split("=", 1)[0].replace("-", "_") for token in argv if token.startswith("--")}
    return names | {str(key) for key in config_values}


def apply_inherited_flags(given: set[str], script_args: Any, training_args: Any, model_args: Any,
                          dir_name: Callable[[str], str]) -> None:
    """Refuse REFUSED flags, fold ALIASES into our options; leaves nothing for the Trainer to publish by itself.

    Args:
        given: field names the user set (`given_options`); only those are checked, so defaults never trip a refusal.
        script_args, training_args, model_args: the three parsed dataclasses, changed in place.
        dir_name: a family's output folder name (config.family_dir_name), the key of --hub-repo-ids.
    """
    for name in sorted(given & REFUSED.keys()):
        raise FlagError(f"--{name} is not supported: {refusal(name, training_args)}")
    if "model_name_or_path" in given and model_args.model_name_or_path:
        _one_model(given, script_args, model_args.model_name_or_path)
    if training_args.resume_from_checkpoint not in (None, "", "false", "False"):
        _resume(script_args, training_args)
    if training_args.push_to_hub:
        script_args.push = True
    if training_args.hub_model_id:
        _one_repo(given, script_args, training_args.hub_model_id, dir_name)
    if training_args.hub_private_repo:
        script_args.private = True
    if training_args.hub_revision:
        _agree("hub_revision", training_args.hub_revision, "revision", script_args.revision, given)
        script_args.revision = training_args.hub_revision
    if getattr(training_args, "trust_remote_code", False):
        script_args.trust_remote_code_models = True
    # The Trainer must not publish checkpoints itself: publishing is ours, after the model is saved.
    training_args.push_to_hub, training_args.hub_model_id = False, None


def _agree(inherited: str, value: Any, ours: str, our_value: Any, given: set[str]) -> None:
    if ours in given and our_value not in (None, value):
        raise FlagError(f"--{inherited} {value} and --{ours.replace('_', '-')} {our_value} disagree: give one of them")


def _one_model(given: set[str], script_args: Any, model: str) -> None:
    """`--model_name_or_path X` = `--models X`: one model, the TRL meaning."""
    if "," in model:
        raise FlagError(f"--model_name_or_path names one model, got {model!r}: use --models a,b for several")
    _agree("model_name_or_path", model, "models", script_args.models, given)
    script_args.models = model


def _resume(script_args: Any, training_args: Any) -> None:
    """`--resume_from_checkpoint true` = `--resume`; a PATH resumes that checkpoint (one family only)."""
    value = str(training_args.resume_from_checkpoint)
    script_args.resume = True
    if value in ("true", "True"):
        training_args.resume_from_checkpoint = None  # the family's last checkpoint, found by --resume
        return
    if not Path(value).is_dir():
        raise FlagError(f"--resume_from_checkpoint {value}: no such checkpoint folder (or give `true` for the last one)")
    if len(script_args.family_list()) != 1:
        raise FlagError("--resume_from_checkpoint PATH needs one model in --models; --resume continues every family")


def _one_repo(given: set[str], script_args: Any, repo_id: str, dir_name: Callable[[str], str]) -> None:
    """`--hub_model_id ns/name` = `--hub-repo-ids <family>=ns/name` for a single family."""
    families = script_args.family_list()
    if len(families) != 1:
        raise FlagError(f"--hub_model_id names one repo but --models has {len(families)} families: use "
                        "--hub-repo-ids gpt2=me/gpt2-dpo,t5=me/t5-dpo")
    ours = f"{dir_name(families[0])}={repo_id}"
    _agree("hub_model_id", ours, "hub_repo_ids", script_args.hub_repo_ids, given)
    script_args.hub_repo_ids = ours
