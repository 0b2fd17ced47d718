"""Cards in the Hub's and TRL's conventions, read back as the Hub reads them: metadata parsed by huggingface_hub
(`base_model`, `base_model_relation`, tags), a quick start that runs against the pushed repos, framework versions as
installed, DPO and TRL BibTeX, and the dataset's license beside the model's (read from the dataset's own card)."""

import contextlib
import dataclasses
import io
import json
import re
import shutil
from importlib import metadata

import pytest
from huggingface_hub import ModelCard
from test_pipeline import TINY_DEMO
from toy_data import write_toy_pairs

from dpo_studio.config.arguments import parse_config
from dpo_studio.data.prompt_format import PromptFormat
from dpo_studio.hub.publish import PushTarget, push_outputs
from dpo_studio.models.licenses import base_lineage, dataset_license
from dpo_studio.outputs.cards import RepoIds, render_card
from dpo_studio.run_layout import RunMetrics
from dpo_studio.training.pipeline import run

pytestmark = pytest.mark.usefixtures("single_thread")
HUB_IDS = RepoIds("me/gpt2-dpo", "me/gpt2-dpo-lora", "me/gpt2-dpo-base", base_is_ours=True)


@pytest.fixture(scope="module")
def outputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("cards")
    data = write_toy_pairs(root / "pairs.jsonl", 24)
    out = root / "out"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        run(*parse_config(["--dataset", str(data), "--output-dir", str(out), "--models", "gpt2,t5", *TINY_DEMO,
                           "--num-train-epochs", "1", "--demo-sft-epochs", "1"]))
    return out


def parsed(card: ModelCard) -> tuple[dict, str]:
    """Metadata and body as the Hub reads them: the rendered text parsed again from scratch."""
    again = ModelCard(str(card))
    return again.data.to_dict(), again.text


def section(text: str, heading: str) -> str:
    match = re.search(rf"^## {re.escape(heading)}\n(.*?)(?=^## |\Z)", text, re.S | re.M)
    assert match, f"no '## {heading}' section"
    return match.group(1)


def code_blocks(text: str, lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", text, re.S)


def test_base_model_relation_per_kind(outputs, tmp_path):
    metrics = RunMetrics.load(outputs / "gpt2" / "metrics.json")
    for kind, relation in (("merged", "merge"), ("adapter", "adapter")):
        data, text = parsed(render_card(kind, metrics, HUB_IDS, outputs / "gpt2"))
        assert data["base_model"] == "me/gpt2-dpo-base" and data["base_model_relation"] == relation, kind
        assert f"base_model_relation: {relation}" in text
    data, _ = parsed(render_card("base", metrics, HUB_IDS, outputs / "gpt2"))
    assert "base_model" not in data and "base_model_relation" not in data  # built from config: no base of its own

    full = tmp_path / "gpt2"  # full-parameter DPO: no adapter folder; merged/ is the trained model itself
    shutil.copytree(outputs / "gpt2", full, ignore=shutil.ignore_patterns("adapter"))
    data, _ = parsed(render_card("merged", metrics, HUB_IDS, full))
    assert data["base_model_relation"] == "finetune"


def test_round_two_card_points_to_round_one(outputs, local_hub):
    ns = local_hub.user
    push_outputs(outputs, PushTarget(ns), families=[outputs / "gpt2"])
    lineage = base_lineage(f"{ns}/gpt2-dpo")  # read from round one's pushed card, as a round-two run does
    assert lineage == {"previous_round": f"{ns}/gpt2-dpo", "its_base": f"{ns}/gpt2-dpo-base"}
    assert base_lineage(f"{ns}/gpt2-dpo-base") is None  # the demo base is not a DPO round

    metrics = RunMetrics.load(outputs / "gpt2" / "metrics.json")
    metrics = dataclasses.replace(metrics, base_model=f"{ns}/gpt2-dpo", base_lineage=lineage)
    ids = RepoIds(f"{ns}/gpt2-dpo-round2", f"{ns}/gpt2-dpo-round2-lora", f"{ns}/gpt2-dpo")
    for kind, relation in (("merged", "merge"), ("adapter", "adapter")):
        data, text = parsed(render_card(kind, metrics, ids, outputs / "gpt2"))
        assert data["base_model"] == f"{ns}/gpt2-dpo" and data["base_model_relation"] == relation
        assert "further DPO round" in text and f"`{ns}/gpt2-dpo-base`" in text


def _run_snippet(code: str) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, "<card quick start>", "exec"), {})  # noqa: S102 - the card's own snippet, on local repos
    return out.getvalue()


