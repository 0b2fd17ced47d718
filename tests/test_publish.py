"""Publishing, proven over HTTP against the local Hub: real pipeline outputs -> repos -> from_pretrained elsewhere."""

import dataclasses
import hashlib
import json
import os
import re
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch
import yaml
from huggingface_hub import HfApi, ModelCard, ModelCardData, RepoCard
from huggingface_hub.utils import _http as hf_http
from peft import AutoPeftModelForCausalLM, AutoPeftModelForSeq2SeqLM, PeftModel
from test_pipeline import TINY_DEMO
from toy_data import write_toy_pairs
from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM

from dpo_studio.cli.train import run_cli
from dpo_studio.config.arguments import parse_config
from dpo_studio.hub import publish
from dpo_studio.hub.publish import (
    PushAccessError,
    PushTarget,
    parse_repo_ids,
    push_outputs,
    push_requested,
    repo_ids_for,
    upload_repo,
)
from dpo_studio.hub.space import deploy_space
from dpo_studio.outputs.cards import RepoIds, render_card, write_model_cards
from dpo_studio.run_layout import RunMetrics
from dpo_studio.training.pipeline import run

REPO = Path(__file__).resolve().parents[1]
AUTO = {"gpt2": (AutoModelForCausalLM, AutoPeftModelForCausalLM), "t5": (AutoModelForSeq2SeqLM, AutoPeftModelForSeq2SeqLM)}


@pytest.fixture(scope="module")
def outputs(tmp_path_factory):
    """Finished demo outputs of both families (tiny models, one short epoch)."""
    root = tmp_path_factory.mktemp("publish")
    data = write_toy_pairs(root / "pairs.jsonl", 24)
    out = root / "out"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        run(*parse_config(["--dataset", str(data), "--output-dir", str(out), "--models", "gpt2,t5", *TINY_DEMO,
                           "--num-train-epochs", "1", "--demo-sft-epochs", "1"]))
    return out


@pytest.fixture
def no_wait(monkeypatch):
    """Skip the real back-off sleeps (huggingface_hub's and ours) and record ours."""
    ours: list[float] = []
    monkeypatch.setattr(hf_http, "time", types.SimpleNamespace(sleep=lambda s: None))
    monkeypatch.setattr(publish, "_sleep", ours.append)
    return ours


def tree_digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*"))
            if p.is_file()}


def logits(model, family: str) -> torch.Tensor:
    ids = torch.tensor([[5, 17, 42, 7, 99, 3]])
    extra = {"decoder_input_ids": torch.tensor([[0, 11, 23]])} if family == "t5" else {}
    with torch.no_grad():
        return model.eval()(input_ids=ids, **extra).logits


# ------------------------------------------------------------------------------------------------ end to end
@pytest.mark.parametrize("family", ["gpt2", "t5"])
def test_push_then_load_from_fresh_cache_gives_identical_logits(outputs, local_hub, family):
    ns = local_hub.user
    before = tree_digest(outputs)
    pushed = push_outputs(outputs, PushTarget(ns), families=[outputs / family])
    assert set(pushed) == {f"{ns}/{family}-dpo", f"{ns}/{family}-dpo-lora", f"{ns}/{family}-dpo-base"}
    assert tree_digest(outputs) == before, "publishing never modifies the outputs"
    assert not list(Path(local_hub.root).parent.joinpath("hf_home", "hub").glob("models--*")), "cache starts empty"

    auto, auto_peft = AUTO[family]
    local = logits(auto.from_pretrained(outputs / family / "merged"), family)
    merged = logits(auto.from_pretrained(f"{ns}/{family}-dpo"), family)
    adapter = logits(PeftModel.from_pretrained(auto.from_pretrained(f"{ns}/{family}-dpo-base"), f"{ns}/{family}-dpo-lora"),
                     family)
    torch.testing.assert_close(merged, local, atol=1e-5, rtol=0)
    torch.testing.assert_close(adapter, local, atol=1e-5, rtol=0)
    # adapter_config.json points at the pushed base, so PEFT finds the base from the adapter id alone
    assert logits(auto_peft.from_pretrained(f"{ns}/{family}-dpo-lora"), family).allclose(local, atol=1e-5)
    config = json.loads(local_hub.files(f"{ns}/{family}-dpo-lora")["adapter_config.json"])
    assert config["base_model_name_or_path"] == f"{ns}/{family}-dpo-base"

    files = set(local_hub.files(f"{ns}/{family}-dpo"))
    for name in ("model.safetensors", "config.json", "generation_config.json", "tokenizer.json", "prompt_format.json",
                 "dpo_config.json", "metrics.json", "README.md", "plots/loss.png", "plots/accuracy.png"):
        assert name in files, name
    assert {"adapter_model.safetensors", "adapter_config.json", "tokenizer.json", "prompt_format.json",
            "README.md"} <= set(local_hub.files(f"{ns}/{family}-dpo-lora"))
    assert not any(name.endswith(".bin") for name in files)


