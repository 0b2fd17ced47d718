"""The license a trained model's card states: the base model's, read from the base model's own card.

A DPO model is a derivative of its base, so its card carries the base's license (GPT-2: mit, T5: apache-2.0). The
license is read once, at training time, from the base's README front matter (local folder or Hub repo, through
huggingface_hub's `ModelCard`) and recorded in metrics.json; cards read it from there. A base whose card cannot be
read or names no license gives `other` / `unknown`, and the card says so in words. The demo's models are built from
scratch by dpo_studio, so they carry the project's license.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from .public_refs import is_local_path

logger = logging.getLogger("dpo_studio")

PROJECT_LICENSE = "apache-2.0"  # dpo_studio's own license (README, "License")
UNKNOWN = {"license": "other", "license_name": "unknown", "source": "unknown"}


def base_model_license(ref: str, *, built_locally: bool = False, token: str | bool | None = None) -> dict[str, Any]:
    """`{"license", ["license_name", "license_link"], "source"}` for the base model `ref` (a local dir or a Hub id).

    `source` is "project" (demo), "base card", or "unknown" (no readable card, or a card without a license).
    """
    if built_locally:
        return {"license": PROJECT_LICENSE, "source": "project"}
    from huggingface_hub import ModelCard

    try:
        if is_local_path(ref):
            readme = Path(ref).expanduser() / "README.md"
            card = ModelCard.load(readme, ignore_metadata_errors=True) if readme.is_file() else None
        else:
            card = ModelCard.load(ref, token=token, ignore_metadata_errors=True)
    except Exception as exc:  # noqa: BLE001 - offline, missing README, bad YAML: the license is then unknown
        logger.warning("cannot read the license of base model %s (%s): the card will say it is unknown", ref,
                       type(exc).__name__)
        return dict(UNKNOWN)
    data = card.data.to_dict() if card is not None else {}
    license_id = data.get("license")
    if isinstance(license_id, list):  # a few cards list several; the first is the primary one
        license_id = license_id[0] if license_id else None
    if not isinstance(license_id, str) or not license_id.strip():
        return dict(UNKNOWN)
    found = {"license": license_id.strip(), "source": "base card"}
    for key in ("license_name", "license_link"):  # `license: other` cards name and link their own terms
        if isinstance(data.get(key), str):
            found[key] = data[key]
    return found


def card_license_fields(recorded: dict[str, Any] | None) -> dict[str, str]:
    """ModelCardData keyword arguments for a recorded license (older metrics.json without one: unknown)."""
    recorded = recorded or UNKNOWN
    return {key: recorded[key] for key in ("license", "license_name", "license_link") if recorded.get(key)}
