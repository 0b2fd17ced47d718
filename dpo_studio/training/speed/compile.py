"""When training runs through `torch.compile`: the Trainer's own `torch_compile` setting, with an automatic default.

`--torch_compile true/false` is honoured as given (TRL/transformers users know the flag; accelerate compiles the
model with `dynamic=None`, i.e. automatic dynamic shapes: after the first length change a dimension is traced as
dynamic, so length buckets cost one recompile, not one per step). Left unset, `choose_compile` decides from the
measurement below and records the decision and its reason (metrics.json, beside the precision record).

Source of the constants (issue 18, Intel Xeon with AMX, 2 threads, dense GPT-2-small LoRA step of 16 x 128 tokens,
LoRA r=16 on c_attn/c_proj/c_fc, fwd+bwd+AdamW, `torch.compile` default mode):
  bf16 autocast: eager 4.33 s/step -> compiled 3.11 s/step, first compiled step 80 s;
  fp32:          eager 5.32 s/step -> compiled 6.77 s/step (slower: auto never compiles fp32).
Nothing was measured on GPUs, fp16 or quantized (bitsandbytes) bases, so auto keeps the Trainer's default (off) there.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

BF16_EAGER_STEP_S = 4.33
BF16_COMPILED_STEP_S = 3.11
FIRST_COMPILED_STEP_S = 80.0
# Compile cost: the first step's overhead, twice (the static trace, then the one dynamic-shape recompile that the
# second bucket length triggers).
COMPILE_OVERHEAD_S = 2 * (FIRST_COMPILED_STEP_S - BF16_COMPILED_STEP_S)
# Steps after which the per-step saving has paid for compiling (154 s / 1.22 s = 127 steps at the measured size).
MIN_COMPILED_STEPS = math.ceil(COMPILE_OVERHEAD_S / (BF16_EAGER_STEP_S - BF16_COMPILED_STEP_S))


@dataclass(frozen=True)
class CompileDecision:
    """Whether training runs compiled, and why."""

    enabled: bool
    requested: str  # "auto", "true" or "false"
    reason: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def choose_compile(requested: bool | None, compute: str, device: str, steps: int, quantized: bool = False) -> CompileDecision:
    """Apply this module's rule.

    Args:
        requested: the user's `--torch_compile` (None = auto).
        compute: "bf16", "fp16" or "fp32" (the precision record's `compute`).
        device: "cpu" or "cuda".
        steps: optimizer steps this run will take.
        quantized: whether the frozen base is held by bitsandbytes.
    """
    if requested is True:
        return CompileDecision(True, "true", "asked for with --torch_compile true")
    if requested is False:
        return CompileDecision(False, "false", "asked for with --torch_compile false")
    if device != "cpu":
        return CompileDecision(False, "auto", f"not measured on {device.upper()}: the Trainer's default (off)")
    if quantized:
        return CompileDecision(False, "auto", "not measured on a quantized (bitsandbytes) base: off")
    if compute != "bf16":
        return CompileDecision(False, "auto", f"{compute} on CPU measured slower compiled (5.32 -> 6.77 s/step)")
    if steps < MIN_COMPILED_STEPS:
        return CompileDecision(
            False, "auto",
            f"{steps} steps < {MIN_COMPILED_STEPS}: compiling (~{COMPILE_OVERHEAD_S:.0f} s) would not pay for itself",
        )
    return CompileDecision(
        True, "auto", f"bf16 on CPU, {steps} steps >= {MIN_COMPILED_STEPS}: the 1.39x step saving pays for compiling",
    )


def planned_steps(args, train_pairs: int) -> int:
    """Optimizer steps a run of `train_pairs` pairs will take under `args` (`max_steps` wins when set)."""
    if args.max_steps and args.max_steps > 0:
        return int(args.max_steps)
    per_step = args.per_device_train_batch_size * args.gradient_accumulation_steps * max(1, args.world_size)
    return math.ceil(math.ceil(train_pairs / per_step) * float(args.num_train_epochs))
