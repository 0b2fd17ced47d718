"""Which precision a run trains in, decided in one place for the CLI, the pipeline and `bench/`.

The rule (`choose_precision`):

* `--bf16` unset (auto): bf16 mixed precision on a CUDA GPU that supports it and on a CPU with native bf16
  (AVX512-BF16 or AMX-BF16); fp32 elsewhere, because bf16 on other CPUs is emulated and slower than fp32.
* `--bf16 true` / `--bf16 false` / `--fp16 true`: what the user asked, on any device (emulated bf16 is slow but works).
* Without a GPU the run is a CPU run (`use_cpu`), which transformers requires before it accepts bf16 on a CPU.

TRL's `DPOConfig` turns an unset `bf16` into `True` (a GPU default), and transformers then refuses it on a CPU
without `use_cpu`; `DPOTrainingArguments` in `config.py` applies this rule before either of them looks.
"""

from __future__ import annotations

import logging
import os
from dataclasses import asdict, dataclass
from typing import Any

import torch

logger = logging.getLogger("dpo_studio")

NATIVE_BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")
AUTO_BF16_ENV = "DPO_STUDIO_CPU_BF16"  # "0": auto keeps fp32 even on a native-bf16 CPU


class PrecisionError(ValueError):
    """Contradictory precision options; reported as one line with exit code 2."""


def cpu_flags() -> set[str]:
    """The CPU feature flags the kernel reports (empty off Linux)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def cpu_has_native_bf16() -> bool:
    """True when the CPU computes bf16 natively (AVX512-BF16 or AMX-BF16)."""
    return bool(cpu_flags() & set(NATIVE_BF16_CPU_FLAGS))


def cuda_available() -> bool:
    return torch.cuda.is_available()


def cuda_supports_bf16() -> bool:
    return torch.cuda.is_available() and torch.cuda.is_bf16_supported()


@dataclass(frozen=True)
class Precision:
    """The precision a run trains in, and why."""

    compute: str  # "bf16", "fp16" or "fp32": the autocast dtype of the forward and backward
    device: str  # "cuda" or "cpu"
    requested: str  # "auto", "bf16", "fp16" or "fp32"
    native: bool  # bf16/fp16: whether the hardware computes it natively (False: emulated, slow)
    reason: str

    @property
    def bf16(self) -> bool:
        return self.compute == "bf16"

    @property
    def fp16(self) -> bool:
        return self.compute == "fp16"

    def describe(self) -> str:
        mixed = "fp32" if self.compute == "fp32" else f"{self.compute} mixed precision (autocast)"
        return f"{mixed} on {self.device.upper()} ({self.requested}: {self.reason})"

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "description": self.describe()}


def choose_precision(bf16: bool | None, fp16: bool) -> Precision:
    """Apply the rule of this module to the user's `--bf16` (None = auto) and `--fp16`."""
    if bf16 and fp16:
        raise PrecisionError("--bf16 true and --fp16 true together: choose one mixed precision")
    device = "cuda" if cuda_available() else "cpu"
    native_bf16 = cuda_supports_bf16() if device == "cuda" else cpu_has_native_bf16()
    if fp16:
        return Precision("fp16", device, "fp16", device == "cuda", "asked for with --fp16 true")
    if bf16 is True:
        why = "asked for with --bf16 true" + ("" if native_bf16 else f"; this {device.upper()} emulates bf16 (slow)")
        return Precision("bf16", device, "bf16", native_bf16, why)
    if bf16 is False:
        return Precision("fp32", device, "fp32", False, "asked for with --bf16 false")
    if device == "cuda":
        if native_bf16:
            return Precision("bf16", device, "auto", True, "the GPU supports bf16")
        return Precision("fp32", device, "auto", False, "the GPU has no bf16")
    if not native_bf16:
        return Precision("fp32", device, "auto", False, "this CPU has no native bf16 (AVX512-BF16/AMX), so bf16 would be emulated")
    if os.environ.get(AUTO_BF16_ENV, "1") == "0":
        return Precision("fp32", device, "auto", False, f"{AUTO_BF16_ENV}=0 keeps fp32 on a native-bf16 CPU")
    flags = ", ".join(sorted(cpu_flags() & set(NATIVE_BF16_CPU_FLAGS))) or "native bf16"
    return Precision("bf16", device, "auto", True, f"this CPU has native bf16 ({flags})")


def precision_of(args) -> Precision:
    """The precision a built `TrainingArguments` will train in (what ran, for logs, metrics.json and the card)."""
    chosen = getattr(args, "precision", None)
    if isinstance(chosen, Precision) and chosen.bf16 == bool(args.bf16) and chosen.fp16 == bool(args.fp16):
        return chosen
    return choose_precision(bool(args.bf16), bool(args.fp16))  # args built elsewhere: explicit by construction


def forget_earlier_accelerate_prepare(model: torch.nn.Module) -> None:
    """Let the next Trainer apply its own mixed precision to a model an earlier Trainer already prepared.

    Why: accelerate marks prepared models `_is_accelerate_prepared` and returns them untouched the next time, without
    its autocast wrapper; PEFT forwards attribute lookups to the base model, so after the demo's fp32 SFT warm start
    (or any earlier Trainer in the process) a bf16 DPO run silently trained in fp32.
    """
    from .speed.private_api import (
        forget_accelerate_prepare,  # the one home of private third-party names
    )

    forget_accelerate_prepare(model)