def test_cards_parse_back_with_real_metrics_and_plots(outputs, local_hub):
    ns = local_hub.user
    push_outputs(outputs, PushTarget(ns), families=[outputs / "gpt2"])
    metrics = json.loads((outputs / "gpt2" / "metrics.json").read_text())
    api = HfApi()
    for repo_id, library in ((f"{ns}/gpt2-dpo", "transformers"), (f"{ns}/gpt2-dpo-lora", "peft")):
        card = ModelCard.load(repo_id)
        card.validate()  # POSTs to the (local) Hub's validate-yaml
        data = card.data
        assert ModelCardData(**data.to_dict()).to_dict() == data.to_dict()  # model-index round trip
        assert data.library_name == library and data.license == "apache-2.0"
        assert data.base_model == f"{ns}/gpt2-dpo-base"
        assert {"dpo", "trl", "peft", "lora"} <= set(data.tags)
        results = {r.metric_type: r.metric_value for r in data.eval_results}
        assert results["rewards/accuracies"] == pytest.approx(metrics["eval_after"]["rewards/accuracies"], abs=1e-6)
        assert results["rewards/margins"] == pytest.approx(metrics["eval_after"]["rewards/margins"], abs=1e-6)
        before, after = metrics["eval_before"], metrics["eval_after"]
        for key in ("rewards/accuracies", "rewards/margins", "loss", "logps/chosen"):
            row = f"| {key} | {before[key]:.4f} | {after[key]:.4f} | {after[key] - before[key]:+.4f} |"
            assert row in card.text, row
        for name, value in metrics["hyperparameters"].items():
            if name in ("beta", "lora_r", "seed"):
                assert f"| {name} | {value:g} |" in card.text
        assert "AutoModelForCausalLM.from_pretrained" in card.text and "PeftModel.from_pretrained" in card.text
        assert '"User: Any tips for staying motivated when running?\\nAssistant:"' in card.text  # the prompt format
        assert "demo toy" in card.text
    repo_files = set(api.list_repo_files(f"{ns}/gpt2-dpo"))
    images = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", ModelCard.load(f"{ns}/gpt2-dpo").text)
    assert sorted(images) == sorted(f"plots/{p}" for p in ("loss.png", "rewards.png", "margins.png", "accuracy.png"))
    assert set(images) <= repo_files
    base_card = ModelCard.load(f"{ns}/gpt2-dpo-base")
    assert base_card.data.library_name == "transformers" and base_card.data.base_model is None


def test_t5_card_uses_seq2seq_classes_and_format(outputs):
    metrics = RunMetrics.load(outputs / "t5" / "metrics.json")
    card = render_card("merged", metrics, repo_ids_for(outputs / "t5", metrics, PushTarget("me")), outputs / "t5")
    assert "AutoModelForSeq2SeqLM.from_pretrained(\"me/t5-dpo\")" in card.text
    assert "AutoModelForCausalLM" not in card.text
    assert '"respond: User: Any tips for staying motivated when running?"' in card.text
    assert card.data.pipeline_tag == "text2text-generation"


