"""Reference log-probs computed once per base and data: a keyed store saved beside the run.

TRL 1.16's `precompute_ref_log_probs=True` scores every pair with the frozen reference once per trainer, inside
`DPOTrainer.__init__`, one `compute_ref_log_probs(model, batch)` call per batch (unshuffled), and caches the result
only in a per-process temporary folder. A re-run with another beta, learning rate, loss type or number of epochs,
`--resume`, round two on the same pairs and the held-out evaluation of each of them score the same pairs again
(TRL's request #3985 asks for saving them; LLaMA-Factory declined it in #4810).

`ReferenceLogpStore` keeps them in one safetensors file, keyed by everything that determines them
(`reference_key`): the base weights, the tokenizer, the exact rows and their order, the length settings, the
precision, and the model family / trainer settings that change log-probs (model config, reference batch sizes,
`ld_alpha`, the CPU forwards in use, library versions). Inside a matching store each batch is found by a hash of its
token tensors and served to TRL's own precompute pass in place of the forward, so TRL builds its columns, collator
batches and losses exactly as from a fresh computation (bitwise). Any mismatch recomputes everything, with one log
line naming what changed; a store is never reused across precisions (the precision is part of the key).

Written by hand because neither TRL nor datasets offers a reference cache that outlives the process.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

import torch

logger = logging.getLogger(__name__)

STORE_FILE = "reference_logps.safetensors"
KEY_VERSION = 1
_REFERENCE_INPUTS = ("input_ids", "attention_mask", "completion_mask", "encoder_input_ids", "encoder_attention_mask",
                     "decoder_input_ids", "decoder_attention_mask", "labels")


def _sha(chunks) -> str:
    digest = hashlib.sha256()
    for chunk in chunks:
        digest.update(chunk if isinstance(chunk, bytes) else str(chunk).encode())
    return digest.hexdigest()


def _weight_name(name: str) -> str:
    """A base weight's name with PEFT's wrapping removed, so a plain model and its PEFT wrapper hash alike."""
    return name.removeprefix("base_model.model.").replace(".base_layer.", ".")


def weights_hash(model: torch.nn.Module) -> str:
    """sha256 of the reference's weights (LoRA adapters excluded: the reference runs with them disabled)."""
    seen: set[int] = set()

    def chunks():
        for name, tensor in sorted(model.state_dict().items()):
            if "lora_" in name or not isinstance(tensor, torch.Tensor):
                continue
            if tensor.data_ptr() in seen and tensor.numel():  # tied weights (GPT-2's LM head) count once
                continue
            seen.add(tensor.data_ptr())
            tensor = tensor.detach().cpu().contiguous()
            yield f"{_weight_name(name)}:{tensor.dtype}:{tuple(tensor.shape)}"
            yield tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b""

    return _sha(chunks())


def tokenizer_hash(tokenizer: Any) -> str:
    """sha256 of what maps text to ids: the fast tokenizer's full definition (or the vocabulary), special tokens,
    padding and truncation sides."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    body = backend.to_str() if backend is not None else json.dumps(tokenizer.get_vocab(), sort_keys=True)
    extra = {"special": getattr(tokenizer, "special_tokens_map", {}), "padding_side": tokenizer.padding_side,
             "truncation_side": getattr(tokenizer, "truncation_side", None), "class": type(tokenizer).__name__}
    return _sha([body, json.dumps(extra, sort_keys=True, default=str)])


def rows_hash(dataset: Any) -> str | None:
    """sha256 of a split's rows in their order (None: no split)."""
    if dataset is None:
        return None
    if isinstance(dataset, dict):
        return _sha(f"{name}={rows_hash(split)}" for name, split in sorted(dataset.items()))
    return _sha(json.dumps(row, sort_keys=True, ensure_ascii=False, default=str) for row in dataset)


def batch_hash(inputs: dict[str, Any]) -> str:
    """sha256 of the token tensors a reference forward sees (what the values are looked up by inside a store)."""
    def chunks():
        for name in _REFERENCE_INPUTS:
            value = inputs.get(name)
            if isinstance(value, torch.Tensor):
                value = value.detach().cpu().contiguous()
                yield f"{name}:{value.dtype}:{tuple(value.shape)}"
                yield value.numpy().tobytes()

    return _sha(chunks())


@dataclasses.dataclass(frozen=True)
class ReferenceKey:
    """What determines a run's reference log-probs; two runs with equal keys get the same values."""

    base_weights: str
    tokenizer: str
    rows: dict[str, str | None]  # split -> sha256 of its rows in order
    lengths: dict[str, Any]
    precision: str
    settings: dict[str, Any]  # model family / trainer settings that change log-probs

    def as_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True, default=str)

    def differences(self, other: dict[str, Any]) -> list[str]:
        """The fields whose values differ from `other` (a stored key), e.g. ['precision', 'rows']."""
        mine = json.loads(self.as_json())
        return [name for name in mine if mine[name] != other.get(name)]


