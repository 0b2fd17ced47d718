"""Model cards: huggingface_hub's `ModelCard.from_template` fills `model_cards/<kind>.md` (prose, with the shared
macros of `_shared.md`) from `card_context` (data, computed from metrics.json alone) and `ModelCardData` (metadata).
Cards are deterministic, so re-pushing unchanged outputs creates no commit.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData, constants

from dpo_studio.data.prompt_format import PromptFormat
from dpo_studio.models.licenses import base_model_license, card_license_fields
from dpo_studio.outputs.card_conventions import (
    DPO_BIBTEX,
    DPO_PAPER,
    TRACKIO_BADGE,
    TRL_BIBTEX,
    base_model_relation,
    tracker_tags,
    version_rows,
)
from dpo_studio.public_refs import is_hub_id
from dpo_studio.run_layout import FamilyPaths, RunMetrics

TEMPLATES = resources.files("dpo_studio") / "model_cards"  # package data: works from an installed copy too
EVAL_ROWS = ("rewards/accuracies", "rewards/margins", "loss", "rewards/chosen", "rewards/rejected",
             "logps/chosen", "logps/rejected", "logps/gap")
PLOT_ORDER = {"loss": 0, "rewards": 1, "margins": 2, "accuracy": 3}


@dataclass(frozen=True)
class RepoIds:
    """Where one family goes (Hub ids), or local paths relative to the output dir when `on_hub` is False."""

    merged: str
    adapter: str
    base: str
    base_is_ours: bool = False  # demo: the base is built locally and published by us to `base`
    on_hub: bool = True


def local_repo_ids(family_dir: Path, metrics: RunMetrics) -> RepoIds:
    name = metrics.family or family_dir.name
    demo = FamilyPaths(family_dir).base.is_dir()
    local = FamilyPaths(Path(name))  # the cards of a local run name the sibling folders, as `../merged`
    return RepoIds(local.merged.as_posix(), local.adapter.as_posix(), local.base.as_posix() if demo else metrics.base_model,
                   base_is_ours=demo, on_hub=False)


def _num(value: Any) -> str:
    return "—" if value is None else f"{value:.4f}" if isinstance(value, float) else str(value)


def _hp(value: Any) -> str:
    return ", ".join(map(str, value)) if isinstance(value, (list, tuple)) else f"{value:g}" if isinstance(value, float) else str(value)


def markdown_cell(text: Any) -> str:
    """A markdown table cell of a card: no pipes or newlines may break the row."""
    return str(text).replace("|", "\\|").replace("\r", "").replace("\n", "<br>").strip() or "(empty)"


def card_context(metrics: RunMetrics, ids: RepoIds, family_dir: Path) -> dict[str, Any]:
    """Every template variable of the cards, computed from metrics.json alone (deterministic: no timestamps)."""
    seq2seq = metrics.architecture == "seq2seq"
    before, after = metrics.eval_before, metrics.eval_after
    data = metrics.data
    url = (lambda ref: f"{constants.ENDPOINT}/{ref}") if ids.on_hub else (lambda ref: f"../{ref.split('/', 1)[-1]}")
    ctx: dict[str, Any] = {
        "family": metrics.family, "demo": ids.base_is_ours, "on_hub": ids.on_hub, "seq2seq": seq2seq,
        "has_adapter": FamilyPaths(family_dir).adapter.is_dir(),  # absent after full DPO (--use-peft false)
        "full_dpo": not FamilyPaths(family_dir).adapter.is_dir(),
        "precision": (metrics.precision or {}).get("description"),
        "quantization": metrics.quantization,
        "arch_label": "encoder-decoder (seq2seq) language model" if seq2seq else "decoder-only (causal) language model",
        "auto_class": "AutoModelForSeq2SeqLM" if seq2seq else "AutoModelForCausalLM",
        "trainer": "dpo_studio's Seq2SeqDPOTrainer on TRL's DPOTrainer" if seq2seq else "DPOTrainer",
        "merged_ref": ids.merged, "adapter_ref": ids.adapter, "base_ref": ids.base,
        "merged_url": url(ids.merged), "adapter_url": url(ids.adapter), "base_url": url(ids.base),
        "dataset": metrics.dataset, "eval_dataset": data.get("eval_dataset", "held-out split"),
        "train_pairs": data.get("train_pairs", "?"), "eval_pairs": data.get("eval_pairs", "?"),
        "beta": _hp(metrics.hyperparameters.get("beta", "?")),
        "runtime": f"{metrics.train_runtime_s or 0:.1f}", "pairs_per_s": f"{metrics.train_pairs_per_s or 0:.2f}",
        "eval_rows": [{"name": k, "before": _num(before[k]), "after": _num(after[k]),
                       "change": f"{after[k] - before[k]:+.4f}"} for k in EVAL_ROWS if k in before and k in after],
        "hp_rows": [{"name": k, "value": _hp(v)} for k, v in metrics.hyperparameters.items()],
        "version_rows": version_rows(metrics.versions),
        "dpo_paper": DPO_PAPER, "dpo_bibtex": DPO_BIBTEX, "trl_bibtex": TRL_BIBTEX,
        "dataset_license": data.get("license"), "lineage": metrics.base_lineage,
        "trackio": (metrics.tracking or {}).get("trackio"), "trackio_badge": TRACKIO_BADGE,
        "advice": (metrics.degeneration or {}).get("advice"),
        "plots": [{"title": p.stem.capitalize(), "path": f"{'' if ids.on_hub else '../'}{FamilyPaths.PLOTS_DIR}/{p.name}"}
                  for p in sorted(FamilyPaths(family_dir).plots.glob("*.png"), key=lambda p: (PLOT_ORDER.get(p.stem, 9), p.name))],
        "warnings": metrics.generation_warnings or [],
        "samples": [{k: markdown_cell(s.get(k, "")) for k in ("prompt", "base", "dpo")} for s in metrics.samples or []][:6],
    }
    # Outputs from before the license was recorded: look it up now (demo: the project's own).
    ctx["license"] = metrics.base_license or base_model_license(metrics.base_model,
                                                                      built_locally=ids.base_is_ours)
    fmt = PromptFormat.from_dict(metrics.prompt_format)
    ctx["example_prompt"] = json.dumps(fmt.prompt_from_text("Any tips for staying motivated when running?"))
    ctx["prompt_format_json"] = json.dumps(metrics.prompt_format, sort_keys=True)
    if metrics.generation_before is not None and metrics.generation_after is not None:
        from dpo_studio.evaluation.evidence import (
            card_table_markdown,  # numpy-backed: imported only when there is evidence
        )

        ctx["generation_table"] = card_table_markdown({"generation_before": metrics.generation_before,
            "generation_after": metrics.generation_after, "comparison": metrics.generation_comparison or {}})
    if judge := metrics.judge:
        top = judge.get("top_features", {})
        cues = {side: ", ".join(f"`{markdown_cell(g if isinstance(g, str) else ' '.join(g))}`" for g, _ in top.get(side, [])[:8])
                or "—" for side in ("preferred", "rejected")}
        ctx["judge"] = {"accuracy": _num(judge.get("heldout_accuracy")), **cues}
    return ctx


def render_card(kind: str, metrics: RunMetrics, ids: RepoIds, family_dir: Path) -> ModelCard:
    """Render `model_cards/<kind>.md` (kind: merged, adapter, base) with the shared macros of `_shared.md`."""
    ctx = card_context(metrics, ids, family_dir)
    task = "text2text-generation" if ctx["seq2seq"] else "text-generation"
    name = {"merged": ids.merged, "adapter": ids.adapter, "base": ids.base}[kind]
    if not ids.on_hub:  # local folders: name the repos they will become
        name = f"{metrics.family}-dpo" + {"merged": "", "adapter": "-lora", "base": "-base"}[kind]
    dataset = metrics.dataset or ""
    eval_results = [
        EvalResult(task_type=task, dataset_type=dataset if is_hub_id(dataset) else "local-preference-pairs",
                   dataset_name=Path(dataset).name or "preference pairs", dataset_split="held-out",
                   metric_type=metric, metric_name=label, metric_value=round(float(metrics.eval_after[metric]), 6))
        for metric, label in (("rewards/accuracies", "Held-out reward accuracy"),
                              ("rewards/margins", "Held-out reward margin")) if metric in metrics.eval_after
    ]
    # base_model metadata only for a Hub id (a local demo base such as "gpt2/base" is a path)
    base_meta = ids.base if kind != "base" and (ids.on_hub or not ids.base_is_ours) and is_hub_id(ids.base) else None
    relation = base_model_relation(kind, ctx["full_dpo"]) if base_meta else None
    data = ModelCardData(
        base_model=base_meta, base_model_relation=relation, datasets=[dataset] if is_hub_id(dataset) else None, **card_license_fields(ctx["license"]),
        library_name="peft" if kind == "adapter" else "transformers", pipeline_tag=task,
        tags=["dpo", "trl", "peft", "lora", metrics.model_type or "", "dpo-studio",
              *(["demo", "toy-model"] if ids.base_is_ours else []), *tracker_tags(metrics.tracking)],
        # model-index needs a model name; the demo base has no evaluation of its own
        **({} if kind == "base" else {"model_name": name.split("/")[-1], "eval_results": eval_results}),
    )
    title = {"merged": f"{name} (DPO, merged)", "adapter": f"{name} (DPO LoRA adapter)", "base": f"{name} (demo base)"}
    template = (TEMPLATES / "_shared.md").read_text(encoding="utf-8") + (TEMPLATES / f"{kind}.md").read_text(encoding="utf-8")
    return ModelCard.from_template(data, template_str=template, title=title[kind], kind=kind, relation=relation, **ctx)


def write_model_cards(family_dir: Path, metrics: RunMetrics, repo_ids: RepoIds | None = None) -> None:
    """Write README.md into `family_dir/merged`, `/adapter` and `/base` (demo); local paths when repo_ids is None."""
    family_dir = Path(family_dir)
    ids = repo_ids or local_repo_ids(family_dir, metrics)
    paths = FamilyPaths(family_dir)
    for kind, folder in (("merged", paths.merged), ("adapter", paths.adapter), ("base", paths.base)):
        if folder.is_dir() and (kind != "base" or ids.base_is_ours):
            write_unlinked(folder / "README.md", str(render_card(kind, metrics, ids, family_dir)))


def write_unlinked(path: Path, text: str) -> None:
    """Write `text` to a new file at `path` (a staged upload file may be a hard link into the outputs)."""
    path.unlink(missing_ok=True)  # never write through a hard link into the outputs
    path.write_text(text, encoding="utf-8")