def test_optional_evidence_sections_render_only_when_present(outputs, tmp_path):
    family = tmp_path / "gpt2"
    import shutil

    shutil.copytree(outputs / "gpt2", family)
    metrics = RunMetrics.load(family / "metrics.json")
    write_model_cards(family, metrics)
    plain = (family / "merged" / "README.md").read_text()
    assert "Generation evidence" not in plain and "### Samples" not in plain
    assert "AutoModelForCausalLM.from_pretrained(\"gpt2/merged\")" in plain  # local paths before publishing
    assert "](../plots/loss.png)" in plain and (family / "adapter" / "README.md").is_file()
    assert (family / "base" / "README.md").is_file()

    metrics = dataclasses.replace(
        metrics,
        generation_before={"preferred_style_rate": 0.25, "distinct_1": 0.5},
        generation_after={"preferred_style_rate": 0.875, "distinct_1": 0.4375},
        generation_comparison={"dpo_win_rate": 0.8125},
        generation_warnings=["DPO replies are 2.1x longer than base replies"],
        samples=[{"prompt": "Tea | coffee?", "base": "It is recommended.\nIndeed.", "dpo": "Oh, I love tea!"}],
        judge={"heldout_accuracy": 0.9375, "top_features": {"preferred": [["love", 2.5], ["!", 2.0]],
                                                             "rejected": [["it is recommended", 3.0]]}},
    )
    write_model_cards(family, metrics)
    card = (family / "merged" / "README.md").read_text()
    assert "| Preferred style rate (judge p > 0.5) | 0.250 | 0.875 |" in card
    assert "0.812" in card or "0.813" in card  # the win rate row of evidence.card_table_markdown
    assert "DPO replies are 2.1x longer than base replies" in card
    assert "| Tea \\| coffee? | It is recommended.<br>Indeed. | Oh, I love tea! |" in card
    assert "held-out accuracy 0.9375" in card and "`love`" in card and "`it is recommended`" in card


