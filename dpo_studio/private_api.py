"""Every private name of TRL, transformers, PEFT and accelerate that dpo_studio uses, with the reason;
`check_private_api()` (run by tests/test_private_api.py) fails with one line naming the package and installed version
when a release changes one. Overrides of private methods are declared here and live in the trainer classes.

Read through this module: `forget_accelerate_prepare`, `trl_eval_metrics`.
"""

from __future__ import annotations

import importlib
import inspect
from importlib.metadata import version

import torch

# (package, module, class or None, name, reason)
PRIVATE_NAMES: tuple[tuple[str, str, str | None, str, str], ...] = (
    ("transformers", "transformers.trainer", "Trainer", "_get_train_sampler",
     "overridden: length-grouped preference pairs (transformers' grouping needs a `length` column TRL lacks)"),
    ("trl", "trl.trainer.dpo_trainer", "DPOTrainer", "_prepare_dataset",
     "overridden by Seq2SeqDPOTrainer: prompt tokens for the encoder, completions for the decoder"),
    ("peft", "peft.tuners.lora.config", "LoraConfig", "_register_custom_module",
     "cpu_decode.serving_lora_config: PEFT's documented (experimental) hook for custom LoRA layer classes"),
    ("accelerate", "accelerate.accelerator", None, "_is_accelerate_prepared",
     "attribute flag; dropped so a second Trainer applies its own mixed precision (see forget_accelerate_prepare)"),
    ("trl", "trl.trainer.dpo_trainer", "DPOTrainer", "_metrics",
     "read and restored: the per-batch metric values TRL records while scoring a batch; evaluate_pairs weights them "
     "by pairs (TRL reports only the mean of batch means and has no per-pair reduction)"),
)


def _present(module_name: str, owner: str | None, name: str) -> bool:
    module = importlib.import_module(module_name)
    if owner is None:
        return hasattr(module, name) or name in inspect.getsource(module)
    cls = getattr(module, owner)
    return hasattr(cls, name) or name in inspect.getsource(cls)


def check_private_api() -> list[str]:
    """One line per private name the installed libraries no longer have (empty: all present)."""
    return [
        f"{package} {version(package)} no longer has {module}{'.' + owner if owner else ''}.{name} ({reason})"
        for package, module, owner, name, reason in PRIVATE_NAMES
        if not _present(module, owner, name)
    ]


def forget_accelerate_prepare(model: torch.nn.Module) -> None:
    """Remove accelerate's "already prepared" flag from every submodule (it lives in the instance dict)."""
    for module in model.modules():
        if "_is_accelerate_prepared" in vars(module):
            del module._is_accelerate_prepared


def trl_eval_metrics(trainer) -> dict[str, list[float]]:
    """The mutable per-batch "eval" metric lists of a TRL trainer (appended to by each scored batch)."""
    return trainer._metrics["eval"]