def _versions() -> dict[str, str]:
    import transformers
    import trl

    from dpo_studio import __version__

    return {"torch": torch.__version__, "transformers": transformers.__version__, "trl": trl.__version__,
            "dpo_studio": __version__}


def reference_key(trainer_name: str, model: torch.nn.Module, tokenizer: Any, args: Any, datasets: dict[str, Any],
                  forwards: dict[str, Any]) -> ReferenceKey:
    """The key of a trainer's reference log-probs.

    Args:
        trainer_name: the trainer class (the family's forward path).
        model: the reference (the base; LoRA weights are left out of its hash).
        args: the resolved `DPOConfig` (lengths, precision, reference batch sizes, `ld_alpha`).
        datasets: split name -> the rows as handed to the trainer.
        forwards: the trainer's switches that change the reference forward (e.g. compact head, buckets).
    """
    from dpo_studio.config.precision import precision_of

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    lengths = {name: getattr(args, name, None) for name in (
        "max_length", "max_prompt_length", "max_completion_length", "truncation_mode", "pad_to_multiple_of",
        "padding_free")}
    reference_batches = [args.precompute_ref_batch_size or args.per_device_train_batch_size,
                         args.precompute_ref_batch_size or args.per_device_eval_batch_size]
    dtypes = sorted({str(p.dtype) for p in base.parameters()})
    settings = {"trainer": trainer_name, "model_config": _sha([base.config.to_json_string(use_diff=False)]),
                "reference_batch_sizes": reference_batches, "ld_alpha": getattr(args, "ld_alpha", None),
                "forwards": forwards, "versions": _versions()}
    precision = f"{precision_of(args).compute} compute on {args.device.type}, weights {','.join(dtypes)}"
    return ReferenceKey(weights_hash(base), tokenizer_hash(tokenizer), {k: rows_hash(v) for k, v in datasets.items()},
                        lengths, precision, settings)


class ReferenceLogpStore:
    """One run's reference log-probs on disk (`DIR/.ref_logps/F/reference_logps.safetensors`), served by batch.

    `open(key)` loads the file when its key equals `key` (else starts empty and logs why); `lookup(inputs)` gives the
    saved (chosen, rejected) of a batch or None; `record` keeps fresh values; `save()` writes the file atomically.
    """

    def __init__(self, folder: str | Path):
        self.path = Path(folder) / STORE_FILE
        self.key: ReferenceKey | None = None
        self.values: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self.served = self.computed = 0
        self.dirty = False

    def open(self, key: ReferenceKey) -> ReferenceLogpStore:
        from safetensors import safe_open

        self.key = key
        if not self.path.exists():
            logger.info("reference log-probs: none saved in %s; computing them once", self.path.parent)
            return self
        try:
            with safe_open(str(self.path), framework="pt") as handle:
                stored = json.loads((handle.metadata() or {}).get("key", "{}"))
                changed = key.differences(stored)
                if not changed:
                    names = {name.rsplit(".", 1)[0] for name in handle.keys()}
                    self.values = {n: (handle.get_tensor(f"{n}.chosen"), handle.get_tensor(f"{n}.rejected"))
                                   for n in names}
        except (OSError, ValueError, json.JSONDecodeError) as exc:  # unreadable: recompute, never fail the run
            changed = [f"unreadable store ({type(exc).__name__})"]
        if changed:
            logger.info("reference log-probs recomputed: %s changed since %s was saved", ", ".join(changed), self.path)
        else:
            logger.info("reference log-probs: reusing %d saved batches from %s", len(self.values), self.path)
        return self

    def lookup(self, inputs: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor] | None:
        found = self.values.get(batch_hash(inputs))
        if found is not None:
            self.served += 1
        return found

    def record(self, inputs: dict[str, Any], chosen: torch.Tensor, rejected: torch.Tensor) -> None:
        self.values[batch_hash(inputs)] = (chosen.detach().cpu().clone(), rejected.detach().cpu().clone())
        self.computed += 1
        self.dirty = True

    def save(self) -> None:
        """Write the store (temporary file, then rename: a crash never leaves a half-written store)."""
        from safetensors.torch import save_file

        if not self.dirty or self.key is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tensors = {}
        for name, (chosen, rejected) in self.values.items():
            tensors[f"{name}.chosen"], tensors[f"{name}.rejected"] = chosen.contiguous(), rejected.contiguous()
        tmp = self.path.with_name(self.path.name + ".tmp")
        save_file(tensors, str(tmp), metadata={"key": self.key.as_json()})
        os.replace(tmp, self.path)
        self.dirty = False
        logger.info("reference log-probs: %d batches saved to %s", len(self.values), self.path)
