"""Decode-step matmuls that make a 2-row batch (base row + DPO row) cost about what a 1-row step costs on CPU.

Why this exists (nothing in torch/transformers/PEFT does it): a decode step multiplies a few rows of activations
by every weight matrix, so it is bound by reading the weights from memory. With one row, MKL runs a GEMV that
streams each weight once. With a few rows, `x @ W^T` takes MKL's GEMM path, which packs the weights on every call:
on the 2-core AMD EPYC CI machine the 48 block matmuls of GPT-2-small take 35 ms for 1 row and 70 ms for 2 rows, so
serving base and DPO in one batch saved nothing over two models in turn. Computing the transposed product
`(W @ x^T)^T` lets the GEMM stream the weights once for all rows (33 ms for 2 rows, 69 ms for 32);
`bench/app_compare.py` measures the effect side by side.

`enable_small_batch_matmuls(model)` switches every `nn.Linear` and GPT-2 `Conv1D` of a serving model to that
formulation for inputs of 2..`MAX_ROWS` rows; other inputs (1 row, prompt prefill, training) take the stock path.
GPT-2's `Conv1D` stores its weight as [in, out]; it is re-laid out once as a transposed view of an [out, in]
buffer (same values, same shape), which is also the layout its stock 1-row path prefers. transformers maps
safetensors files into memory and uses the mapped bytes as the weights; the copy reads those pages, which would then
stay resident (counted in RSS) for as long as any weight of the file lives. `_drop_file_pages` hands the old
weight's pages back to the kernel (they are clean file pages: nothing is lost), so the re-layout costs no memory.
Results equal the stock path's up to float summation order.

`enable_masked_adapter_batches(peft_model)` does the same job for PEFT's mixed-adapter batches. PEFT's
`adapter_names` path splits every LoRA layer's input by adapter, runs each sub-batch and scatters the results back;
with one adapter plus `"__base__"` rows (the app's case) that bookkeeping cost GPT-2-small ~10 ms per generated
token on the CI machine, more than the LoRA maths. The switched layers instead run the LoRA product on all rows
with the `"__base__"` rows scaled by zero, accumulated into the base output by one `addmm`: base rows get the base
output plus an exact zero, adapter rows the same sum as PEFT's up to float order (a `lora_bias=True` adapter's
`lora_B` bias included, scaled like the rest of the LoRA output as PEFT does). Anything else (several adapters,
DoRA or other variants, a `lora_A` bias, dropout in training, autograd) goes to PEFT's own forward.
"""

from __future__ import annotations

import ctypes
import os
import sys
import time
import types

import torch
from torch import nn

from dpo_studio.names import BASE_ADAPTER

MAX_ROWS = 32  # measured faster than the stock GEMM up to 64 rows on AVX2; wider inputs (prefill) keep the stock path
ENV_SWITCH = "DPO_STUDIO_SMALL_BATCH_MATMUL"  # "0" turns both re-formulations off
KERNEL_ENV = "DPO_STUDIO_SMALL_BATCH_KERNEL"  # "transposed" or "linear": skip the probe and use that kernel
# Which few-row product is fast depends on the CPU's BLAS path: `(W @ x^T)^T` streamed the weights once on the AMD EPYC
# (x @ W^T re-packed them: 2 rows cost 2x one), while on an Intel Xeon with AMX `F.linear(x, W)` ran 2 rows in the
# time of one (175 vs 309 us for a 3072 x 768 weight). `small_batch_kernel` times both once per process and keeps
# the faster; both give the stock result up to float summation order.
KERNELS = ("transposed", "linear")
_chosen_kernel: str | None = None


def _time_kernel(kernel: str, weight: torch.Tensor, x: torch.Tensor, repeats: int = 15) -> float:
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        _product(kernel, weight, None, x)
        best = min(best, time.perf_counter() - started)
    return best


