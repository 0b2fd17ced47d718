"""Which precision a run trains in, decided in one place for the CLI, the pipeline and `bench/`.

The rule (`choose_precision`, then `for_family` once the family's architecture is known):

* `--bf16` unset (auto): bf16 mixed precision where the device computes bf16 natively: a CUDA GPU of compute
  capability 8.0 or more (A100, A10G, L4, H100; torch's `is_bf16_supported()` also says True on a T4 or V100, where
  bf16 is emulated, so its answer is not used) and a CPU with native bf16 (AVX512-BF16 or AMX-BF16). On fp16-only GPUs
  (capability 7.x: V100, T4) fp16 mixed precision with loss scaling for causal LMs, and fp32 for T5-family models,
  whose activations overflow fp16. fp32 elsewhere (bf16 on other CPUs is emulated and slower than fp32).
* `--bf16 true` / `--bf16 false` / `--fp16 true`: what the user asked, on any device (emulated bf16 is slow but works);
  `--fp16 true` on a T5-family model is refused unless `--allow-fp16-t5 true`.
* Without a GPU, or with `--use_cpu true`, the run is a CPU run (`use_cpu`), which transformers requires before it
  accepts bf16 on a CPU.

The probe reads the capability of this process's GPU (`LOCAL_RANK` under torchrun) from its properties: it allocates
nothing, so no rank opens a CUDA context on GPU 0 before its own device is set.

TRL's `DPOConfig` turns an unset `bf16` into `True` (a GPU default), and transformers then refuses it on a CPU
without `use_cpu`; `DPOTrainingArguments` in `config.py` applies this rule before either of them looks.
"""

from __future__ import annotations

import logging
import os
from dataclasses import asdict, dataclass, replace
from typing import Any

import torch

logger = logging.getLogger(__name__)

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


# Model types whose activations overflow fp16 (T5 checkpoints were trained in bf16; inf/NaN in the feed-forward).
FP16_OVERFLOW_MODEL_TYPES = frozenset({"t5", "mt5", "umt5", "longt5", "switch_transformers"})
NATIVE_BF16_CAPABILITY = (8, 0)  # Ampere and later
FP16_TENSOR_CORE_CAPABILITY = (7, 0)  # Volta and later


def cuda_available() -> bool:
    return torch.cuda.is_available()


def cuda_device_index() -> int:
    """This process's GPU: `LOCAL_RANK` under torchrun / accelerate launch, else 0 (read from the environment)."""
    return int(os.environ.get("LOCAL_RANK", "0") or 0)


def cuda_capability() -> tuple[int, int]:
    """Compute capability of this process's GPU, read from its properties (no allocation, no context on GPU 0)."""
    major, minor = torch.cuda.get_device_capability(cuda_device_index())
    return int(major), int(minor)


def cuda_supports_bf16() -> bool:
    """Native bf16 only: torch's `is_bf16_supported(including_emulation=False)` rule (capability 8.0+, any ROCm GPU),
    applied to this rank's GPU instead of the current device."""
    if not torch.cuda.is_available():
        return False
    return bool(torch.version.hip) or cuda_capability() >= NATIVE_BF16_CAPABILITY


def cuda_hardware() -> str:
    """'Tesla T4, capability 7.5' for logs, metrics.json and the card."""
    index = cuda_device_index()
    major, minor = cuda_capability()
    return f"{torch.cuda.get_device_name(index)}, capability {major}.{minor}"


@dataclass(frozen=True)
class Precision:
    """The precision a run trains in, and why."""

    compute: str  # "bf16", "fp16" or "fp32": the autocast dtype of the forward and backward
    device: str  # "cuda" or "cpu"
    requested: str  # "auto", "bf16", "fp16" or "fp32"
    native: bool  # bf16/fp16: whether the hardware computes it natively (False: emulated, slow)
    reason: str
    hardware: str = ""  # the GPU and its capability on CUDA runs ("Tesla T4, capability 7.5")

    @property
    def bf16(self) -> bool:
        return self.compute == "bf16"

    @property
    def fp16(self) -> bool:
        return self.compute == "fp16"

    def describe(self) -> str:
        mixed = "fp32" if self.compute == "fp32" else f"{self.compute} mixed precision (autocast)"
        where = f"CUDA ({self.hardware})" if self.hardware else self.device.upper()
        return f"{mixed} on {where} ({self.requested}: {self.reason})"

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "description": self.describe()}