@pytest.mark.parametrize("family", ["gpt2", "t5"])
def test_quick_start_per_kind_runs_against_the_pushed_repos(outputs, local_hub, family):
    ns = local_hub.user
    push_outputs(outputs, PushTarget(ns), families=[outputs / family])
    fmt = PromptFormat.from_dict(json.loads((outputs / family / "merged" / "prompt_format.json").read_text()))
    for repo, kind in ((f"{ns}/{family}-dpo", "merged"), (f"{ns}/{family}-dpo-lora", "adapter")):
        quick = section(ModelCard.load(repo).text, "Quick start")
        (code,) = code_blocks(quick, "python")
        assert f'"{repo}"' in code
        if kind == "adapter":
            assert "from peft import AutoPeftModelFor" in code
        elif family == "gpt2":
            assert 'pipeline("text-generation", model=' in code
        prompt = json.loads(re.search(r"(?:prompt = |tokenizer\()(\"[^\n]*?\")", code).group(1))
        assert prompt == fmt.prompt_from_text("Any tips for staying motivated when running?")  # the saved format
        assert _run_snippet(code).strip() is not None  # it ran: models load and generate from the pushed repos


def test_versions_citations_and_trl_conventions(outputs):
    metrics = RunMetrics.load(outputs / "t5" / "metrics.json")
    _, text = parsed(render_card("merged", metrics, HUB_IDS, outputs / "t5"))
    versions = section(text, "Framework versions")
    for label, dist in (("TRL", "trl"), ("Transformers", "transformers"), ("PEFT", "peft"), ("PyTorch", "torch"),
                        ("Datasets", "datasets"), ("Tokenizers", "tokenizers")):
        assert f"- {label}: {metadata.version(dist)}" in versions, label
    bib = code_blocks(section(text, "Citations"), "bibtex")
    assert [b.split("{", 1)[0] + "{" + b.split("{", 2)[1].split(",")[0] for b in bib] == [
        "@inproceedings{rafailov2023direct", "@software{vonwerra2020trl"]
    assert all(b.count("{") == b.count("}") for b in bib)  # well-formed entries
    assert "a method introduced in [Direct Preference Optimization" in section(text, "Training")
    assert "https://huggingface.co/papers/2305.18290" in text


def test_dataset_license_read_from_its_card_and_shown_beside_the_models(outputs, local_hub):
    ns = local_hub.user
    local_hub.seed_repo(f"{ns}/prefs", {"README.md": b"---\nlicense: llama3\n---\n# prefs\n"}, repo_type="dataset")
    local_hub.seed_repo(f"{ns}/nolicense", {"README.md": b"# no front matter\n"}, repo_type="dataset")
    assert dataset_license(f"{ns}/prefs") == {"license": "llama3", "source": "dataset card"}
    assert dataset_license(f"{ns}/nolicense")["source"] == "unknown"
    assert dataset_license(str(outputs.parent / "pairs.jsonl"))["source"] == "local file"
    from importlib import resources
    bundled = resources.files("dpo_studio") / "examples" / "data" / "train.jsonl"
    assert dataset_license(str(bundled)) == {"license": "apache-2.0", "source": "project"}

    metrics = RunMetrics.load(outputs / "gpt2" / "metrics.json")
    assert metrics.data["license"]["source"] == "local file"  # recorded by the run
    metrics.dataset, metrics.data["license"] = f"{ns}/prefs", dataset_license(f"{ns}/prefs")
    data, text = parsed(render_card("merged", metrics, HUB_IDS, outputs / "gpt2"))
    limits = section(text, "Limitations")
    assert "License: `apache-2.0`" in limits and "Training data license: `llama3`" in limits
    assert data["license"] == "apache-2.0" and data["datasets"] == [f"{ns}/prefs"]
