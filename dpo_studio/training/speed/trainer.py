"""The trainers that train: `CausalDPOTrainer` and `FastSeq2SeqDPOTrainer`, TRL's trainers with this package's speed
features, each a constructor step, a method override or a submodule the model is built with, switched by a field of
`SpeedSettings`. The compact causal forward and the bucketed decoder rows are callables handed to TRL through its
public `compute_loss` / `compute_ref_log_probs` (`trainer_seams`); no method of a live object is replaced."""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import torch
from trl import DPOTrainer

from dpo_studio.config.precision import forget_earlier_accelerate_prepare, precision_of
from dpo_studio.training.seq2seq_dpo import Seq2SeqDPOTrainer
from dpo_studio.training.speed.activations import use_fused_gelu
from dpo_studio.training.speed.batching import LengthGroupedPairSampler, pair_lengths, run_buckets
from dpo_studio.training.speed.bf16 import (
    EAGER_ATTENTION_ENV,
    FROZEN_COPIES_ENV,
    drop_frozen_weight_copies,
    reuse_frozen_weight_casts,
    use_eager_attention,
)
from dpo_studio.training.speed.compile import CompileDecision, choose_compile, planned_steps
from dpo_studio.training.speed.heads import CompactCausalForward
from dpo_studio.training.speed.ref_cache import ReferenceLogpStore, reference_key
from dpo_studio.training.trainer_seams import PreferenceForwardSeams


def _env_on(name: str) -> bool:
    return os.environ.get(name, "1") != "0"


@dataclasses.dataclass
class SpeedSettings:
    """Which speed features a trainer uses; every one but the opt-in pair grouping is on by default and changes no
    pair's loss beyond float rounding (tests/test_speed.py checks each on vs off). The environment opt-outs of earlier
    releases still apply.
    Process-wide tuning (threads, malloc) is not a trainer's: the command applies it at its start (`host_tuning`)."""

    fused_gelu: bool = True  # GPT-2's gelu_new -> transformers' one-kernel GELUTanh submodule
    frozen_weight_casts: bool = dataclasses.field(default_factory=lambda: _env_on(FROZEN_COPIES_ENV))  # CPU bf16
    eager_attention_bf16: bool = dataclasses.field(default_factory=lambda: _env_on(EAGER_ATTENTION_ENV))  # CPU bf16
    compact_head: bool = True  # causal, CPU: backbone per length bucket, LM head on completion tokens only
    seq2seq_buckets: bool = True  # seq2seq, CPU: decoder rows per length bucket
    eval_sized_reference_batches: bool = True  # the one-off reference pass in eval-sized batches
    # Opt-in: pairs of similar length share a batch (our sampler); `settings_for` sets it from
    # `--train_sampling_strategy group_by_length`.
    length_grouped_pairs: bool = False


def cpu_training(args) -> bool:
    """The CPU-only features (compact LM head, in-batch buckets) are proven equal to TRL's paths on CPU only; on CUDA
    TRL's own fused head does the gather, device move and fp32 cast itself, so it is left alone there."""
    return args.device.type == "cpu"


def _base(model: torch.nn.Module) -> torch.nn.Module:
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def _compile_decision(args, model: torch.nn.Module, train_dataset) -> CompileDecision:
    """Resolve an unset `torch_compile` (None = auto) by `speed.compile`'s rule; explicit values are honoured."""
    requested = getattr(args, "torch_compile", False)
    pairs = len(train_dataset) if train_dataset is not None and hasattr(train_dataset, "__len__") else 0
    quantized = getattr(_base(model), "is_quantized", False) or getattr(_base(model), "hf_quantizer", None) is not None
    device = "cpu" if cpu_training(args) else args.device.type
    return choose_compile(requested, precision_of(args).compute, device, planned_steps(args, pairs), bool(quantized))


@dataclasses.dataclass(frozen=True)
class TrainerSettings:
    """What a trainer is built with, decided before construction by `settings_for`: the final arguments TRL and
    transformers see, the speed features, and the compile decision (recorded in metrics.json)."""

    args: Any
    speed: SpeedSettings
    compile_decision: CompileDecision

    def as_kwargs(self) -> dict[str, Any]:
        return {"args": self.args, "speed": self.speed, "compile_decision": self.compile_decision}


