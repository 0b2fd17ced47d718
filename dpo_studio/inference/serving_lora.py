"""The LoRA layer the app is built with: PEFT's LoRA `Linear`, with a one-pass path for mixed base/DPO batches.

The app serves base and DPO from one set of weights: row i of a batch runs with adapter `adapter_names[i]`, where
`"__base__"` means adapters off (PEFT's mixed-adapter batches, the public seam). PEFT's path splits every LoRA
layer's input by adapter, runs each sub-batch and scatters the results back; with one adapter plus `"__base__"`
rows (the app's only case) that bookkeeping costs about as much as the LoRA maths on a decode step.
`MaskedLoraLinear` instead runs the LoRA product on all rows with the `"__base__"` rows scaled by zero, accumulated
into the base output by one `addmm`: base rows get the base output plus an exact zero, adapter rows PEFT's sum up
to float order (a `lora_bias=True` adapter's `lora_B` bias included, scaled like the rest of the LoRA output as PEFT
does). Anything else (several adapters, DoRA or other variants, a `lora_A` bias, dropout in training, autograd)
takes PEFT's own forward.

The layers are built by PEFT itself: `serving_lora_config` registers the class for `nn.Linear` and GPT-2's `Conv1D`
through `LoraConfig._register_custom_module`, PEFT's documented hook for custom LoRA layers ("experimental" and
underscored, but the only way to choose the layer class PEFT builds), so `PeftModel.from_pretrained` creates
`MaskedLoraLinear` layers in place of its `Linear` ones; the state dict keys and values are PEFT's.
`DPO_STUDIO_MASKED_LORA=0` builds PEFT's plain `Linear` layers instead.
"""

from __future__ import annotations

import os
from typing import Any

import torch
from peft import LoraConfig
from peft.tuners.lora.layer import Linear as LoraLinear
from torch import nn
from transformers.pytorch_utils import Conv1D

from dpo_studio.inference.decode_kernel import LINEAR, few_row_product, takes_few_row_path
from dpo_studio.names import BASE_ADAPTER

ENV_SWITCH = "DPO_STUDIO_MASKED_LORA"  # "0": PEFT's own mixed-batch path


class MaskedLoraLinear(LoraLinear):
    """PEFT's LoRA `Linear` (also over GPT-2's `Conv1D`) whose mixed base/one-adapter inference batches take one
    masked pass instead of PEFT's split-and-scatter; every other call is PEFT's `forward`."""

    decode_kernel = LINEAR  # set per model by `decode_kernel.choose_decode_kernel` at load

    def __init__(self, base_layer: nn.Module, adapter_name: str, config: LoraConfig, **kwargs: Any) -> None:
        # What PEFT's default dispatcher decides for these two layer types (`dispatch_default`).
        is_conv1d = isinstance(base_layer.get_base_layer() if hasattr(base_layer, "get_base_layer") else base_layer,
                               Conv1D)
        config.fan_in_fan_out = is_conv1d
        super().__init__(base_layer, adapter_name, config=config, is_target_conv_1d_layer=is_conv1d, **kwargs)
        self._row_scales: dict[tuple, torch.Tensor] = {}

    def _masked_adapter(self, x: torch.Tensor, args: tuple, kwargs: dict[str, Any]) -> str | None:
        """The one adapter of a base/adapter mixed batch this class computes itself, else None (PEFT's path)."""
        names = kwargs.get("adapter_names")
        if names is None or args or len(kwargs) != 1 or x.dim() != 3 or len(names) != len(x):
            return None
        adapters = set(names) - {BASE_ADAPTER}
        if len(adapters) != 1 or self.disable_adapters or self.merged or torch.is_grad_enabled():
            return None
        adapter = next(iter(adapters))
        if adapter not in self.lora_A or adapter in self.lora_variant or self.use_dora.get(adapter, False):
            return None
        lora_a = self.lora_A[adapter]
        if not isinstance(self.lora_dropout[adapter], nn.Identity) or x.dtype != lora_a.weight.dtype:
            return None
        return adapter if lora_a.bias is None else None

    def _row_scale(self, names: tuple[str, ...], adapter: str, x: torch.Tensor) -> torch.Tensor:
        """LoRA scaling for the adapter's rows, 0 for the others, [rows, 1, 1]; cached: every step asks."""
        key = (names, adapter, self.scaling[adapter], x.dtype, x.device)
        scale = self._row_scales.get(key)
        if scale is None:
            if len(self._row_scales) > 16:
                self._row_scales.clear()
            values = [self.scaling[adapter] if name == adapter else 0.0 for name in names]
            scale = self._row_scales[key] = torch.tensor(values, dtype=x.dtype, device=x.device).view(-1, 1, 1)
        return scale

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        adapter = self._masked_adapter(x, args, kwargs)
        if adapter is None:
            return super().forward(x, *args, **kwargs)
        base = self.get_base_layer()  # the decode-step product chosen at load (decode_kernel), else F.linear
        result = few_row_product(base, x) if takes_few_row_path(self.decode_kernel, base, x) else self.base_layer(x)
        lora_a, lora_b = self.lora_A[adapter].weight, self.lora_B[adapter].weight  # [r, in], [out, r]
        scale = self._row_scale(tuple(kwargs["adapter_names"]), adapter, x)
        # [batch, seq, r]: base rows scaled by 0, so their output below is the base output + exactly 0
        down = torch.matmul(x, lora_a.t()).mul_(scale)
        out = torch.addmm(result.reshape(-1, result.shape[-1]), down.reshape(-1, down.shape[-1]), lora_b.t())
        out = out.view(result.shape)
        bias = self.lora_B[adapter].bias  # `lora_bias=True`: PEFT adds scaling * (B x + b), so the bias is scaled too
        return out if bias is None else out.add_(scale * bias)


def serving_lora_config(config: LoraConfig) -> LoraConfig:
    """`config` set up for serving: PEFT builds `MaskedLoraLinear` for its Linear/Conv1D targets (unless
    `DPO_STUDIO_MASKED_LORA=0`). Returns the same object."""
    if os.environ.get(ENV_SWITCH, "1") != "0":
        config._register_custom_module({nn.Linear: MaskedLoraLinear, Conv1D: MaskedLoraLinear})
    return config