# ------------------------------------------------------------------------------------------------ access checks
def test_push_without_token_fails_fast_and_writes_nothing(tmp_path):
    out = tmp_path / "out"
    env = {k: v for k, v in os.environ.items() if k not in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")}
    env.update(HF_HOME=str(tmp_path / "empty_home"), HF_HUB_OFFLINE="1")
    args = [str(REPO / "train_dpo.py"), "--push", "--hub-namespace", "x", "--output-dir", str(out), "--demo"]
    proc = subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [f"error: {publish.NO_TOKEN}"]
    assert proc.stdout == "" and not out.exists() and not (tmp_path / "empty_home" / "hub").exists()
    # Fail-fast by construction: the check runs before the training stack (torch, TRL) is imported at all.
    timed = subprocess.run([sys.executable, "-X", "importtime", *args], capture_output=True, text=True, env=env)
    imported = {line.split("|")[-1].strip() for line in timed.stderr.splitlines() if line.startswith("import time:")}
    assert timed.returncode == 2 and "huggingface_hub" in imported and not {"torch", "trl", "transformers"} & imported


def test_push_prescan_agrees_with_the_real_parser(tmp_path):
    """The fast pre-scan answers as TrlParser does (flags, spellings, the --config YAML, CLI over config)."""
    push_yaml, plain_yaml = tmp_path / "push.yaml", tmp_path / "plain.yaml"
    push_yaml.write_text("push: true\nmodels: gpt2\n")
    plain_yaml.write_text("models: gpt2\npush_only: null\n")
    out = ["--output_dir", str(tmp_path / "o")]
    cases = [["--push"], ["--push", "false"], ["--push=true"], ["--push", "no"], ["--push_only", "d"],
             ["--push-only=d"], ["--models", "gpt2"], ["--push", "--models", "gpt2"], ["--config", str(push_yaml)],
             ["--config", str(push_yaml), "--push", "false"], ["--config", str(plain_yaml)],
             ["--config", str(plain_yaml), "--push-only", "d"]]
    answers = []
    for argv in cases:
        script_args, _, _ = parse_config([*argv, *out])
        assert push_requested(argv) == bool(script_args.push or script_args.push_only), argv
        answers.append(push_requested(argv))
    assert True in answers and False in answers


def test_bad_token_read_only_token_and_foreign_namespace_exit_2(outputs, local_hub, monkeypatch, capsys):
    base = ["--push-only", str(outputs)]
    monkeypatch.setenv("HF_TOKEN", "hf_not_a_real_token")
    assert run_cli([*base, "--hub-namespace", local_hub.user]) == 2
    assert "rejected the token (HTTP 401)" in capsys.readouterr().err
    local_hub.add_token("hf_read_only", "reader", write=False)
    monkeypatch.setenv("HF_TOKEN", "hf_read_only")
    assert run_cli(base) == 2 and "read-only" in capsys.readouterr().err
    monkeypatch.setenv("HF_TOKEN", local_hub.token)
    assert run_cli([*base, "--hub-namespace", "someone-else"]) == 2
    err = capsys.readouterr().err
    assert "cannot write to namespace(s) someone-else" in err and len(err.strip().splitlines()) == 1
    assert run_cli([*base, "--hub-repo-ids", "gpt2=nonsense"]) == 2
    assert local_hub.count("POST", "/api/repos/create") == 0, "nothing created before the checks pass"


def test_explicit_repo_ids_private_and_namespace_default(outputs, local_hub):
    assert parse_repo_ids("gpt2=me/x, t5=org/y") == {"gpt2": "me/x", "t5": "org/y"}
    with pytest.raises(PushAccessError, match="bad entry 'gpt2'"):
        parse_repo_ids("gpt2")
    target = publish.check_push_access(PushTarget(explicit={"t5": "test-org/my-t5"}, private=True))
    assert target.namespace == local_hub.user  # families without an explicit id go to the token's user
    push_outputs(outputs, target, families=[outputs / "t5"])
    for repo_id in ("test-org/my-t5", "test-org/my-t5-lora", "test-org/my-t5-base"):
        assert local_hub.repos[("model", repo_id)].private
    config = json.loads(local_hub.files("test-org/my-t5-lora")["adapter_config.json"])
    assert config["base_model_name_or_path"] == "test-org/my-t5-base"
    with pytest.raises(PushAccessError, match="families not in"):
        push_outputs(outputs, PushTarget("x", explicit={"llama": "me/l"}))


def test_revision_creates_the_branch_and_uploads_to_it(tmp_path):
    calls = []

    class RecordingApi:
        def __getattr__(self, name):
            return lambda *args, **kwargs: calls.append((name, args, kwargs)) or types.SimpleNamespace(oid="abc")

    (tmp_path / "f").mkdir()
    upload_repo(RecordingApi(), "me/x", tmp_path / "f", PushTarget("me", revision="v2", commit_message="msg"))
    assert [c[0] for c in calls] == ["create_repo", "create_branch", "upload_folder"]
    assert calls[1][2] == {"branch": "v2", "repo_type": "model", "exist_ok": True}
    assert calls[2][2]["revision"] == "v2" and calls[2][2]["commit_message"] == "msg"


# ------------------------------------------------------------------------------------------------ space
def test_space_deploy_names_the_pushed_repos(outputs, local_hub):
    ns = local_hub.user
    target = publish.check_push_access(PushTarget())
    push_outputs(outputs, target)
    deploy_space(f"{ns}/dpo-compare", outputs, target)
    files = local_hub.files(f"{ns}/dpo-compare", repo_type="space")
    assert {"app.py", "requirements.txt", "app_config.yaml", "README.md", "examples/prompts.txt",
            "dpo_studio/__init__.py", "dpo_studio/hub/publish.py"} <= set(files)
    assert not any("__pycache__" in name for name in files)
    config = yaml.safe_load(files["app_config.yaml"])
    for family, label in (("gpt2", "GPT-2"), ("t5", "T5")):
        entry = config["families"][family]
        assert entry == {"label": label, "base": f"{ns}/{family}-dpo-base", "adapter": f"{ns}/{family}-dpo-lora",
                         "merged": f"{ns}/{family}-dpo"}
        for repo_id in set(entry.values()) - {label}:
            assert ("model", repo_id) in local_hub.repos, f"{repo_id} was pushed"
    card = RepoCard.load(f"{ns}/dpo-compare", repo_type="space")
    assert card.data.sdk == "gradio" and card.data.app_file == "app.py" and card.data.pinned is False
    assert card.data.title and card.data.emoji and card.data.colorFrom and card.data.colorTo
    assert files["app.py"] == (REPO / "app.py").read_bytes()
    assert local_hub.repos[("space", f"{ns}/dpo-compare")].sdk == "gradio"


def test_pushed_repos_and_space_hold_no_local_path(outputs, local_hub):
    """Every pushed file, text or binary, is free of the output directory's absolute path and of $HOME."""
    ns = local_hub.user
    target = publish.check_push_access(PushTarget())
    push_outputs(outputs, target)
    deploy_space(f"{ns}/dpo-compare", outputs, target)
    forbidden = {str(outputs.resolve()), str(outputs.parent.resolve()), str(Path.home())}  # data file: outputs.parent
    checked = 0
    for repo_type, repo_id in local_hub.repos:
        for name, data in local_hub.files(repo_id, repo_type=repo_type).items():
            for path in forbidden:
                assert path.encode() not in data, f"{repo_type} {repo_id}/{name} holds the local path {path}"
            checked += 1
    assert checked > 40 and len(local_hub.repos) == 8  # 3 repos per family, the Space and its votes dataset
    for family in ("gpt2", "t5"):
        for repo_id in (f"{ns}/{family}-dpo", f"{ns}/{family}-dpo-lora"):
            settings = json.loads(local_hub.files(repo_id)["dpo_config.json"])
            assert settings["base_model"] == f"{ns}/{family}-dpo-base"
        metrics = json.loads(local_hub.files(f"{ns}/{family}-dpo")["metrics.json"])
        assert metrics["dataset"] == "local:" + "/".join(Path(outputs.parent / "pairs.jsonl").resolve().parts[-2:])


def test_card_license_comes_from_the_base_models_card(outputs, local_hub, tmp_path):
    """GPT-2's card says mit: a DPO model of it says mit; a base without a readable license says so; demo: ours."""
    from dpo_studio.models.licenses import base_model_license

    local_hub.seed_repo("test-user/tiny-gpt2", {"README.md": b"---\nlicense: mit\nlanguage: en\n---\n# tiny\n",
                                               "config.json": b"{}"})
    local_hub.seed_repo("test-user/no-card", {"config.json": b"{}"})
    assert base_model_license("test-user/tiny-gpt2") == {"license": "mit", "source": "base card"}
    assert base_model_license("test-user/no-card")["license"] == "other"
    local_dir = tmp_path / "my-base"
    local_dir.mkdir()
    (local_dir / "README.md").write_text("---\nlicense: other\nlicense_name: my-terms\n---\n", encoding="utf-8")
    assert base_model_license(str(local_dir)) == {"license": "other", "license_name": "my-terms", "source": "base card"}

    metrics = RunMetrics.load(outputs / "gpt2" / "metrics.json")
    assert metrics.base_license == {"license": "apache-2.0", "source": "project"}  # the demo's own models
    for base, license_id, phrase in (("test-user/tiny-gpt2", "mit", "the\n  base model's, as its card states"),
                                     ("test-user/no-card", "other", "**License unknown**")):
        hub_metrics = dataclasses.replace(metrics, base_model=base, base_license=base_model_license(base))
        ids = RepoIds("test-user/tiny-gpt2-dpo", "test-user/tiny-gpt2-dpo-lora", base)
        for kind in ("merged", "adapter"):
            card = render_card(kind, hub_metrics, ids, outputs / "gpt2")
            parsed = ModelCard(str(card))
            assert parsed.data.license == license_id and parsed.data.base_model == base
            assert phrase in parsed.text
            if license_id == "other":
                assert parsed.data.license_name == "unknown"
    # metrics.json written before the license was recorded: looked up on the Hub when the card is rendered
    legacy = RunMetrics.from_dict({key: value for key, value in metrics.to_dict().items() if key != "base_license"})
    legacy.base_model = "test-user/tiny-gpt2"
    ids = RepoIds("test-user/x-dpo", "test-user/x-dpo-lora", "test-user/tiny-gpt2")
    assert ModelCard(str(render_card("merged", legacy, ids, outputs / "gpt2"))).data.license == "mit"


# ------------------------------------------------------------------------------------------------ faults
def test_commit_faults_are_retried_and_the_push_succeeds(outputs, local_hub, no_wait):
    ns = local_hub.user
    # Seven faults: huggingface_hub's own backoff absorbs six tries of the commit POST, then gives up; our retry of
    # the whole upload step (exponential back-off) gets the seventh fault and then the success.
    local_hub.inject_faults("/commit/main", ["500", "503", "drop"], count=7)
    pushed = push_outputs(outputs, PushTarget(ns), families=[outputs / "gpt2"])
    statuses = [r.status for r in local_hub.requests if r.method == "POST" and "/commit/" in r.path]
    assert statuses == [500, 503, "drop", 500, 503, "drop", 500, 200, 200, 200]  # base, then adapter and merged
    assert no_wait == [2.0], "one retry of ours, after the base delay"
    assert local_hub.files(f"{ns}/gpt2-dpo")["metrics.json"] == (outputs / "gpt2" / "metrics.json").read_bytes()
    assert pushed[f"{ns}/gpt2-dpo"] == local_hub.commit_ids(f"{ns}/gpt2-dpo")[-1]


def test_persistent_faults_name_the_push_only_command_and_keep_outputs(outputs, local_hub, no_wait, capsys):
    ns = local_hub.user
    before = tree_digest(outputs)
    local_hub.inject_faults("/commit/main", ["503"], count=1000)
    assert run_cli(["--push-only", str(outputs), "--hub-namespace", ns]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: publishing failed")
    assert err[0].endswith(f"finish with: python train_dpo.py --push-only {outputs} --hub-namespace {ns}")
    assert no_wait == [2.0, 4.0], "bounded: three attempts with exponential back-off"
    assert tree_digest(outputs) == before


def test_second_push_of_unchanged_outputs_creates_no_commit(outputs, local_hub):
    ns = local_hub.user
    first = push_outputs(outputs, PushTarget(ns))
    commits = local_hub.count("POST", "/commit/")
    history = {repo_id: len(HfApi().list_repo_commits(repo_id)) for repo_id in first}
    second = push_outputs(outputs, PushTarget(ns))
    assert second == first and local_hub.count("POST", "/commit/") == commits
    assert {repo_id: len(HfApi().list_repo_commits(repo_id)) for repo_id in first} == history


def test_token_never_written_or_printed(local_hub, tmp_path):
    """The token is set before training starts: nothing the run writes, prints, pushes or caches contains it."""
    planted = "hf_PLANTEDtokenZ9x8c7v6b5n4m3"
    local_hub.add_token(planted, local_hub.user, ("test-org",))
    data, out = write_toy_pairs(tmp_path / "pairs.jsonl", 16), tmp_path / "out"
    env = {**os.environ, "HF_TOKEN": planted, "HF_ENDPOINT": local_hub.url, "HF_HOME": str(tmp_path / "home")}
    proc = subprocess.run([sys.executable, str(REPO / "train_dpo.py"), "--dataset", str(data), "--output-dir",
                           str(out), "--models", "gpt2", *TINY_DEMO, "--num-train-epochs", "1", "--demo-sft-epochs",
                           "1", "--push", "--hub-namespace", "test-org", "--log-level", "debug"],
                          capture_output=True, text=True, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "pushed test-org/gpt2-dpo (commit" in proc.stdout
    assert planted not in proc.stdout + proc.stderr
    pushed = [(repo_id, name, content) for repo_type, repo_id in local_hub.repos
              for name, content in local_hub.files(repo_id, repo_type).items()]
    assert {repo_id for repo_id, _, _ in pushed} >= {"test-org/gpt2-dpo", "test-org/gpt2-dpo-lora"}
    for repo_id, name, content in pushed:
        assert planted.encode() not in content, f"{repo_id}/{name}"
    written = [path for root in (out, tmp_path / "home") for path in root.rglob("*") if path.is_file()]
    assert any(path.name == "metrics.json" for path in written)
    for path in written:
        assert planted.encode() not in path.read_bytes(), f"token stored in {path}"


def test_cli_trains_then_pushes(local_hub, tmp_path, capsys):
    data = write_toy_pairs(tmp_path / "pairs.jsonl", 16)
    out = tmp_path / "out"
    rc = run_cli(["--dataset", str(data), "--output-dir", str(out), "--models", "gpt2", *TINY_DEMO,
                  "--num-train-epochs", "1", "--demo-sft-epochs", "1", "--push", "--hub-repo-ids", "gpt2=test-org/g"])
    assert rc == 0
    stdout = capsys.readouterr().out
    for repo_id in ("test-org/g", "test-org/g-lora", "test-org/g-base"):
        assert f"pushed {repo_id} (commit" in stdout
    assert local_hub.files("test-org/g")["metrics.json"] == (out / "gpt2" / "metrics.json").read_bytes()
    assert ModelCard.load("test-org/g-lora").data.base_model == "test-org/g-base"
