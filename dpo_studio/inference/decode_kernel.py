"""The few-row product of the app's decode steps, chosen once per CPU at model load.

The app decodes base and DPO as one 2-row batch over one set of weights (`cpu_decode.MaskedLoraLinear`), so every
decode step multiplies each weight by 2 rows. On some CPUs stock `F.linear` (MKL) costs as much for 2 rows as for
two separate 1-row calls (issue 27, AMD EPYC: GPT-2's LM head 17.3 ms for 2 rows vs 8.0 ms for one), while the
transposed form `(W @ x^T)^T` does the same product in 3.2 ms there; on an Intel Xeon with AMX it lost. Neither wins
everywhere, so the choice is measured per machine:

* once, in `choose_decode_kernel`, called by `generation.load_pair` right after the model is loaded, never inside a
  request;
* on the loaded model's own weights and shapes (each distinct LoRA base-layer shape and the LM head, weighted by
  how many layers have it), with inputs drawn from a private `torch.Generator` (torch's global RNG is untouched, so
  the first seeded request samples what every later one does);
* per weight shape (GPT-2's `Conv1D` layers and its LM head may go different ways), logged in one line with both
  timings; `DPO_STUDIO_DECODE_KERNEL=linear|transposed` forces either for every product.

Where the transposed form runs: the base product inside `MaskedLoraLinear`'s mixed base/DPO pass and the LM head
(built as `FewRowLinear`, a submodule class: no method of a live object is replaced), only without autograd and only
for at most `FEW_ROWS` rows (decode steps); prompts (prefill) always take `F.linear`. Both forms compute the same
sums in another order, so logits may differ in the last bits; greedy tokens are checked equal to two plain models by
tests/test_decode_kernel.py and `bench/app_compare.py`.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

logger = logging.getLogger(__name__)

KERNEL_ENV = "DPO_STUDIO_DECODE_KERNEL"  # auto (default), linear or transposed
LINEAR, TRANSPOSED = "linear", "transposed"
FEW_ROWS = 4  # decode steps of the app's 2-row batch; anything longer is a prompt and takes F.linear
MIN_GAIN = 0.9  # the transposed form must be at least 10 % faster on the model's shapes to be chosen
TIMING_ROWS = 2


def few_row_product(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """`layer(x)` for an `nn.Linear` ([out, in] weight) or GPT-2 `Conv1D` ([in, out]) as `(W @ x^T)^T`."""
    weight = layer.weight if isinstance(layer, nn.Linear) else layer.weight.t()  # [out, in] (a view for Conv1D)
    rows = x.reshape(-1, x.shape[-1])
    out = torch.matmul(weight, rows.t()).t()
    if layer.bias is not None:
        out = out + layer.bias
    return out.reshape(*x.shape[:-1], weight.shape[0])


def takes_few_row_path(kernel: str, layer: nn.Module, x: torch.Tensor) -> bool:
    return (kernel == TRANSPOSED and type(layer) in (nn.Linear, Conv1D, FewRowLinear) and x.dim() >= 2
            and x.shape[:-1].numel() <= FEW_ROWS and not torch.is_grad_enabled())


class FewRowLinear(nn.Linear):
    """`nn.Linear` (the LM head) whose decode steps use the product chosen at load (`decode_kernel`)."""

    decode_kernel = LINEAR

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if takes_few_row_path(self.decode_kernel, self, x):
            return few_row_product(self, x)
        return super().forward(x)


def _as_few_row_head(head: nn.Linear) -> FewRowLinear:
    """A `FewRowLinear` holding the head's own parameters (a tied embedding stays tied)."""
    with torch.device("meta"):
        new = FewRowLinear(head.in_features, head.out_features, bias=head.bias is not None)
    new.weight = head.weight
    if head.bias is not None:
        new.bias = head.bias
    return new


def _best_seconds(fns: dict[str, object], repeats: int) -> dict[str, float]:
    """Best time of each function over `repeats` rounds, the functions alternating within a round (so that other
    work on the machine slows both alike; the best time is the least disturbed one)."""
    for fn in fns.values():
        fn()
        fn()  # warm-up: first calls pack weights / create kernels
    best = dict.fromkeys(fns, float("inf"))
    for _ in range(repeats):
        for name, fn in fns.items():
            started = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - started)
    return best