def small_batch_kernel() -> str:
    """The few-row matmul kernel this process uses: `$DPO_STUDIO_SMALL_BATCH_KERNEL`, else the faster one measured
    on a GPT-2-sized weight with 2 rows (a few milliseconds, once)."""
    global _chosen_kernel
    forced = os.environ.get(KERNEL_ENV, "")
    if forced in KERNELS:
        return forced
    if _chosen_kernel is None:
        with torch.inference_mode():
            weight, x = torch.randn(3072, 768), torch.randn(2, 768)
            _chosen_kernel = min(KERNELS, key=lambda kernel: _time_kernel(kernel, weight, x))
    return _chosen_kernel


def _product(kernel: str, weight: torch.Tensor, bias: torch.Tensor | None, flat: torch.Tensor) -> torch.Tensor:
    """`flat @ weight^T + bias` for [rows, in] inputs and an [out, in] weight, by the chosen kernel."""
    if kernel == "linear":
        return torch.nn.functional.linear(flat, weight, bias)
    if bias is None:
        return torch.mm(weight, flat.t()).t()
    return torch.addmm(bias.unsqueeze(1), weight, flat.t()).t()


def _conv1d_class() -> type | None:
    try:
        from transformers.pytorch_utils import Conv1D
    except ImportError:  # pragma: no cover - transformers always has it today
        return None
    return Conv1D


def _weight_out_in(module: nn.Module) -> torch.Tensor:
    """The module's weight as an [out, in] matrix (a view, no copy)."""
    weight = module.weight
    return weight if isinstance(module, nn.Linear) else weight.t()


def _small_batch_forward(self: nn.Module, x: torch.Tensor) -> torch.Tensor:
    rows = x.numel() // x.shape[-1] if x.numel() else 0
    if not 2 <= rows <= MAX_ROWS or x.dtype != self.weight.dtype or x.requires_grad or torch.is_grad_enabled():
        return self._stock_forward(x)
    weight = _weight_out_in(self)
    out = _product(small_batch_kernel(), weight, self.bias, x.reshape(rows, x.shape[-1]))
    return out.reshape(*x.shape[:-1], weight.shape[0])


_ROW_SCALES: dict[tuple, torch.Tensor] = {}  # (adapter_names, adapter, scaling, dtype, device) -> [rows, 1, 1]


def _row_scale(names: tuple[str, ...], adapter: str, scaling: float, x: torch.Tensor) -> torch.Tensor:
    """LoRA scaling for the adapter's rows, 0 for the others; cached because every layer of every step asks."""
    key = (names, adapter, scaling, x.dtype, x.device)
    scale = _ROW_SCALES.get(key)
    if scale is None:
        if len(_ROW_SCALES) > 64:
            _ROW_SCALES.clear()
        values = [scaling if name == adapter else 0.0 for name in names]
        scale = _ROW_SCALES[key] = torch.tensor(values, dtype=x.dtype, device=x.device).view(-1, 1, 1)
    return scale


