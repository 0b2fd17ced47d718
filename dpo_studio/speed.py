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
  included; `add_compact_causal_head` scores only the completion tokens (TRL's own chunked log-prob kernel, fed the
  compact selection TRL uses on CUDA).
* **Threads.** `configure_threads` uses one thread per physical core unless the user set `OMP_NUM_THREADS`.
* **Fused GELU.** GPT-2's `gelu_new` is a chain of elementwise ops in transformers; `use_fused_gelu` swaps in the
  one-kernel `GELUTanh` (same formula).
* **Allocator.** `keep_freed_memory_for_reuse` stops glibc from mmap()ing and unmapping every activation tensor, which
  page-faulted each elementwise op's output (PyTorch has no caching allocator on CPU).
* **Precision** is chosen in `precision.py` (bf16 auto where the hardware has it) before the trainer is built.
* **bf16 on CPU** (issue 12; each patch only acts under CPU bf16 autocast and is opt-out): frozen base weights cast
  to bf16 once and reused (`reuse_frozen_weight_casts`, bitwise equal to autocast's per-op casts), no fp32 round trip
  of LoRA inputs (`skip_lora_input_round_trips`, bitwise equal), eager attention while training
  (`use_eager_attention`: the CPU flash-attention backward is slow in bf16), and the CPU log-prob head
  (`CpuLogProbHead`, fp32 runs too) instead of TRL's Triton-shaped kernel for frozen heads.

Reference log-probs once per pair (`precompute_ref_log_probs=True`) and no gradient checkpointing are product
defaults in `config.PRODUCT_DEFAULTS`; the T5 encoder is shared by chosen and rejected in `seq2seq_dpo`.
"""

from __future__ import annotations

import ctypes
import dataclasses
import functools
import logging
import os
import sys
import types
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import Sampler, SequentialSampler

from .precision import forget_earlier_accelerate_prepare

logger = logging.getLogger("dpo_studio")

__all__ = [
    "LengthGroupedPairSampler",
    "add_bucketed_seq2seq_forward",
    "CpuLogProbHead",
    "add_compact_causal_head",
    "bucketed_rows",
    "configure_threads",
    "cpu_autocast_dtype",
    "drop_frozen_weight_copies",
    "frozen_weight",
    "keep_freed_memory_for_reuse",
    "fast_trainer",
    "length_grouped_indices",
    "pair_lengths",
    "physical_cores",
    "reuse_frozen_weight_casts",
    "skip_lora_input_round_trips",
    "use_eager_attention",
    "use_fused_gelu",
]

# An extra bucket costs a forward/backward's fixed overhead (kernel launches, Python); splitting is worth it only
# when it saves more padded tokens than this share of the batch's real tokens.
BUCKET_OVERHEAD_SHARE = 0.04
MAX_BUCKETS = 4
# Pairs sorted together by the sampler: batch_size * MEGABATCH_BATCHES (as transformers' LengthGroupedSampler's
# megabatches): large enough to find similar lengths, small enough to keep batches random across epochs.
MEGABATCH_BATCHES = 16
# Opt-outs of the CPU patches (set to "0"): reused bf16 copies of frozen weights, the CPU log-prob head.
FROZEN_COPIES_ENV = "DPO_STUDIO_FROZEN_COPIES"
CPU_HEAD_ENV = "DPO_STUDIO_CPU_HEAD"
EAGER_ATTENTION_ENV = "DPO_STUDIO_BF16_EAGER_ATTENTION"


# ------------------------------------------------------------------------------------------------------ CPU settings
def physical_cores() -> int:
    """Physical cores available to this process (hyper-threads share one core's FMA units, so they don't help GEMMs)."""
    try:
        available = os.sched_getaffinity(0)
    except AttributeError:  # not Linux
        available = set(range(os.cpu_count() or 1))
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            blocks = handle.read().split("\n\n")
    except OSError:
        return max(1, len(available))
    cores = set()
    for block in blocks:
        fields = dict(line.split(":", 1) for line in block.splitlines() if ":" in line)
        fields = {k.strip(): v.strip() for k, v in fields.items()}
        if "processor" in fields and int(fields["processor"]) in available:
            cores.add((fields.get("physical id", "0"), fields.get("core id", fields["processor"])))
    return max(1, len(cores) or len(available))


def configure_threads() -> int:
    """One intra-op thread per physical core, unless the user chose (`OMP_NUM_THREADS`); returns the thread count."""
    user = os.environ.get("OMP_NUM_THREADS", "")
    threads = int(user) if user.isdigit() and int(user) > 0 else physical_cores()
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    return threads


def keep_freed_memory_for_reuse() -> bool:
    """Have glibc's malloc reuse freed memory instead of handing large blocks back to the kernel; returns whether set.

    Why: PyTorch has no caching allocator on CPU, and glibc serves blocks above its mmap threshold (128 KiB to 32 MiB)
    with fresh mmap()s. A training step allocates and frees hundreds of activation tensors of that size, so every
    elementwise op first page-faults its output into existence: in a GPT-2-small LoRA step that made `mul` 8x slower
    than on reused memory. With mmap off and trimming off (`mallopt`, the runtime form of `MALLOC_MMAP_MAX_=0
    MALLOC_TRIM_THRESHOLD_=...`), freed blocks stay in the heap and are reused; a training step got ~10% faster. The
    cost: the process keeps its peak heap until it exits, which a training run does anyway. Off with
    DPO_STUDIO_MALLOC_TUNING=0; no-op off glibc.
    """
    if os.environ.get("DPO_STUDIO_MALLOC_TUNING", "1") == "0" or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (e.g. musl)
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    m_trim_threshold, m_mmap_max = -1, -4
    return bool(mallopt(m_mmap_max, 0)) and bool(mallopt(m_trim_threshold, 2**31 - 1))


# ------------------------------------------------------------------------------------------------ length grouping
def pair_lengths(dataset) -> list[int]:
    """Padded length a pair needs: prompt + the longer completion (the collator pads chosen and rejected together)."""
    prompts, chosen, rejected = dataset["prompt_ids"], dataset["chosen_ids"], dataset["rejected_ids"]
    return [len(p) + max(len(c), len(r)) for p, c, r in zip(prompts, chosen, rejected)]


def length_grouped_indices(
    lengths: Sequence[int], batch_size: int, generator: torch.Generator, megabatch_batches: int = MEGABATCH_BATCHES
) -> list[int]:
    """A permutation of `range(len(lengths))` whose consecutive `batch_size` blocks hold similar lengths.

    Random permutation -> megabatches of `batch_size * megabatch_batches` -> each sorted by length (stable, so ties
    stay random) -> cut into batches -> batches shuffled. Hand-written because transformers' `LengthGroupedSampler`
    keeps the batches of a megabatch in descending length order (every epoch the same long-to-short curriculum).
    A last partial batch stays last so that full batches keep full size.
    """
    n = len(lengths)
    perm = torch.randperm(n, generator=generator).tolist()
    mega = max(1, batch_size * megabatch_batches)
    batches: list[list[int]] = []
    for start in range(0, n, mega):
        chunk = sorted(perm[start : start + mega], key=lambda i: -lengths[i])
        batches.extend(chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size))
    tail = [b for b in batches if len(b) < batch_size]
    full = [b for b in batches if len(b) == batch_size]
    order = torch.randperm(len(full), generator=generator).tolist()
    return [i for k in order for i in full[k]] + [i for b in tail for i in b]


class LengthGroupedPairSampler(Sampler[int]):
    """Length-grouped order of preference pairs; a new seeded permutation each epoch (`set_epoch` or per iteration)."""

    def __init__(self, lengths: Sequence[int], batch_size: int, seed: int = 0):
        self.lengths = list(lengths)
        self.batch_size = batch_size
        self.seed = seed
        self.epoch: int | None = None
        self._iterations = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self) -> Iterator[int]:
        epoch = self._iterations if self.epoch is None else self.epoch
        self._iterations += 1
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return iter(length_grouped_indices(self.lengths, self.batch_size, generator))


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
    fields = ("log_probs", "entropy", "mean_logits", "is_top1")
    if trainer.args.use_weighting:
        fields += ("log_sum_sq_probs",)
    add_compact_causal_head(policy, fields)
    if trainer.ref_model is not None:
        add_compact_causal_head(trainer.accelerator.unwrap_model(trainer.ref_model), ("log_probs",))


@functools.cache
def _length_grouped_class(base: type) -> type:
    return type(f"Fast{base.__name__}", (_LengthGroupedTrainerMixin, base), {})


# ---------------------------------------------------------------------------------------------- in-batch buckets
def bucketed_rows(
    lengths: Sequence[int], overhead_share: float = BUCKET_OVERHEAD_SHARE, max_buckets: int = MAX_BUCKETS
) -> list[tuple[list[int], int]]:
    """Split rows into at most `max_buckets` groups of similar length, minimising padded tokens + per-group overhead.

    Returns `[(row indices, bucket length), ...]`. Exact dynamic programme over rows sorted by length (groups are
    contiguous in that order); each extra group costs `overhead_share * sum(lengths)` tokens.
    """
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    ls = [int(lengths[i]) for i in order]
    n = len(ls)
    overhead = overhead_share * sum(ls)
    inf = float("inf")
    # best[k][j]: cost of splitting the first j sorted rows into k groups
    best = [[inf] * (n + 1) for _ in range(max_buckets + 1)]
    cut = [[0] * (n + 1) for _ in range(max_buckets + 1)]
    best[0][0] = 0.0
    for k in range(1, max_buckets + 1):
        for j in range(1, n + 1):
            for i in range(k - 1, j):
                cost = best[k - 1][i] + (j - i) * ls[i] + overhead
                if cost < best[k][j]:
                    best[k][j], cut[k][j] = cost, i
    k = min(range(1, max_buckets + 1), key=lambda kk: best[kk][n])
    groups, j = [], n
    while k > 0:
        i = cut[k][j]
        groups.append(([order[r] for r in range(i, j)], ls[i]))
        j, k = i, k - 1
    return groups[::-1]


def _right_padded_lengths(attention_mask: torch.Tensor) -> torch.Tensor | None:
    """Row lengths when every row is ones then zeros (right padding), else None."""
    if attention_mask.dim() != 2:
        return None
    lengths = attention_mask.sum(dim=1)
    positions = torch.arange(attention_mask.size(1), device=attention_mask.device)
    if not torch.equal(attention_mask.bool(), positions.unsqueeze(0) < lengths.unsqueeze(1)):
        return None
    return lengths


def _pad_to(tensor: torch.Tensor, length: int) -> torch.Tensor:
    """Zero-pad dim 1 of a [rows, length, ...] tensor (positions past each row's end are never read)."""
    missing = length - tensor.size(1)
    if missing == 0:
        return tensor
    pad = [0, 0] * (tensor.dim() - 2) + [0, missing]
    return F.pad(tensor, pad)


def _run_buckets(
    lengths: torch.Tensor, total_length: int, run: Callable[[torch.Tensor, int], torch.Tensor]
) -> torch.Tensor:
    """Call `run(row_index, bucket_length)` per bucket and reassemble `[rows, total_length, ...]` in row order."""
    groups = bucketed_rows(lengths.tolist())
    device = lengths.device
    outputs, order = [], []
    for rows, length in groups:
        index = torch.tensor(rows, device=device)
        outputs.append(_pad_to(run(index, max(int(length), 1)), total_length))
        order.extend(rows)
    stacked = torch.cat(outputs, dim=0) if len(outputs) > 1 else outputs[0]
    inverse = torch.empty(len(order), dtype=torch.long, device=device)
    inverse[torch.tensor(order, device=device)] = torch.arange(len(order), device=device)
    return stacked.index_select(0, inverse)


def _set_keys(kwargs: dict[str, Any]) -> set[str]:
    """Keyword arguments that carry a value: PEFT's forward passes `inputs_embeds=None`, `output_attentions=None`,
    ... explicitly, which mean the same as leaving them out."""
    return {key for key, value in kwargs.items() if value is not None}


# ------------------------------------------------------------------------------------------ causal LM fused head
_LOGIT_SCALING_ATTRS = ("final_logit_softcapping", "logit_scale", "output_multiplier", "lm_head_multiplier", "logits_scaling")


def add_compact_causal_head(model: torch.nn.Module, outputs: tuple[str, ...] = ("log_probs",)) -> bool:
    """Speed up the `fused_lm_head=True` forward TRL's `add_fused_lm_head` installed on a causal LM (in place).

    The backbone runs per length bucket on right-padded rows, and the LM head scores only labelled positions (TRL does
    that on CUDA/XPU only). Same values as TRL's forward (row outputs of a causal model do not depend on other rows or
    on trailing padding). Other calls (generation, `shift_labels`, MoE router logits) go to TRL's forward. Returns
    False, leaving the model alone, for configs with logit scaling/soft-capping (kept on TRL's path).
    """
    from trl.kernels import ChunkedLogProbFunction
    from trl.trainer.utils import _CHUNKED_LOGPROB_CHUNK_SIZE, FusedCausalLMOutput

    text_config = model.config.get_text_config()
    if model.config.is_encoder_decoder or any(getattr(text_config, a, None) is not None for a in _LOGIT_SCALING_ATTRS):
        return False
    if getattr(model, "_dpo_studio_compact_head", False):
        return True
    trl_forward = model.forward  # TRL's fused forward (falls through to the original forward without the flag)

    def _forward(self, *args, fused_lm_head=False, labels=None, shift_labels=None, num_items_in_batch=None, **kw):
        input_ids, attention_mask = kw.get("input_ids"), kw.get("attention_mask")
        simple = (
            fused_lm_head and not args and shift_labels is None and labels is not None and input_ids is not None
            and attention_mask is not None and not kw.get("output_router_logits")
            and _set_keys(kw) <= {"input_ids", "attention_mask", "use_cache", "return_dict"}
        )
        lengths = _right_padded_lengths(attention_mask) if simple else None
        if lengths is None:
            return trl_forward(
                *args, fused_lm_head=fused_lm_head, labels=labels, shift_labels=shift_labels,
                num_items_in_batch=num_items_in_batch, **kw,
            )
        backbone = self.base_model

        def run(index: torch.Tensor, length: int) -> torch.Tensor:
            return backbone(
                input_ids=input_ids.index_select(0, index)[:, :length],
                attention_mask=attention_mask.index_select(0, index)[:, :length],
                use_cache=False,
            ).last_hidden_state

        hidden = _run_buckets(lengths, input_ids.size(1), run)[:, :-1]
        shifted = labels[:, 1:]
        mask = shifted != -100
        lm_head = self.get_output_embeddings()
        if _use_cpu_log_prob_head(hidden, lm_head):
            per_token = CpuLogProbHead.apply(hidden[mask], frozen_weight(lm_head, "weight"), shifted[mask], outputs)
        else:
            per_token = ChunkedLogProbFunction.apply(
                hidden[mask], lm_head.weight, lm_head.bias, shifted[mask], 1.0, _CHUNKED_LOGPROB_CHUNK_SIZE, None,
                1.0, outputs,
            )
        # `masked_scatter` keeps the output connected to the graph even when no label is valid (as TRL does).
        log_probs, entropy, log_sum_sq_probs, mean_logits, is_top1 = (
            None if x is None else x.new_zeros(mask.shape).masked_scatter(mask, x) for x in per_token
        )
        denominator = mask.sum().clamp(min=1) if num_items_in_batch is None else num_items_in_batch
        return FusedCausalLMOutput(
            loss=-log_probs.sum() / denominator, log_probs=log_probs, entropy=entropy,
            log_sum_sq_probs=log_sum_sq_probs, mean_logits=mean_logits, is_top1=is_top1, label_mask=mask,
        )

    functools.update_wrapper(_forward, type(model).forward, assigned=("__doc__", "__name__", "__qualname__"))
    model.forward = types.MethodType(_forward, model)
    model._dpo_studio_compact_head = True
    return True


# --------------------------------------------------------------------------------------- bf16 on CPU: frozen weights
def cpu_autocast_dtype() -> torch.dtype | None:
    """The lower-precision dtype of an active CPU autocast (bf16 or fp16), else None."""
    if torch.is_autocast_enabled("cpu"):
        dtype = torch.get_autocast_dtype("cpu")
        return dtype if dtype != torch.float32 else None
    return None


def frozen_weight(module: torch.nn.Module, name: str) -> torch.Tensor:
    """`module.<name>` as CPU autocast would cast it, from a copy made once instead of at every op.

    Why: autocast caches its casts only for leaf tensors that require grad, so every matmul with a frozen LoRA base
    weight re-casts it to bf16 (per bucket, per step, forward and reference pass): in a GPT-2-small bf16 DPO step those
    copies took about a third of the time. The copy is the same `.to(bf16)` autocast makes, so results are bitwise
    equal; it is redone when the parameter is replaced or changed in place (`_version`), and dropped at the end of
    training (`drop_frozen_weight_copies`). Trainable tensors, fp32 runs and tensors off the CPU are returned as they are.
    """
    tensor = getattr(module, name)
    dtype = cpu_autocast_dtype()
    if (
        dtype is None or tensor is None or tensor.requires_grad or tensor.device.type != "cpu"
        or not tensor.is_floating_point() or tensor.dtype == dtype or os.environ.get(FROZEN_COPIES_ENV, "1") == "0"
    ):
        return tensor
    copies = module.__dict__.setdefault("_dpo_studio_lowp", {})
    key = (name, dtype)
    stamp = (tensor.data_ptr(), tensor._version, tuple(tensor.shape))
    hit = copies.get(key)
    if hit is None or hit[0] != stamp:
        hit = copies[key] = (stamp, tensor.detach().to(dtype))
    return hit[1]


def drop_frozen_weight_copies(model: torch.nn.Module) -> None:
    """Free the low-precision copies `frozen_weight` made (they are rebuilt on demand)."""
    for module in model.modules():
        module.__dict__.pop("_dpo_studio_lowp", None)


def _conv1d_forward(self, x: torch.Tensor) -> torch.Tensor:
    # transformers' Conv1D.forward, with the weight and bias as autocast would cast them (see `frozen_weight`).
    size_out = x.size()[:-1] + (self.nf,)
    out = torch.addmm(frozen_weight(self, "bias"), x.view(-1, x.size(-1)), frozen_weight(self, "weight"))
    return out.view(size_out)


def _linear_forward(self, x: torch.Tensor) -> torch.Tensor:
    return F.linear(x, frozen_weight(self, "weight"), frozen_weight(self, "bias"))


def reuse_frozen_weight_casts(model: torch.nn.Module) -> int:
    """Have the dense layers (nn.Linear, GPT-2's Conv1D) of a CPU model take their frozen weights from `frozen_weight`
    under bf16 autocast (in place; other calls run as before). The output embeddings are left alone (the LM head
    reads them through the log-prob head). Returns how many layers were patched; off with DPO_STUDIO_FROZEN_COPIES=0."""
    from transformers.pytorch_utils import Conv1D

    if os.environ.get(FROZEN_COPIES_ENV, "1") == "0":
        return 0
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    patched = 0
    for module in model.modules():
        if module is head or getattr(module, "_dpo_studio_frozen_casts", False):
            continue
        if type(module) is Conv1D:
            module.forward = types.MethodType(_conv1d_forward, module)
        elif type(module) is torch.nn.Linear:
            module.forward = types.MethodType(_linear_forward, module)
        else:
            continue
        module._dpo_studio_frozen_casts = True
        patched += 1
    return patched


def _lora_cast_input_dtype(self, x, dtype):
    # PEFT casts a LoRA layer's input to the adapter's dtype (fp32); under CPU autocast the matmul casts it straight
    # back to bf16, so a bf16 input is passed on as it is (bitwise the same product, two copies fewer per layer).
    if x is not None and x.device.type == "cpu" and not self.lora_variant and x.dtype == cpu_autocast_dtype():
        return x
    return type(self)._cast_input_dtype(self, x, dtype)


def skip_lora_input_round_trips(model: torch.nn.Module) -> int:
    """Install `_lora_cast_input_dtype` on a PEFT model's LoRA layers (in place); returns how many. Off with
    DPO_STUDIO_FROZEN_COPIES=0 (the same switch as the other autocast-cast savings)."""
    from peft.tuners.lora import LoraLayer

    if os.environ.get(FROZEN_COPIES_ENV, "1") == "0":
        return 0
    patched = 0
    for module in model.modules():
        if isinstance(module, LoraLayer) and "_cast_input_dtype" not in module.__dict__:
            module._cast_input_dtype = types.MethodType(_lora_cast_input_dtype, module)
            patched += 1
    return patched


def use_eager_attention(model: torch.nn.Module) -> str | None:
    """Switch a model from SDPA to transformers' eager attention (in place) for bf16 training on the CPU; returns the
    implementation to restore afterwards, or None when nothing changed.

    Why: PyTorch's CPU flash-attention backward in bf16 is slow at chat lengths: in a GPT-2-small bf16 DPO step it took
    ~20% of the time, while eager attention (autocast bf16 matmuls, fp32 softmax) made the whole step ~18% faster. In
    fp32 both measured the same, so fp32 runs keep SDPA. The policy and its reference both run eager (the switch is
    made before the reference pass); off with DPO_STUDIO_BF16_EAGER_ATTENTION=0.
    """
    current = getattr(model.config, "_attn_implementation", None)
    if current != "sdpa" or os.environ.get(EAGER_ATTENTION_ENV, "1") == "0":
        return None
    try:
        model.set_attn_implementation("eager")
    except (AttributeError, ValueError):  # an architecture without an eager path
        return None
    return current


# -------------------------------------------------------------------------------------------- CPU log-prob head
def _use_cpu_log_prob_head(hidden: torch.Tensor, lm_head: torch.nn.Module) -> bool:
    """The CPU head serves a frozen, bias-free LM head on the CPU; anything else stays on TRL's kernel."""
    return (
        hidden.device.type == "cpu" and getattr(lm_head, "bias", None) is None and not lm_head.weight.requires_grad
        and os.environ.get(CPU_HEAD_ENV, "1") != "0"
    )


def _head_token_chunk(vocab: int) -> int:
    # Tokens per chunk: a chunk's fp32 logits stay near 64 MiB (one GEMM per chunk, memory bounded like TRL's).
    return max(16, (1 << 24) // max(1, vocab))


class CpuLogProbHead(torch.autograd.Function):
    """Per-token log-probs (and TRL's optional entropy / log-sum-sq-probs / mean logit / is-top-1) of
    `hidden @ weight.T` for a frozen LM head on the CPU, without materialising all `[N, V]` logits.

    Same outputs and gradients as TRL's `ChunkedLogProbFunction` (temperature 1, no soft-capping), which off Triton
    runs ~20 elementwise passes with temporaries over each fp32 logits tile and, under bf16, casts the head weight at
    every tile and does the backward GEMM in fp32. Here: one GEMM per token chunk over the whole vocabulary in the
    compute dtype (autocast's bf16, or fp32), statistics in fp32 in a few in-place passes, the backward recomputes
    the logits (memory stays bounded) and runs its GEMM in the compute dtype (one rounding per element, as every
    other autocast matmul gradient). Hand-written because TRL's kernel is tuned for Triton/CUDA.
    """

    @staticmethod
    def forward(ctx, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, outputs: tuple[str, ...]):
        ctx.set_materialize_grads(False)
        compute = cpu_autocast_dtype() or hidden.dtype
        n, vocab = hidden.shape[0], weight.shape[0]
        w = weight if weight.dtype == compute else weight.to(compute)
        f32 = dict(device=hidden.device, dtype=torch.float32)
        log_z, target_z = torch.empty(n, **f32), torch.empty(n, **f32)
        extra = {name: torch.empty(n, **f32) for name in ("entropy", "log_sum_sq_probs", "mean_logits") if name in outputs}
        is_top1 = torch.empty(n, device=hidden.device, dtype=torch.bool) if "is_top1" in outputs else None
        step = _head_token_chunk(vocab)
        for start in range(0, n, step):
            end = min(start + step, n)
            z = torch.mm(hidden[start:end].to(compute), w.t()).float()  # fp32 logits of this chunk
            t = targets[start:end].unsqueeze(1)
            target_z[start:end] = z.gather(1, t).squeeze(1)
            top, arg = z.max(dim=1)  # first maximum, as TRL's is_top1 requires
            if is_top1 is not None:
                is_top1[start:end] = arg == targets[start:end]
            if "mean_logits" in extra:
                extra["mean_logits"][start:end] = z.mean(dim=1)
            z.sub_(top.unsqueeze(1))
            e = torch.exp(z)
            total = e.sum(dim=1)
            log_z[start:end] = top + total.log()
            if "entropy" in extra:  # H = log Z - sum(p z) with z shifted by the max (it cancels)
                extra["entropy"][start:end] = total.log() - torch.linalg.vecdot(e, z) / total
            if "log_sum_sq_probs" in extra:
                extra["log_sum_sq_probs"][start:end] = torch.linalg.vecdot(e, e).log() - 2 * total.log()
            del z, e
        log_probs = target_z - log_z
        entropy = extra.get("entropy")
        ctx.save_for_backward(hidden, weight, targets, log_z, log_z if entropy is None else entropy)
        ctx.compute = compute
        rest = [extra.get("log_sum_sq_probs"), extra.get("mean_logits"), is_top1]
        ctx.mark_non_differentiable(*(x for x in rest if x is not None))
        return log_probs, entropy, *rest

    @staticmethod
    def backward(ctx, grad_log_probs, grad_entropy, *_):
        hidden, weight, targets, log_z, entropy = ctx.saved_tensors
        if not ctx.needs_input_grad[0] or (grad_log_probs is None and grad_entropy is None):
            return None, None, None, None
        compute = ctx.compute
        w = weight if weight.dtype == compute else weight.to(compute)
        grad_hidden = torch.empty(hidden.shape, device=hidden.device, dtype=hidden.dtype)
        step = _head_token_chunk(weight.shape[0])
        for start in range(0, hidden.shape[0], step):
            end = min(start + step, hidden.shape[0])
            log_p = torch.mm(hidden[start:end].to(compute), w.t()).float().sub_(log_z[start:end].unsqueeze(1))
            p = torch.exp(log_p)
            grad = torch.zeros_like(p)
            if grad_log_probs is not None:  # d log p_target / dz_j = 1[j = target] - p_j
                g = grad_log_probs[start:end].float().unsqueeze(1)
                grad.addcmul_(p, g, value=-1.0).scatter_add_(1, targets[start:end].unsqueeze(1), g)
            if grad_entropy is not None:  # d H / dz_j = -p_j (log p_j + H)
                g = grad_entropy[start:end].float().unsqueeze(1)
                grad.sub_(p.mul_(log_p.add_(entropy[start:end].unsqueeze(1))).mul_(g))
            del p, log_p
            grad_hidden[start:end] = torch.mm(grad.to(compute), w)
        return grad_hidden, None, None, None


# ------------------------------------------------------------------------------------------- seq2seq decoder rows
def add_bucketed_seq2seq_forward(model: torch.nn.Module) -> None:
    """Run teacher-forced decoder rows of an encoder-decoder model per length bucket (in place, before the trainer).

    `Seq2SeqDPOTrainer` wraps `model.forward` as found at construction; with this patch underneath, its call with
    `encoder_outputs` + right-padded `decoder_attention_mask` runs each bucket of decoder rows trimmed to its own
    length (decoder and LM head skip the padding), and returns logits padded back to the batch length (padded
    positions are zeros and never scored). Any other call (generation, caches) is the model's own forward.
    """
    if getattr(model, "_dpo_studio_bucketed", False):
        return
    original = model.forward

    def _forward(self, *args, **kw):
        dec_ids, dec_mask = kw.get("decoder_input_ids"), kw.get("decoder_attention_mask")
        enc = kw.get("encoder_outputs")
        simple = (
            not args and enc is not None and dec_ids is not None and dec_mask is not None
            and kw.get("past_key_values") is None and not kw.get("use_cache") and kw.get("labels") is None
            and _set_keys(kw) <= {"attention_mask", "encoder_outputs", "decoder_input_ids", "decoder_attention_mask",
                                  "use_cache", "return_dict"}
        )
        lengths = _right_padded_lengths(dec_mask) if simple else None
        if lengths is None:
            return original(*args, **kw)
        hidden, cross_mask = enc[0], kw.get("attention_mask")

        def run(index: torch.Tensor, length: int) -> torch.Tensor:
            return original(
                attention_mask=None if cross_mask is None else cross_mask.index_select(0, index),
                encoder_outputs=type(enc)(last_hidden_state=hidden.index_select(0, index)),
                decoder_input_ids=dec_ids.index_select(0, index)[:, :length],
                decoder_attention_mask=dec_mask.index_select(0, index)[:, :length],
                use_cache=False,
            ).logits

        from transformers.modeling_outputs import Seq2SeqLMOutput

        return Seq2SeqLMOutput(logits=_run_buckets(lengths, dec_ids.size(1), run))

    model.forward = types.MethodType(_forward, model)
    model._dpo_studio_bucketed = True


# ------------------------------------------------------------------------------------------------------ activation
def use_fused_gelu(model: torch.nn.Module) -> int:
    """Swap GPT-2's `gelu_new` (`NewGELUActivation`, 7 elementwise ops forward and more backward) for transformers'
    `GELUTanh` (`F.gelu(approximate="tanh")`, one fused kernel each way): the same formula, equal up to float
    rounding. In place; the config still says `gelu_new`, so saved models are unchanged. Returns how many were swapped.
    On a GPT-2-small LoRA step on CPU the composite's elementwise ops took ~20% of the time."""
    from transformers.activations import GELUTanh, NewGELUActivation

    swapped = 0
    for module in list(model.modules()):
        for name, child in module.named_children():
            if type(child) is NewGELUActivation:
                setattr(module, name, GELUTanh())
                swapped += 1
    return swapped


# ------------------------------------------------------------------------------------------------------- assembly
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