def time_kernels(layers: list[nn.Module], rows: int = TIMING_ROWS, repeats: int = 9) -> list[KernelTiming]:
    """Seconds one decode step spends in `layers`' products, per weight shape and kernel: each distinct shape timed
    on one of the model's own layers (best of `repeats`, the kernels alternating), times how many layers share it.
    Inputs come from a private generator."""
    generator = torch.Generator().manual_seed(0)
    by_shape: dict[tuple, list[nn.Module]] = {}
    for layer in layers:
        by_shape.setdefault((type(layer).__name__, tuple(layer.weight.shape), layer.weight.dtype), []).append(layer)
    timings = []
    with torch.inference_mode():
        for group in by_shape.values():
            layer = group[0]
            width = layer.in_features if isinstance(layer, nn.Linear) else layer.weight.shape[0]
            x = torch.randn(rows, 1, width, generator=generator, dtype=torch.float32).to(layer.weight)
            best = _best_seconds({LINEAR: lambda: nn.Module.__call__(layer, x),
                                  TRANSPOSED: lambda: few_row_product(layer, x)}, repeats)
            timings.append(KernelTiming(group, {name: len(group) * seconds for name, seconds in best.items()}))
    return timings


@dataclass
class KernelTiming:
    """The layers of one weight shape and the seconds a decode step spends in their products, per kernel."""

    layers: list[nn.Module]
    seconds: dict[str, float]

    @property
    def choice(self) -> str:
        return TRANSPOSED if self.seconds[TRANSPOSED] < MIN_GAIN * self.seconds[LINEAR] else LINEAR


def _decode_layers(model: nn.Module) -> tuple[list[nn.Module], list[nn.Module]]:
    """(the LoRA layers that read `decode_kernel` (`cpu_decode.MaskedLoraLinear`), their base layers): the products
    a mixed decode step runs through them."""
    masked = [m for m in model.modules() if hasattr(type(m), "decode_kernel") and hasattr(m, "get_base_layer")]
    bases = [m.get_base_layer() for m in masked]
    return masked, [b for b in bases if type(b) in (nn.Linear, Conv1D)]


def choose_decode_kernel(model: nn.Module, device: str | torch.device | None = None) -> str:
    """Measure, choose (per weight shape) and install the decode-step product of a loaded serving model (a PeftModel
    built with `MaskedLoraLinear` layers); returns "transposed" when any product takes it, else "linear". Called
    once, at load; CPU only: on CUDA, and where the model is bound for CUDA (`device`; on ZeroGPU the move is deferred
    and no forward may run in the main process), F.linear."""
    masked, bases = _decode_layers(model)
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    head = base.get_output_embeddings()
    forced = os.environ.get(KERNEL_ENV, "auto")
    if forced not in ("auto", LINEAR, TRANSPOSED):
        raise ValueError(f"{KERNEL_ENV}={forced[:20]!r}: expected auto, {LINEAR} or {TRANSPOSED}")
    on_cpu = torch.device(device if device is not None else next(base.parameters()).device).type == "cpu"
    if not masked or not on_cpu:
        return LINEAR
    if type(head) is nn.Linear:
        base.set_output_embeddings(_as_few_row_head(head))
        head = base.get_output_embeddings()
    layers = bases + ([head] if isinstance(head, FewRowLinear) else [])
    wrapper = {id(m.get_base_layer()): m for m in masked}  # the LoRA layer that reads each base layer's choice
    if forced != "auto":
        for layer in layers:
            wrapper.get(id(layer), layer).decode_kernel = forced
        logger.info("decode kernel: %s for all %d decode products (forced by %s)", forced, len(layers), KERNEL_ENV)
        return forced
    timings = time_kernels(layers)
    for timing in timings:
        for layer in timing.layers:
            wrapper.get(id(layer), layer).decode_kernel = timing.choice
    chosen = sum(len(t.layers) for t in timings if t.choice == TRANSPOSED)
    linear, transposed = (sum(t.seconds[k] for t in timings) * 1e3 for k in (LINEAR, TRANSPOSED))
    best = sum(min(t.seconds.values()) for t in timings) * 1e3
    logger.info("decode kernel: (W @ x^T)^T for %d of %d decode products, F.linear for the rest (timed at load on "
                "this model's shapes, %d rows, per step: F.linear %.2f ms, (W @ x^T)^T %.2f ms, chosen %.2f ms)",
                chosen, len(layers), TIMING_ROWS, linear, transposed, best)
    return TRANSPOSED if chosen else LINEAR