def _masked_lora_forward(self: nn.Module, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
    names = kwargs.get("adapter_names")
    adapters = set(names or ()) - {BASE_ADAPTER}
    adapter = next(iter(adapters)) if len(adapters) == 1 else None
    if (
        names is None or adapter is None or args or len(kwargs) != 1 or x.dim() != 3 or self.disable_adapters
        or self.merged or adapter not in self.lora_A or adapter in getattr(self, "lora_variant", {})
        or self.use_dora.get(adapter, False) or len(names) != len(x) or torch.is_grad_enabled()
        or not isinstance(self.lora_dropout[adapter], nn.Identity) or x.dtype != self.lora_A[adapter].weight.dtype
        or self.lora_A[adapter].bias is not None
    ):
        return self._peft_forward(x, *args, **kwargs)
    result = self.base_layer(x)
    lora_a, lora_b = self.lora_A[adapter].weight, self.lora_B[adapter].weight  # [r, in], [out, r]
    scale = _row_scale(tuple(names), adapter, self.scaling[adapter], x)
    # [batch, seq, r]: base rows scaled by 0, so their output below is the base output + exactly 0
    down = torch.matmul(x, lora_a.t()).mul_(scale)
    out = torch.addmm(result.reshape(-1, result.shape[-1]), down.reshape(-1, down.shape[-1]), lora_b.t())
    out = out.view(result.shape)
    bias = self.lora_B[adapter].bias  # `lora_bias=True`: PEFT adds scaling * (B x + b), so the bias is scaled too
    return out if bias is None else out.add_(scale * bias)


def enable_masked_adapter_batches(model: nn.Module) -> int:
    """Switch a PeftModel's LoRA Linear layers to the masked mixed-batch forward; returns how many.

    Does nothing (returns 0) when `DPO_STUDIO_SMALL_BATCH_MATMUL=0`; layers already switched are left alone.
    """
    if os.environ.get(ENV_SWITCH, "1") == "0":
        return 0
    try:
        from peft.tuners.lora.layer import Linear as LoraLinear
    except ImportError:  # pragma: no cover - peft is a dependency
        return 0
    switched = 0
    for module in model.modules():
        if type(module) is not LoraLinear or hasattr(module, "_peft_forward"):
            continue
        module._peft_forward = module.forward
        module.forward = types.MethodType(_masked_lora_forward, module)
        switched += 1
    return switched


_MADV_DONTNEED = 4


def _file_mapping_of(start: int, end: int) -> str | None:
    """The file mapped at [start, end) of this process's memory, or None (anonymous memory, several mappings)."""
    try:
        with open("/proc/self/maps", encoding="utf-8") as handle:
            for line in handle:
                fields = line.split(maxsplit=5)
                low, high = (int(x, 16) for x in fields[0].split("-"))
                if low <= start and end <= high:
                    return fields[5].strip() if len(fields) == 6 and fields[5].startswith("/") else None
    except OSError:
        pass
    return None


def _drop_file_pages(dead: torch.Tensor, live: list[torch.Tensor]) -> bool:
    """Give the resident pages of `dead` (no longer used) back to the kernel when they belong to a mapped
    .safetensors file and no `live` tensor overlaps them. Linux only; returns whether pages were dropped."""
    if not sys.platform.startswith("linux") or dead.device.type != "cpu":
        return False
    page = os.sysconf("SC_PAGE_SIZE")
    begin = dead.data_ptr()
    end = begin + dead.untyped_storage().nbytes() - dead.storage_offset() * dead.element_size()
    start, stop = -(-begin // page) * page, end // page * page  # whole pages inside the tensor only
    if stop <= start:
        return False
    mapped = _file_mapping_of(start, stop)
    if mapped is None or not mapped.endswith(".safetensors"):
        return False
    for tensor in live:
        other = tensor.data_ptr()
        if tensor.device.type == "cpu" and other < stop and start < other + tensor.nbytes:
            return False
    libc = ctypes.CDLL(None, use_errno=True)
    libc.madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
    return libc.madvise(ctypes.c_void_p(start), ctypes.c_size_t(stop - start), _MADV_DONTNEED) == 0


def enable_small_batch_matmuls(model: nn.Module) -> int:
    """Switch `model`'s CPU float Linear/Conv1D layers to the small-batch formulation; returns how many.

    Does nothing (returns 0) when `DPO_STUDIO_SMALL_BATCH_MATMUL=0`. Layers on other devices or in other dtypes
    than float32/bfloat16, and layers already switched, are left alone. Only for inference: under autograd the
    stock forward runs.
    """
    if os.environ.get(ENV_SWITCH, "1") == "0":
        return 0
    conv1d = _conv1d_class()
    switched = 0
    for module in model.modules():
        is_linear = type(module) is nn.Linear
        is_conv1d = conv1d is not None and type(module) is conv1d
        if not (is_linear or is_conv1d) or hasattr(module, "_stock_forward"):
            continue
        weight = module.weight
        if weight.device.type != "cpu" or weight.dtype not in (torch.float32, torch.bfloat16):
            continue
        if is_conv1d and not weight.t().is_contiguous():
            # [in, out] storage -> transposed view of an [out, in] buffer; the old buffer is freed on return.
            with torch.no_grad():
                module.weight = nn.Parameter(weight.detach().t().contiguous().t(), requires_grad=weight.requires_grad)
            # Now, not after the loop: the peak then holds one layer's old pages, not all of them.
            _drop_file_pages(weight.detach(), [t for t in (*model.parameters(), *model.buffers())])
        module._stock_forward = module.forward
        module.forward = types.MethodType(_small_batch_forward, module)
        switched += 1
    return switched
