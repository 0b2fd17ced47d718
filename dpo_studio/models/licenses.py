"""The license a trained model's card states: the base model's, read from the base model's own card.

A DPO model is a derivative of its base, so its card carries the base's license (GPT-2: mit, T5: apache-2.0). The
license is read once, at training time, from the base's README front matter (local folder or Hub repo, through
huggingface_hub's `ModelCard`) and recorded in metrics.json; cards read it from there. A base whose card cannot be
read or names no license gives `other` / `unknown`, and the card says so in words. The demo's models are built from
scratch by dpo_studio, so they carry the project's license.

The training data's license is read the same way, from the dataset's card (`dataset_license`), and stated beside the
model's: a model trained on data is bound by the data's terms as well as the base's.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from dpo_studio.public_refs import is_local_path

logger = logging.getLogger(__name__)

PROJECT_LICENSE = "apache-2.0"  # dpo_studio's own license (README, "License")
UNKNOWN = {"license": "other", "license_name": "unknown", "source": "unknown"}


def base_model_license(ref: str, *, built_locally: bool = False, token: str | bool | None = None) -> dict[str, Any]:
    """`{"license", ["license_name", "license_link"], "source"}` for the base model `ref` (a local dir or a Hub id).

    `source` is "project" (demo), "base card", or "unknown" (no readable card, or a card without a license).
    """
    if built_locally:
        return {"license": PROJECT_LICENSE, "source": "project"}
    try:
        card = _base_card(ref, token)
    except Exception as exc:  # noqa: BLE001 - offline, missing README, bad YAML: the license is then unknown
        logger.warning("cannot read the license of base model %s (%s): the card will say it is unknown", ref,
                       type(exc).__name__)
        return dict(UNKNOWN)
    found = _license_of(card.data.to_dict() if card is not None else {})
    return {**found, "source": "base card"} if found else dict(UNKNOWN)


def base_lineage(ref: str, *, built_locally: bool = False, token: str | bool | None = None) -> dict[str, Any] | None:
    """`{"previous_round": ref, "its_base": ...}` when the base `ref` is itself a dpo_studio DPO model (its card carries
    the `dpo-studio` tag and relates it to a base by `merge` or `finetune`): this run is a further round on top of it.
    None for any other base, or when its card cannot be read."""
    if built_locally:
        return None
    try:
        card = _base_card(ref, token)
    except Exception:  # noqa: BLE001 - already reported by base_model_license
        return None
    data = card.data.to_dict() if card is not None else {}
    if "dpo-studio" not in (data.get("tags") or []) or data.get("base_model_relation") not in ("merge", "finetune"):
        return None
    its_base = data.get("base_model")
    return {"previous_round": ref, "its_base": its_base[0] if isinstance(its_base, list) else its_base}


def _base_card(ref: str, token: str | bool | None):
    """The base's ModelCard (None for a local folder without README.md)."""
    from huggingface_hub import ModelCard

    if is_local_path(ref):
        readme = Path(ref).expanduser() / "README.md"
        return ModelCard.load(readme, ignore_metadata_errors=True) if readme.is_file() else None
    return ModelCard.load(ref, token=token, ignore_metadata_errors=True)


def dataset_license(ref: str, *, token: str | bool | None = None) -> dict[str, Any]:
    """`{"license", ["license_name", "license_link"], "source"}` of the preference data `ref` (a Hub dataset id or a
    local file). `source`: "dataset card" (read from its README front matter), "project" (the demo's bundled pairs,
    written for dpo_studio), "local file" (a local file states no license), or "unknown" (no readable card)."""
    if not ref:
        return dict(UNKNOWN)
    if is_local_path(ref):
        if _is_bundled(ref):
            return {"license": PROJECT_LICENSE, "source": "project"}
        return {"license": "other", "license_name": "unknown", "source": "local file"}
    from huggingface_hub import DatasetCard

    try:
        card = DatasetCard.load(ref, token=token, ignore_metadata_errors=True)
    except Exception as exc:  # noqa: BLE001 - offline, missing README, bad YAML: the license is then unknown
        logger.warning("cannot read the license of dataset %s (%s): the card will say it is unknown", ref,
                       type(exc).__name__)
        return dict(UNKNOWN)
    found = _license_of(card.data.to_dict())
    return {**found, "source": "dataset card"} if found else dict(UNKNOWN)


def _is_bundled(ref: str) -> bool:
    from importlib import resources

    bundled = Path(str(resources.files("dpo_studio") / "examples")).resolve()
    return bundled in Path(ref).expanduser().resolve().parents


def _license_of(data: dict[str, Any]) -> dict[str, str]:
    """`license` (+ `license_name` / `license_link` for `other`) from a card's front matter, or {} when it has none."""
    license_id = data.get("license")
    if isinstance(license_id, list):  # a few cards list several; the first is the primary one
        license_id = license_id[0] if license_id else None
    if not isinstance(license_id, str) or not license_id.strip():
        return {}
    found = {"license": license_id.strip()}
    for key in ("license_name", "license_link"):  # `license: other` cards name and link their own terms
        if isinstance(data.get(key), str):
            found[key] = data[key]
    return found


def card_license_fields(recorded: dict[str, Any] | None) -> dict[str, str]:
    """ModelCardData keyword arguments for a recorded license (older metrics.json without one: unknown)."""
    recorded = recorded or UNKNOWN
    return {key: recorded[key] for key in ("license", "license_name", "license_link") if recorded.get(key)}