def choose_precision(bf16: bool | None, fp16: bool, use_cpu: bool = False) -> Precision:
    """Apply the rule of this module to the user's `--bf16` (None = auto), `--fp16` and `--use_cpu`."""
    if bf16 and fp16:
        raise PrecisionError("--bf16 true and --fp16 true together: choose one mixed precision")
    if use_cpu or not cuda_available():
        return _on_cpu(bf16, fp16)
    hardware, capability = cuda_hardware(), cuda_capability()
    native_bf16 = cuda_supports_bf16()
    fp16_native = capability >= FP16_TENSOR_CORE_CAPABILITY
    if fp16:
        return Precision("fp16", "cuda", "fp16", fp16_native, "asked for with --fp16 true", hardware)
    if bf16 is True:
        why = "asked for with --bf16 true" + ("" if native_bf16 else "; this GPU emulates bf16 (needs capability 8.0+)")
        return Precision("bf16", "cuda", "bf16", native_bf16, why, hardware)
    if bf16 is False:
        return Precision("fp32", "cuda", "fp32", False, "asked for with --bf16 false", hardware)
    if native_bf16:
        return Precision("bf16", "cuda", "auto", True, "the GPU computes bf16 natively (capability 8.0+)", hardware)
    if fp16_native:
        return Precision("fp16", "cuda", "auto", True, "the GPU has fp16 tensor cores but no native bf16 (capability "
                         "8.0+); fp16 mixed precision with loss scaling", hardware)
    return Precision("fp32", "cuda", "auto", False, "the GPU has neither native bf16 nor fp16 tensor cores", hardware)


def _on_cpu(bf16: bool | None, fp16: bool) -> Precision:
    device = "cpu"
    native_bf16 = cpu_has_native_bf16()
    if fp16:
        return Precision("fp16", device, "fp16", False, "asked for with --fp16 true")
    if bf16 is True:
        why = "asked for with --bf16 true" + ("" if native_bf16 else "; this CPU emulates bf16 (slow)")
        return Precision("bf16", device, "bf16", native_bf16, why)
    if bf16 is False:
        return Precision("fp32", device, "fp32", False, "asked for with --bf16 false")
    if not native_bf16:
        return Precision("fp32", device, "auto", False, "this CPU has no native bf16 (AVX512-BF16/AMX), so bf16 would be emulated")
    if os.environ.get(AUTO_BF16_ENV, "1") == "0":
        return Precision("fp32", device, "auto", False, f"{AUTO_BF16_ENV}=0 keeps fp32 on a native-bf16 CPU")
    flags = ", ".join(sorted(cpu_flags() & set(NATIVE_BF16_CPU_FLAGS))) or "native bf16"
    return Precision("bf16", device, "auto", True, f"this CPU has native bf16 ({flags})")


def for_family(precision: Precision, model_type: str, allow_fp16_t5: bool = False) -> Precision:
    """The run's precision as one family trains in it: T5-family models overflow fp16, so auto fp16 (an fp16-only GPU)
    becomes fp32 for them, and an explicit `--fp16 true` is refused unless `--allow-fp16-t5 true`."""
    if not precision.fp16 or model_type not in FP16_OVERFLOW_MODEL_TYPES:
        return precision
    if precision.requested == "fp16":
        if allow_fp16_t5:
            return replace(precision, reason=f"{precision.reason}; --allow-fp16-t5 true ({model_type} may overflow fp16)")
        raise PrecisionError(
            f"--fp16 true: {model_type} models overflow in fp16 (inf/NaN); use --bf16 true on a GPU of capability 8.0+ "
            "or fp32 (--fp16 false), or pass --allow-fp16-t5 true to train in fp16 anyway")
    return Precision("fp32", precision.device, "auto", False, f"{model_type} overflows in fp16 and this GPU has no "
                     "native bf16, so it trains in fp32", precision.hardware)


def precision_of(args) -> Precision:
    """The precision a built `TrainingArguments` will train in (what ran, for logs, metrics.json and the card)."""
    chosen = getattr(args, "precision", None)
    if isinstance(chosen, Precision) and chosen.bf16 == bool(args.bf16) and chosen.fp16 == bool(args.fp16):
        return chosen
    # args built elsewhere: explicit by construction
    return choose_precision(bool(args.bf16), bool(args.fp16), bool(getattr(args, "use_cpu", False)))


def forget_earlier_accelerate_prepare(model: torch.nn.Module) -> None:
    """Let the next Trainer apply its own mixed precision to a model an earlier Trainer already prepared.

    Why: accelerate marks prepared models `_is_accelerate_prepared` and returns them untouched the next time, without
    its autocast wrapper; PEFT forwards attribute lookups to the base model, so after the demo's fp32 SFT warm start
    (or any earlier Trainer in the process) a bf16 DPO run silently trained in fp32.
    """
    from dpo_studio.private_api import forget_accelerate_prepare

    forget_accelerate_prepare(model)
