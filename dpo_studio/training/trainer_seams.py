"""How this package's forwards reach TRL 1.16's `DPOTrainer` without touching the model: through its PUBLIC methods.

TRL scores a preference batch with `model(**batch, labels=labels, fused_lm_head=True)` in `compute_ref_log_probs(model,
inputs)` and, from `compute_loss(model, inputs, ...)`, in its private `_compute_loss`. `PreferenceForwardSeams`
overrides those two public methods to hand TRL `self.preference_forward(model, fields)` (a callable that answers that
call and passes every other one to `model`) in place of `model`. Nothing is assigned on the model, and nothing
depends on the order of TRL's `__init__`: the reference pass TRL may run inside `__init__` goes through the public
`compute_ref_log_probs` too.

Every batch TRL's loss code gets here carries its reference log-probs: TRL's precomputed columns, or (reference scored
with every batch, `precompute_ref_log_probs=False`) the ones `compute_loss` adds through `compute_ref_log_probs` (the
same no-grad, disabled-adapter, autocast forward as TRL's own, through the callable: TRL's own reference call goes to
`self.model` / `self.ref_model` directly, which a T5 cannot answer). TRL 1.16 reads "reference in the batch" from one
trainer attribute, `precompute_ref_logps` (no public setter): it is set once, at construction, and never flipped; so
`evaluate(dataset)` does not run TRL's upfront reference pass for runs that score the reference per batch.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from dpo_studio.training.fused_output import policy_fields


class PreferenceForwardSeams:
    """Mixed in before `trl.DPOTrainer`; subclasses override `preference_forward`."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        # TRL's switch "reference log-probs are in the batch" (read by `_compute_loss` and `evaluate`): always so here
        # (see the module's doc); TRL's __init__ decides its upfront pass from `args.precompute_ref_log_probs`.
        self.precompute_ref_logps = True

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval"):
        """TRL's `evaluate`, except that a dataset passed in gets no upfront reference pass when the run scores the
        reference with every batch (TRL would run one, keyed without a model hash, since it reads the switch above)."""
        from transformers import Trainer

        if self.args.precompute_ref_log_probs or eval_dataset is None or isinstance(eval_dataset, str):
            return super().evaluate(eval_dataset, ignore_keys, metric_key_prefix)
        datasets = eval_dataset if isinstance(eval_dataset, dict) else {None: eval_dataset}
        metrics: dict[str, float] = {}
        for name, dataset in datasets.items():
            prepared = self._prepare_dataset(dataset, self.processing_class, self.args, name or "eval")
            prefix = metric_key_prefix if name is None else f"{metric_key_prefix}_{name}"
            metrics.update(Trainer.evaluate(self, prepared, ignore_keys, prefix))  # TRL's step: preparation only
        return metrics

    def preference_forward(self, model: Any, fields: tuple[str, ...]) -> Callable[..., Any] | None:
        """The callable TRL gets in place of `model` (asked for the per-token `fields`); None: `model` itself."""
        return None

    def runs_distributed(self, model: Any) -> bool:
        """Whether `model` trains under DDP / FSDP / DeepSpeed: there, calling its modules directly would bypass the
        wrapper's gradient synchronisation (and sharded parameters), so forwards must go through `model` itself."""
        from torch.nn.parallel import DistributedDataParallel

        accelerator = self.accelerator
        return (
            accelerator.num_processes > 1 or isinstance(model, DistributedDataParallel)
            or getattr(self, "is_fsdp_enabled", False) or getattr(self, "is_deepspeed_enabled", False)
        )

    def compute_ref_log_probs(self, model, inputs):
        forward = self.preference_forward(model, ("log_probs",))
        return super().compute_ref_log_probs(model if forward is None else forward, inputs)

    def _training_forward(self, model: Any, fields: tuple[str, ...]) -> Callable[..., Any] | None:
        """`preference_forward`, compiled under `--torch_compile` (accelerate compiles `model`, which the callable
        calls around), made once per model so that compiled code is reused across steps."""
        if not self.args.torch_compile:
            return self.preference_forward(model, fields)
        cache = self.__dict__.setdefault("compiled_preference_forwards", {})
        key = (id(model), fields)
        if key not in cache:
            forward = self.preference_forward(model, fields)
            if forward is not None:
                forward = torch.compile(forward.__call__, backend=self.args.torch_compile_backend or "inductor",
                                        mode=self.args.torch_compile_mode)
            cache[key] = (model, forward)  # the model is kept so that its id is not reused
        return cache[key][1]

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if "ref_chosen_logps" not in inputs:  # reference scored with every batch: through the public method
            reference = self.ref_model if self.ref_model is not None else self.model
            chosen, rejected = self.compute_ref_log_probs(reference, inputs)
            inputs = {**inputs, "ref_chosen_logps": chosen, "ref_rejected_logps": rejected}
        forward = self._training_forward(model, policy_fields(self.args.use_weighting))
        return super().compute_loss(model if forward is None else forward, inputs, return_outputs, num_items_in_batch)

    def base_model_of(self, model: Any) -> torch.nn.Module:
        """The `PreTrainedModel` inside `model` (accelerate's and torch.compile's wrappers and PEFT removed)."""
        inner = self.accelerator.unwrap_model(model, keep_torch_compile=False)
        return inner.get_base_model() if hasattr(inner, "get_base_model") else inner
