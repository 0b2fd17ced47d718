"""Names several rooms must agree on: files training writes next to a model, PEFT's adapter names, family labels,
the output folder's name per family (its layout: run_layout.py) (light: the app reads them without the training stack)."""

from __future__ import annotations

import re

DPO_CONFIG_FILE = "dpo_config.json"  # {"beta": ..., "base_model": ...} written next to the adapter / merged model
ADAPTER_WEIGHTS_FILE = "adapter_model.safetensors"
BASE_ADAPTER = "__base__"  # PEFT's adapter name for "adapters off" rows of a mixed batch
DPO_ADAPTER = "default"  # the name PeftModel.from_pretrained gives the loaded adapter
FAMILY_LABELS = {"gpt2": "GPT-2", "t5": "T5"}  # display names of the short family names
DEFAULT_MODEL_IDS = {"gpt2": "openai-community/gpt2", "t5": "google-t5/t5-small"}  # the short names' base models
PUBLISHED_REPOS = {"gpt2": "dpo-studio/gpt2-dpo", "t5": "dpo-studio/t5-dpo"}  # the app's defaults; adapters at `-lora`


def family_label(family: str) -> str:
    """`gpt2` -> `GPT-2`; any other family name is its own label."""
    return FAMILY_LABELS.get(family.lower(), family)


def family_dir_name(family: str) -> str:
    """Output folder name for a family: `gpt2`, `t5`, or a filesystem-safe form of a repo id / path."""
    name = family.rstrip("/").split("/")[-1]
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name) or "model"
