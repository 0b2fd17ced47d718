"""The Hub's and TRL's card conventions, as data the card templates render: how a repo relates to its base
(`base_model_relation`), the framework versions a run used, the DPO and TRL citations, and the tracker tags.

TRL writes such a card only from `Trainer.create_model_card` for the folder the Trainer saved (one repo, no adapter /
merged split, no held-out evidence); our cards describe three repos per family, so the same conventions are
rendered here by hand, with TRL's wording and BibTeX.
"""

from __future__ import annotations

from importlib import metadata
from typing import Any

# Name shown on the card -> distribution name; the order and labels of TRL's own cards ("Framework versions"), plus
# PEFT, which every adapter here needs.
FRAMEWORKS = (("TRL", "trl"), ("Transformers", "transformers"), ("PEFT", "peft"), ("PyTorch", "torch"),
              ("Datasets", "datasets"), ("Tokenizers", "tokenizers"))
OPTIONAL_FRAMEWORKS = (("bitsandbytes", "bitsandbytes"), ("Trackio", "trackio"))  # listed when installed

# As TRL's DPOTrainer cites the method (trl.DPOTrainer's paper entry) and as TRL asks to be cited (its card template).
DPO_PAPER = {"title": "Direct Preference Optimization: Your Language Model is Secretly a Reward Model",
             "id": "2305.18290"}
DPO_BIBTEX = """@inproceedings{rafailov2023direct,
    title        = {{Direct Preference Optimization: Your Language Model is Secretly a Reward Model}},
    author       = {Rafael Rafailov and Archit Sharma and Eric Mitchell and Christopher D. Manning and Stefano Ermon and Chelsea Finn},
    year         = 2023,
    booktitle    = {Advances in Neural Information Processing Systems 36: Annual Conference on Neural Information Processing Systems 2023, NeurIPS 2023, New Orleans, LA, USA, December 10 - 16, 2023},
    url          = {http://papers.nips.cc/paper_files/paper/2023/hash/a85b405ed65c6477a4fe8302b5e06ce7-Abstract-Conference.html},
    editor       = {Alice Oh and Tristan Naumann and Amir Globerson and Kate Saenko and Moritz Hardt and Sergey Levine},
}"""
TRL_BIBTEX = """@software{vonwerra2020trl,
  title   = {{TRL: Transformers Reinforcement Learning}},
  author  = {von Werra, Leandro and Belkada, Younes and Tunstall, Lewis and Beeching, Edward and Thrush, Tristan and Lambert, Nathan and Huang, Shengyi and Rasul, Kashif and Gallouédec, Quentin},
  license = {Apache-2.0},
  url     = {https://github.com/huggingface/trl},
  year    = {2020}
}"""
TRACKIO_BADGE = "https://raw.githubusercontent.com/gradio-app/trackio/refs/heads/main/trackio/assets/badge.png"


def framework_versions() -> dict[str, str]:
    """`{distribution: version}` of the libraries this run used, as installed (metrics.json's `versions`)."""
    from dpo_studio import __version__

    found = {"dpo_studio": __version__}
    for _, dist in FRAMEWORKS + OPTIONAL_FRAMEWORKS:
        try:
            found[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return found


def version_rows(recorded: dict[str, str]) -> list[dict[str, str]]:
    """The card's "Framework versions" list: TRL's labels first, in TRL's order, then anything else recorded."""
    labels = dict((dist, label) for label, dist in FRAMEWORKS + OPTIONAL_FRAMEWORKS)
    order = [dist for _, dist in FRAMEWORKS + OPTIONAL_FRAMEWORKS] + sorted(set(recorded) - set(labels))
    return [{"name": labels.get(dist, dist), "value": recorded[dist]} for dist in order if dist in recorded]


def base_model_relation(kind: str, full_dpo: bool) -> str | None:
    """The Hub's `base_model_relation` of a repo to its `base_model`: the LoRA repo is an `adapter`; the merged repo is
    the adapter merged into the base (`merge`), or after full-parameter DPO the base fine-tuned (`finetune`); the
    demo's base repo has no base."""
    if kind == "adapter":
        return "adapter"
    if kind == "merged":
        return "finetune" if full_dpo else "merge"
    return None


def tracker_tags(tracking: dict[str, Any] | None) -> list[str]:
    """TRL's tags for a run tracked with trackio: `trackio`, plus `trackio:<Space url>` (the Hub embeds that Space in
    the model's "Training metrics" tab) when a Space hosts the dashboard."""
    trackio = (tracking or {}).get("trackio")
    if not trackio:
        return []
    return ["trackio", *([f"trackio:{trackio['url']}"] if trackio.get("url") else [])]
