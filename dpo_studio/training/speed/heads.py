"""Log-prob heads that score only the completion tokens: the compact causal forward (TRL's fused forward per length
bucket, a callable the trainer hands TRL in place of the model) and the CPU log-prob head for frozen LM heads."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from typing import Any

import torch

from dpo_studio.training.fused_output import fused_output
from dpo_studio.training.speed.batching import _set_keys, run_buckets
from dpo_studio.training.speed.bf16 import cpu_autocast_dtype, frozen_weight

# Opt-out of the CPU log-prob head (set to "0").
CPU_HEAD_ENV = "DPO_STUDIO_CPU_HEAD"

# Tokens per tile of TRL's chunked log-prob kernel (its own default, 32768, in TRL 1.16): it only bounds the memory of
# one tile of logits; every tile size gives the same values.
LOGPROB_TILE_TOKENS = 32768

_LOGIT_SCALING_ATTRS = ("final_logit_softcapping", "logit_scale", "output_multiplier", "lm_head_multiplier", "logits_scaling")


class CompactCausalForward:
    """Stands in for a causal LM in TRL's `model(**batch, labels=labels, fused_lm_head=True)` calls (`compute_loss`,
    `compute_ref_log_probs`), handed to TRL by `CausalDPOTrainer`; the model itself is not changed.

    That call is answered here: the backbone runs per length bucket on right-padded rows, and the LM head scores only
    labelled positions (TRL does that on CUDA/XPU only). Same values as TRL's fused forward (row outputs of a causal
    model do not depend on other rows or on trailing padding), as the `FusedCausalLMOutput` TRL reads. Every other
    call (generation, `return_outputs`' logits, `shift_labels`, MoE router logits, left padding) goes to `model`
    unchanged.

    Args:
        model: the model TRL was given (PEFT model, accelerate-prepared or not): fallback calls go there.
        base: the `PreTrainedModel` inside it whose `base_model` (backbone) and output embeddings score the batch;
            LoRA layers live inside its modules, so they (and PEFT's disabled-adapter reference) apply.
        outputs: the per-token fields TRL reads (see `fused_output.policy_fields`).
        autocast: context manager factory the direct backbone call runs under (the trainer's `accelerator.autocast`,
            which accelerate's wrapper of `model.forward` would otherwise have entered).
    """

    def __init__(
        self,
        model: Callable[..., Any],
        base: torch.nn.Module,
        outputs: tuple[str, ...] = ("log_probs",),
        autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
    ):
        self.model, self.base, self.outputs, self.autocast = model, base, tuple(outputs), autocast

    @staticmethod
    def supports(base: torch.nn.Module) -> bool:
        """Causal configs without logit scaling/soft-capping (those stay on TRL's path, which applies them)."""
        text_config = base.config.get_text_config()
        return not base.config.is_encoder_decoder and all(
            getattr(text_config, a, None) is None for a in _LOGIT_SCALING_ATTRS
        )

    def __call__(self, *args: Any, **kw: Any) -> Any:
        input_ids, attention_mask, labels = kw.get("input_ids"), kw.get("attention_mask"), kw.get("labels")
        rest = {k: v for k, v in kw.items() if k not in ("fused_lm_head", "labels", "num_items_in_batch")}
        simple = (
            kw.get("fused_lm_head") and not args and labels is not None and input_ids is not None
            and attention_mask is not None and not kw.get("output_router_logits")
            and _set_keys(rest) <= {"input_ids", "attention_mask", "use_cache", "return_dict"}
        )
        if not simple:
            return self.model(*args, **kw)
        backbone = self.base.base_model

        def run(index: torch.Tensor, length: int) -> torch.Tensor:
            return backbone(
                input_ids=input_ids.index_select(0, index)[:, :length],
                attention_mask=attention_mask.index_select(0, index)[:, :length],
                use_cache=False,
            ).last_hidden_state

        with self.autocast():
            hidden = run_buckets(attention_mask, input_ids.size(1), run)
            if hidden is None:  # left padding or holes: TRL's path
                return self.model(*args, **kw)
            hidden = hidden[:, :-1]
            mask = labels[:, 1:] != -100
            per_token = _labelled_log_probs(
                hidden[mask], labels[:, 1:][mask], self.base.get_output_embeddings(), self.outputs
            )
        return fused_output(per_token, mask, kw.get("num_items_in_batch"))


def _labelled_log_probs(
    hidden: torch.Tensor, targets: torch.Tensor, lm_head: torch.nn.Module, outputs: tuple[str, ...]
) -> tuple[torch.Tensor | None, ...]:
    """Per-token values (FUSED_OUTPUT_FIELDS order) of `targets` under `lm_head(hidden)`, both `[N, ...]`: the CPU head
    for a frozen bias-free head on the CPU, else TRL's chunked kernel."""
    if _use_cpu_log_prob_head(hidden, lm_head):
        return CpuLogProbHead.apply(hidden, frozen_weight(lm_head, "weight"), targets, outputs)
    from trl.kernels import ChunkedLogProbFunction

    return ChunkedLogProbFunction.apply(
        hidden, lm_head.weight, lm_head.bias, targets, 1.0, LOGPROB_TILE_TOKENS, None, 1.0, outputs
    )


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
