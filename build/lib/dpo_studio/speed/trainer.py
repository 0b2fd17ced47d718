"""`fast_trainer`: a TRL trainer with every speed feature of this package applied (the assembly)."""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import torch
from torch.utils.data import SequentialSampler

from ..fused_output import policy_fields
from ..precision import forget_earlier_accelerate_prepare
from .activations import use_fused_gelu
from .batching import LengthGroupedPairSampler, pair_lengths
from .bf16 import drop_frozen_weight_copies, reuse_frozen_weight_casts, skip_lora_input_round_trips, use_eager_attention
from .heads import add_bucketed_seq2seq_forward, add_compact_causal_head
from .settings import configure_threads, keep_freed_memory_for_reuse


class _LengthGroupedTrainerMixin:
    """Trainer mixin: with `train_sampling_strategy="group_by_length"`, length-grouped batches of preference pairs
    (transformers' own grouping needs a `length` column TRL's datasets lack); the compact head for the reference
    pass."""

    def _get_train_sampler(self, train_dataset=None):
        dataset = self.train_dataset if train_dataset is None else train_dataset
        columns = getattr(dataset, "column_names", None) or []
        if (
            getattr(self.args, "train_sampling_strategy", "random") != "group_by_length"
            or self.args.world_size > 1 or not {"prompt_ids", "chosen_ids", "rejected_ids"} <= set(columns)
        ):
            # Default: the stock (random) sampler, so batches and the loss curve are exactly stock TRL's.
            return super()._get_train_sampler(train_dataset)
        seed = self.args.data_seed if self.args.data_seed is not None else self.args.seed
        batch = self.args.per_device_train_batch_size * self.args.gradient_accumulation_steps
        return LengthGroupedPairSampler(pair_lengths(dataset), batch, seed)

    def _get_eval_sampler(self, eval_dataset):
        columns = getattr(eval_dataset, "column_names", None) or []
        if (
            getattr(self.args, "train_sampling_strategy", "random") == "group_by_length" and self.args.world_size <= 1
            and {"prompt_ids", "chosen_ids", "rejected_ids"} <= set(columns)
        ):
            # transformers would group eval pairs with its LengthGroupedSampler, which cannot size TRL's pairs.
            return SequentialSampler(eval_dataset)
        return super()._get_eval_sampler(eval_dataset)

    def train(self, *args, **kwargs):
        try:
            return super().train(*args, **kwargs)
        finally:  # the bf16 copies of frozen weights and eager attention are for training; merging and saving follow
            drop_frozen_weight_copies(self.model)
            restore = getattr(self, "_dpo_studio_attention_to_restore", None)
            if restore is not None:
                base = self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model
                base.set_attn_implementation(restore)

    def _precompute_ref_logps(self, dataset, name, batch_size):
        # Called inside TRL's __init__ after it patched the fused LM head: switch causal LMs to the compact head first,
        # so the one-off reference pass is fast too.
        _install_compact_heads(self)
        return super()._precompute_ref_logps(dataset, name, batch_size)


def cpu_training(args) -> bool:
    """The CPU-only patches (compact LM head, in-batch buckets) are proven equal to TRL's paths on CPU only; on CUDA
    TRL's own fused head does the gather, device move and fp32 cast itself, so it is left alone there."""
    return args.device.type == "cpu"


def _install_compact_heads(trainer) -> None:
    """Compact fused head on a causal policy (and separate reference), with the fields TRL requests for each."""
    if not cpu_training(trainer.args):
        return
    model = trainer.model
    policy = model.get_base_model() if hasattr(model, "get_base_model") else model
    if policy.config.is_encoder_decoder:
        return
    add_compact_causal_head(policy, policy_fields(trainer.args.use_weighting))
    if trainer.ref_model is not None:
        add_compact_causal_head(trainer.accelerator.unwrap_model(trainer.ref_model), ("log_probs",))


@functools.cache
def _length_grouped_class(base: type) -> type:
    return type(f"Fast{base.__name__}", (_LengthGroupedTrainerMixin, base), {})


def fast_trainer(trainer_class: type, model: torch.nn.Module, args, **kwargs: Any):
    """Build `trainer_class(model=model, args=args, **kwargs)` with every speed feature of this module applied.

    Threads, malloc reuse, a larger batch for the one-off reference pass, the fused GELU, in-batch
    buckets, (causal LMs) the compact LM head and, when asked for, length-grouped batches. The loss of each pair is
    unchanged up to float rounding.
    """
    configure_threads()
    if not torch.cuda.is_available():
        keep_freed_memory_for_reuse()
    if args.precompute_ref_log_probs and args.precompute_ref_batch_size is None:
        # No gradients in the reference pass, so eval-sized batches (TRL would use the train batch size there). The
        # held-out pairs are then scored in the same batches as in `evaluate`: same buckets, same float rounding, so
        # before training the policy's log-probs equal the reference's exactly, also in bf16 (rewards 0, not noise).
        args = dataclasses.replace(args, precompute_ref_batch_size=args.per_device_eval_batch_size)
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    forget_earlier_accelerate_prepare(model)
    use_fused_gelu(base)
    on_cpu = cpu_training(args)  # the model is still on the CPU here even on GPU hosts: ask the arguments
    if on_cpu:
        reuse_frozen_weight_casts(base)  # a no-op outside CPU bf16 autocast
    attention_to_restore = use_eager_attention(base) if on_cpu and args.bf16 else None
    if base.config.is_encoder_decoder and on_cpu:
        add_bucketed_seq2seq_forward(base)
    trainer = _length_grouped_class(trainer_class)(model=model, args=args, **kwargs)
    trainer._dpo_studio_attention_to_restore = attention_to_restore
    if on_cpu:
        skip_lora_input_round_trips(trainer.model)  # the LoRA layers exist once the trainer wrapped the model
    _install_compact_heads(trainer)  # idempotent; covers runs without precomputed reference log-probs
    return trainer
