"""Speed features for CPU (and GPU) DPO training, applied by `pipeline.build_trainer` so the CLI and `bench/` run the
same code.

What TRL 1.16 leaves on the table for the small LoRA runs this tool does:

* **Padding.** `DPOTrainer` batches random pairs and pads `[chosen; rejected]` rows to the longest one. Chat replies
  vary a lot in length, so a third or more of the tokens in a batch can be padding. `bucketed_rows` runs the rows of
  a batch in up to a few length buckets, each trimmed to its own longest row (exact; on by default). TRL's
  `padding_free` is disabled in 1.16 (the collator ignores it), so this is the padding-free substitute. Opt-in
  (`--train_sampling_strategy group_by_length`): `LengthGroupedPairSampler` also puts pairs of similar length in the
  same batch; it changes which pairs share a batch, hence the loss curve, and measured no faster with the buckets
  on (GPT-2-small shape, 16 pairs: 117 s grouped vs 127 s random, within run-to-run noise), so it is off by
  default and the product's batches are stock TRL's.
* **LM head on every position.** Off Triton (CPU), TRL's fused LM head scores every position, prompt and padding
  included; `CompactCausalForward` scores only the completion tokens (TRL's own chunked log-prob kernel, fed the
  compact selection TRL uses on CUDA).
* **Threads.** `configure_threads` uses one thread per physical core unless the user set `OMP_NUM_THREADS` (with the
  allocator below, applied once at the training command's start by `host_tuning.tune_host`, CPU runs only).
* **Fused GELU.** GPT-2's `gelu_new` is a chain of elementwise ops in transformers; `use_fused_gelu` swaps in the
  one-kernel `GELUTanh` (same formula).
* **Allocator.** `keep_freed_memory_for_reuse` stops glibc from mmap()ing and unmapping every activation tensor, which
  page-faulted each elementwise op's output (PyTorch has no caching allocator on CPU).
* **Precision** is chosen in `precision.py` (bf16 auto where the hardware has it) before the trainer is built.
* **bf16 on CPU** (issue 12; each acts only under CPU bf16 autocast and is opt-out): frozen base weights cast
  to bf16 once and reused (`reuse_frozen_weight_casts` builds the model with `FrozenCastLinear`/`FrozenCastConv1D`
  submodules, bitwise equal to autocast's per-op casts), eager attention while training
  (`use_eager_attention`: the CPU flash-attention backward is slow in bf16), and the CPU log-prob head
  (`CpuLogProbHead`, fp32 runs too) instead of TRL's Triton-shaped kernel for frozen heads.

Reference log-probs once per pair (`precompute_ref_log_probs=True`) and no gradient checkpointing are product
defaults in `config.PRODUCT_DEFAULTS`; the T5 encoder is shared by chosen and rejected in `seq2seq_dpo`.

* **Compiler.** `compile.choose_compile`: the Trainer's `torch_compile`, auto (unset) on only where it was measured
  to pay (CPU bf16, enough steps); recorded in metrics.json.

The features are switched by `SpeedSettings` fields and applied by the named trainers `CausalDPOTrainer` and
`FastSeq2SeqDPOTrainer` (`trainer`). Nothing is swapped on a live object: each feature is a constructor step, a
submodule the model is built with, or a named callable (`CompactCausalForward`, `Seq2SeqPreferenceForward` with
`run_buckets`) that the trainers hand TRL in place of the model through its public `compute_loss` /
`compute_ref_log_probs` (`dpo_studio.training.trainer_seams`). Modules: `host_tuning` (threads, malloc), `batching`
(length-grouped sampler, in-batch buckets), `heads` (compact causal forward, CPU log-prob head), `bf16`
(frozen-weight casts, eager attention), `activations` (fused GELU), `compile` (the compile rule), `trainer`. The public
names are re-exported here.
"""

from dpo_studio.training.speed.activations import use_fused_gelu
from dpo_studio.training.speed.batching import (
    BUCKET_OVERHEAD_SHARE,
    MAX_BUCKETS,
    MEGABATCH_BATCHES,
    LengthGroupedPairSampler,
    bucketed_rows,
    length_grouped_indices,
    pair_lengths,
    run_buckets,
)
from dpo_studio.training.speed.bf16 import (
    EAGER_ATTENTION_ENV,
    FROZEN_COPIES_ENV,
    FrozenCastConv1D,
    FrozenCastLinear,
    cpu_autocast_dtype,
    drop_frozen_weight_copies,
    frozen_weight,
    reuse_frozen_weight_casts,
    use_eager_attention,
)
from dpo_studio.training.speed.compile import MIN_COMPILED_STEPS, CompileDecision, choose_compile, planned_steps
from dpo_studio.training.speed.heads import CPU_HEAD_ENV, LOGPROB_TILE_TOKENS, CompactCausalForward, CpuLogProbHead
from dpo_studio.training.speed.host_tuning import (
    HostTuning,
    configure_threads,
    keep_freed_memory_for_reuse,
    physical_cores,
    tune_host,
)
from dpo_studio.training.speed.trainer import (
    CausalDPOTrainer,
    FastSeq2SeqDPOTrainer,
    SpeedSettings,
    TrainerSettings,
    cpu_training,
    fast_trainer,
    settings_for,
    trainer_class_for,
)

__all__ = [
    "trainer_class_for",
    "CausalDPOTrainer",
    "CompileDecision",
    "FastSeq2SeqDPOTrainer",
    "FrozenCastConv1D",
    "FrozenCastLinear",
    "MIN_COMPILED_STEPS",
    "SpeedSettings",
    "TrainerSettings",
    "settings_for",
    "choose_compile",
    "planned_steps",
    "BUCKET_OVERHEAD_SHARE",
    "CPU_HEAD_ENV",
    "EAGER_ATTENTION_ENV",
    "FROZEN_COPIES_ENV",
    "LengthGroupedPairSampler",
    "MAX_BUCKETS",
    "MEGABATCH_BATCHES",
    "CpuLogProbHead",
    "CompactCausalForward",
    "LOGPROB_TILE_TOKENS",
    "bucketed_rows",
    "run_buckets",
    "configure_threads",
    "HostTuning",
    "tune_host",
    "cpu_autocast_dtype",
    "cpu_training",
    "drop_frozen_weight_copies",
    "frozen_weight",
    "keep_freed_memory_for_reuse",
    "fast_trainer",
    "length_grouped_indices",
    "pair_lengths",
    "physical_cores",
    "reuse_frozen_weight_casts",
    "use_eager_attention",
    "use_fused_gelu",
]