def settings_for(args, model: torch.nn.Module, train_dataset=None, speed: SpeedSettings | None = None) -> TrainerSettings:
    """The trainer's final arguments and speed settings for `args` as the user gave them (pure: `args` is not changed).

    * `torch_compile` unset (None = auto) is resolved by `speed.compile`'s rule; explicit values are honoured.
    * `eval_sized_reference_batches`: no gradients in the reference pass, so eval-sized batches (TRL would use the
      train batch size). The held-out pairs are then scored in the same batches as in `evaluate`: same buckets, same
      rounding, so before training the policy's log-probs equal the reference's exactly, also in bf16 (rewards 0).
    * `--train_sampling_strategy group_by_length` is served by our pair sampler (`length_grouped_pairs`);
      transformers' own grouping, for training and for evaluation, needs a `length` column TRL's pairs lack, so the
      arguments TRL and transformers see keep the default order (held-out pairs stay sequential).
    """
    speed = speed or SpeedSettings()
    decision = _compile_decision(args, model, train_dataset)
    changes: dict[str, Any] = {}
    if args.torch_compile is not decision.enabled:
        changes["torch_compile"] = decision.enabled
    if speed.eval_sized_reference_batches and args.precompute_ref_log_probs and args.precompute_ref_batch_size is None:
        changes["precompute_ref_batch_size"] = args.per_device_eval_batch_size
    if args.train_sampling_strategy == "group_by_length":
        changes["train_sampling_strategy"] = "random"
        speed = dataclasses.replace(speed, length_grouped_pairs=True)
    return TrainerSettings(dataclasses.replace(args, **changes) if changes else args, speed, decision)


def _as_given(args) -> CompileDecision:
    """The record for a trainer built without `settings_for`: what its arguments say (None: the Trainer's default)."""
    enabled = bool(args.torch_compile)
    requested = "auto" if args.torch_compile is None else str(enabled).lower()
    return CompileDecision(enabled, requested, "as the trainer's arguments say (built without speed.settings_for)")


class _SpeedFeatures:
    """What both trainers add to TRL's; mixed in before the TRL trainer class. The constructor takes the final
    arguments (`settings_for(args, model, train_dataset, speed).as_kwargs()`) and changes no process-wide state."""

    def __init__(self, model, *, args, speed: SpeedSettings | None = None,
                 compile_decision: CompileDecision | None = None, reference_store: str | os.PathLike | None = None,
                 **kwargs: Any):
        if args.train_sampling_strategy == "group_by_length":
            raise ValueError("train_sampling_strategy='group_by_length' needs a length column TRL's pairs lack: build "
                             "the arguments with speed.settings_for (our pair sampler serves it)")
        self.speed = speed = speed or SpeedSettings()
        self.compile_decision = compile_decision or _as_given(args)
        self.reference_store = self._open_reference_store(reference_store, model, args, kwargs)
        base = _base(model)
        forget_earlier_accelerate_prepare(model)
        if speed.fused_gelu:
            use_fused_gelu(base)
        on_cpu = cpu_training(args)  # the model is still on the CPU here even on GPU hosts: ask the arguments
        if on_cpu and speed.frozen_weight_casts:
            reuse_frozen_weight_casts(base)  # the replaced layers compute as before outside CPU bf16 autocast
        self._attention_to_restore = (
            use_eager_attention(base) if on_cpu and args.bf16 and speed.eager_attention_bf16 else None
        )
        super().__init__(model=model, args=args, **kwargs)
        if self.reference_store is not None:
            self.reference_store.save()  # the train and held-out reference passes ran inside TRL's __init__

    def _open_reference_store(self, folder, model, args, kwargs: dict[str, Any]) -> ReferenceLogpStore | None:
        """The keyed store of reference log-probs (`ref_cache`), or None: no folder given, no precomputed reference
        pass, or several processes (each rank scores other batches)."""
        if folder is None or not args.precompute_ref_log_probs or args.world_size > 1:
            return None
        reference = kwargs.get("ref_model") or model
        splits = {"train": kwargs.get("train_dataset"), "eval": kwargs.get("eval_dataset")}
        forwards = {name: getattr(self.speed, name) for name in (
            "compact_head", "seq2seq_buckets", "frozen_weight_casts", "eager_attention_bf16", "fused_gelu")}
        key = reference_key(type(self).__name__, reference, kwargs.get("processing_class"), args, splits, forwards)
        return ReferenceLogpStore(folder).open(key)

    def compute_ref_log_probs(self, model, inputs):
        """TRL's reference pass, served from the keyed store where it holds this batch (precomputed runs only)."""
        store = self.__dict__.get("reference_store")
        if store is None or not self.args.precompute_ref_log_probs:
            return super().compute_ref_log_probs(model, inputs)
        saved = store.lookup(inputs)
        if saved is not None:
            device = self.accelerator.device
            return saved[0].to(device), saved[1].to(device)
        chosen, rejected = super().compute_ref_log_probs(model, inputs)
        store.record(inputs, chosen, rejected)
        return chosen, rejected

    def _uses_length_groups(self, dataset) -> bool:
        columns = getattr(dataset, "column_names", None) or []
        return (
            self.speed.length_grouped_pairs and self.args.world_size <= 1
            and {"prompt_ids", "chosen_ids", "rejected_ids"} <= set(columns)
        )

    def _get_train_sampler(self, train_dataset=None):
        dataset = self.train_dataset if train_dataset is None else train_dataset
        if not self._uses_length_groups(dataset):
            # Default: the stock (random) sampler, so batches and the loss curve are exactly stock TRL's.
            return super()._get_train_sampler(train_dataset)
        seed = self.args.data_seed if self.args.data_seed is not None else self.args.seed
        batch = self.args.per_device_train_batch_size * self.args.gradient_accumulation_steps
        return LengthGroupedPairSampler(pair_lengths(dataset), batch, seed)

    def train(self, *args, **kwargs):
        try:
            return super().train(*args, **kwargs)
        finally:  # the bf16 copies of frozen weights and eager attention are for training; merging and saving follow
            drop_frozen_weight_copies(self.model)
            if self._attention_to_restore is not None:
                _base(self.model).set_attn_implementation(self._attention_to_restore)


