"""bf16 on the CPU without autocast's per-op copies: frozen weights cast once, no fp32 round trip of LoRA inputs,
eager attention while training. Each patch acts only under CPU bf16 autocast and is opt-out."""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F

# Opt-outs (set to "0"): reused bf16 copies of frozen weights (and the LoRA input round trips), eager attention.
FROZEN_COPIES_ENV = "DPO_STUDIO_FROZEN_COPIES"
EAGER_ATTENTION_ENV = "DPO_STUDIO_BF16_EAGER_ATTENTION"


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


class FrozenCastLinear(torch.nn.Linear):
    """nn.Linear whose frozen weight and bias come from `frozen_weight` under CPU bf16 autocast (same values)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, frozen_weight(self, "weight"), frozen_weight(self, "bias"))


def _frozen_cast_conv1d_class() -> type:
    from transformers.pytorch_utils import Conv1D

    class FrozenCastConv1D(Conv1D):
        """transformers' Conv1D (GPT-2) with its weight and bias as autocast would cast them (see `frozen_weight`)."""

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            size_out = x.size()[:-1] + (self.nf,)
            out = torch.addmm(frozen_weight(self, "bias"), x.view(-1, x.size(-1)), frozen_weight(self, "weight"))
            return out.view(size_out)

    return FrozenCastConv1D


FrozenCastConv1D = _frozen_cast_conv1d_class()


def _same_layer_as(cls: type, module: torch.nn.Module) -> torch.nn.Module:
    # A new submodule of `cls` holding the very same parameters, buffers and hooks (nothing is copied or re-initialised).
    layer = cls.__new__(cls)
    layer.__dict__.update(module.__dict__)
    return layer


def reuse_frozen_weight_casts(model: torch.nn.Module) -> int:
    """Replace the dense layers (nn.Linear, GPT-2's Conv1D) of a CPU model with `FrozenCastLinear`/`FrozenCastConv1D`,
    which take their frozen weights from `frozen_weight` under bf16 autocast (outside it they compute exactly as
    before). Submodules are replaced, not patched; state-dict keys and parameters are unchanged. The output
    embeddings are left alone (the LM head reads them through the log-prob head). Returns how many were replaced."""
    from transformers.pytorch_utils import Conv1D

    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    replaced = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if child is head:
                continue
            cls = FrozenCastConv1D if type(child) is Conv1D else FrozenCastLinear if type(child) is torch.nn.Linear else None
            if cls is not None:
                setattr(parent, name, _same_layer_as(cls, child))
                replaced += 1
    return replaced


def default_attention(model: torch.nn.Module) -> str | None:
    """The attention implementation `model` was loaded with: dpo_studio loads every model with its default one (the
    `attn_implementation` option is refused, see `inherited_flags`), which transformers' public
    `get_correct_attn_implementation(None)` names ("sdpa" where the class and torch support it, else "eager").
    transformers 5 has no public getter of the current one (it lives in `config._attn_implementation`)."""
    getter = getattr(model, "get_correct_attn_implementation", None)
    if getter is None:
        return None
    try:
        return getter(None)
    except (ValueError, ImportError):
        return None


def use_eager_attention(model: torch.nn.Module) -> str | None:
    """Switch a model from SDPA to transformers' eager attention (in place) for bf16 training on the CPU; returns the
    implementation to restore afterwards, or None when nothing changed.

    Why: PyTorch's CPU flash-attention backward in bf16 is slow at chat lengths: in a GPT-2-small bf16 DPO step it took
    ~20% of the time, while eager attention (autocast bf16 matmuls, fp32 softmax) made the whole step ~18% faster. In
    fp32 both measured the same, so fp32 runs keep SDPA. The policy and its reference both run eager (the switch is
    made before the reference pass); off with DPO_STUDIO_BF16_EAGER_ATTENTION=0.
    """
    current = default_attention(model)
    if current != "sdpa" or os.environ.get(EAGER_ATTENTION_ENV, "1") == "0":
        return None
    try:
        model.set_attn_implementation("eager")
    except (AttributeError, ValueError):  # an architecture without an eager path
        return None
    return current
