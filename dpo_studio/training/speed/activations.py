"""Activation swaps that keep the formula and save elementwise passes."""

from __future__ import annotations

import torch


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