class CausalDPOTrainer(_SpeedFeatures, PreferenceForwardSeams, DPOTrainer):
    """`trl.DPOTrainer` for causal LMs with this package's speed features (`speed: SpeedSettings`)."""

    def preference_forward(self, model, fields: tuple[str, ...]) -> CompactCausalForward | None:
        """The compact causal forward TRL calls in place of `model` (see `trainer_seams`); None (TRL's own fused
        head, unchanged) off the CPU, under DDP/FSDP, with `compact_head` off, or for scaled/soft-capped logits."""
        if not (self.speed.compact_head and cpu_training(self.args)) or self.runs_distributed(model):
            return None
        base = self.base_model_of(model)
        if not CompactCausalForward.supports(base):
            return None
        return CompactCausalForward(model, base, fields, autocast=self.accelerator.autocast)


class FastSeq2SeqDPOTrainer(_SpeedFeatures, Seq2SeqDPOTrainer):
    """`Seq2SeqDPOTrainer` (encoder-decoders) with this package's speed features (`speed: SpeedSettings`)."""

    def decoder_row_buckets(self):
        # CPU only: on CUDA one padded decoder call is what the kernels are tuned for (and was never measured).
        return run_buckets if self.speed.seq2seq_buckets and cpu_training(self.args) else None


def trainer_class_for(arch) -> type:
    """The trainer a family trains with (`models.families.Architecture`): TRL's DPOTrainer cannot train
    encoder-decoders, so those get ours."""
    return FastSeq2SeqDPOTrainer if arch.is_encoder_decoder else CausalDPOTrainer


def fast_trainer(trainer_class: type, model: torch.nn.Module, args, speed: SpeedSettings | None = None,
                 **kwargs: Any):
    """The speed-enabled trainer for `trainer_class` (TRL's DPOTrainer or our Seq2SeqDPOTrainer), constructed with
    `settings_for(args, ...)`."""
    cls = FastSeq2SeqDPOTrainer if issubclass(trainer_class, Seq2SeqDPOTrainer) else CausalDPOTrainer
    settings = settings_for(args, model, kwargs.get("train_dataset"), speed)
    return cls(model=model, **settings.as_kwargs(), **kwargs)
