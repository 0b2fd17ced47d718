"""The comparison app through its real HTTP API (gradio_client), on tiny local GPT-2/T5 families (no network)."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import pytest
import torch
from gradio_client import Client
from gradio_client.exceptions import AppError
from safetensors.torch import load_file
from tiny_models import BETA, EOS, FAMILIES, build_family, free_port, load_plain, plain_generate
from transformers import AutoTokenizer

from dpo_studio import ui
from dpo_studio.arena.votes import EXPORT_PATH_IN_REPO, VoteStore, export_votes, make_vote
from dpo_studio.data.prompt_format import DECODER_ONLY_FORMAT, ENCODER_DECODER_FORMAT
from dpo_studio.inference.model_sources import (
    AppConfigError,
    FamilySource,
    ModelRegistry,
    apply_env_overrides,
    discover_models_dir,
    load_config_file,
    resolve_sources,
)
from dpo_studio.ui.owner import OwnerPolicy

CAP = 12  # the app's server-side max_new_tokens cap in these tests
MAX_CHARS = 200
PROMPT = "How was your morning?"
REPO_ROOT = Path(__file__).resolve().parent.parent
# Gradio's queue calls pandas APIs that pandas 3 deprecates; not ours to fix.
pytestmark = [
    pytest.mark.filterwarnings("ignore:.*(no_silent_downcasting|copy keyword is deprecated).*"),
    pytest.mark.usefixtures("single_thread"),
]


@pytest.fixture(scope="module")
def served(models_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    """The app on a free port: gpt2 + t5 from the models folder, and a family whose adapter repo does not exist."""
    families = resolve_sources(models_dir=models_dir, environ={})
    families["broken"] = FamilySource(name="broken", label="Broken", base="nobody/no-such-base",
                                      adapter="nobody/no-such-adapter")
    registry = ModelRegistry(families)
    votes_file = tmp_path_factory.mktemp("votes") / "votes.jsonl"
    studio = ui.build_studio(registry, votes_file=votes_file, max_new_tokens_cap=CAP, max_prompt_chars=MAX_CHARS,
                             rng=random.Random(0))
    demo = ui.build_app(studio=studio, example_prompts=[PROMPT])
    port = free_port()
    ui.launch(demo, server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    try:
        yield studio, Client(f"http://127.0.0.1:{port}/", verbose=False)
    finally:
        demo.close()


@pytest.mark.parametrize("family", FAMILIES)
def test_compare_greedy_equals_plain_base_and_merged_generate(served, models_dir, family):
    _, client = served
    base, dpo = client.predict(PROMPT, family, CAP, 0.0, 1.0, 0, api_name="/compare")
    assert base and dpo
    assert base == plain_generate(models_dir / family / "base", family, PROMPT, CAP)
    assert dpo == plain_generate(models_dir / family / "merged", family, PROMPT, CAP)
    assert base != dpo  # the perturbed adapter changes the greedy reply
    label = {"gpt2": "GPT-2", "t5": "T5"}[family]  # labels work as well as names
    assert client.predict(PROMPT, label, CAP, 0.0, 1.0, 0, api_name="/compare") == (base, dpo)


def test_compare_api_has_optional_settings_and_both_families(served, models_dir):
    _, client = served
    info = client.view_api(print_info=False, return_format="dict")["named_endpoints"]["/compare"]
    params = {p["parameter_name"]: p["parameter_has_default"] for p in info["parameters"]}
    assert params == {"prompt": False, "family": True, "max_new_tokens": True, "temperature": True,
                      "top_p": True, "seed": True}
    assert len(info["returns"]) == 2
    base, dpo = client.predict(PROMPT, "gpt2", api_name="/compare")  # defaults: sampling, seed 0
    assert base and dpo
    assert client.predict(PROMPT, "gpt2", api_name="/compare") == (base, dpo)  # same seed, same outputs
    # The settings are used: another seed samples other replies, temperature 0 is plain greedy and differs.
    other_seed = client.predict(PROMPT, "gpt2", ui.DEFAULT_MAX_NEW_TOKENS, ui.DEFAULT_TEMPERATURE, ui.DEFAULT_TOP_P,
                                1, api_name="/compare")
    assert other_seed[0] != base and other_seed[1] != dpo
    greedy = client.predict(PROMPT, "gpt2", ui.DEFAULT_MAX_NEW_TOKENS, 0.0, api_name="/compare")
    assert greedy == (plain_generate(models_dir / "gpt2" / "base", "gpt2", PROMPT, CAP),
                      plain_generate(models_dir / "gpt2" / "merged", "gpt2", PROMPT, CAP))
    assert greedy[0] != base and greedy[1] != dpo

    # "both": one section per family, each the same as asking for that family alone.
    both = client.predict(PROMPT, "both", CAP, 0.0, 1.0, 0, api_name="/compare")
    for side, index in (("base", 0), ("merged", 1)):
        expected = [f"[{label}]\n{plain_generate(models_dir / f / side, f, PROMPT, CAP)}"
                    for f, label in (("gpt2", "GPT-2"), ("t5", "T5"))]
        sections = both[index].split("\n\n")
        assert sections[:2] == expected
        assert sections[2].startswith("[Broken]\n⚠ could not load Broken")


def test_one_set_of_base_weights_per_family(served, models_dir):
    studio, client = served
    registry = studio.registry
    for family in FAMILIES:
        client.predict(PROMPT, family, 2, 0.0, 1.0, 0, api_name="/compare")
        pair = registry.get(family)  # loaded by the request above
        assert pair.shares_weights and pair.base_model is None and pair.dpo_model is None
        storages = {p.data_ptr(): p.numel() for p in pair.model.parameters()}
        base_numel = sum(p.numel() for p in load_plain(models_dir / family / "base", family).parameters())
        lora_numel = sum(t.numel() for t in load_file(models_dir / family / "adapter" / "adapter_model.safetensors")
                         .values())
        assert sum(storages.values()) == base_numel + lora_numel  # not 2 x base: no second copy of the weights
    assert not registry.is_loaded("broken")


def test_input_limits_and_cap(served, models_dir):
    _, client = served
    with pytest.raises(AppError, match="empty"):
        client.predict("   ", "gpt2", api_name="/compare")
    with pytest.raises(AppError, match=f"{MAX_CHARS + 1} characters long; the limit is {MAX_CHARS}"):
        client.predict("x" * (MAX_CHARS + 1), "gpt2", api_name="/compare")
    with pytest.raises(AppError, match="Unknown model family 'gpt-9'"):
        client.predict(PROMPT, "gpt-9", api_name="/compare")
    with pytest.raises(AppError, match="temperature must be >= 0"):
        client.predict(PROMPT, "gpt2", 4, -1.0, api_name="/compare")
    # 10_000 new tokens asked for: the server caps at CAP, i.e. the same as asking for CAP.
    base, dpo = client.predict(PROMPT, "gpt2", 10_000, 0.0, 1.0, 0, api_name="/compare")
    assert (base, dpo) == client.predict(PROMPT, "gpt2", CAP, 0.0, 1.0, 0, api_name="/compare")
    assert base != plain_generate(models_dir / "gpt2" / "base", "gpt2", PROMPT, CAP + 4)


def test_load_error_is_a_message_and_server_still_answers(served):
    studio, client = served
    with pytest.raises(AppError, match=r"could not load Broken \(base=nobody/no-such-base, adapter=nobody/no-such"):
        client.predict(PROMPT, "broken", api_name="/compare")
    assert all(client.predict(PROMPT, "t5", 3, 0.0, api_name="/compare"))
    assert not studio.registry.is_loaded("broken")


def _plain_greedy_ids(model_dir: Path, prompt: str, max_new_tokens: int) -> list[int]:
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    ids = torch.tensor([tokenizer(DECODER_ONLY_FORMAT.prompt_from_text(prompt))["input_ids"]])
    out = load_plain(model_dir, "gpt2").generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                                 max_new_tokens=max_new_tokens, pad_token_id=1, eos_token_id=1)
    return out[0, ids.shape[1]:].tolist()


def _plain_reply_ids(model_dir: Path, family: str, reply: str) -> list[int]:
    """The reply as training writes it, by hand: GPT-2 " reply</s>", T5 "reply</s>" (the decoder's side)."""
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    text = reply if family == "t5" else f" {reply}"
    return tokenizer(text, add_special_tokens=False)["input_ids"] + [EOS]


@torch.inference_mode()
def _plain_logps(model_dir: Path, family: str, prompt: str, completion: list[int]) -> list[float]:
    """log p(completion token | prompt, earlier tokens) under one plain model: one forward, teacher forcing."""
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = load_plain(model_dir, family)
    if family == "t5":
        encoder_ids = torch.tensor([tokenizer(ENCODER_DECODER_FORMAT.prompt_from_text(prompt))["input_ids"]])
        logits = model(input_ids=encoder_ids, labels=torch.tensor([completion])).logits[0]
    else:
        prompt_ids = tokenizer(DECODER_ONLY_FORMAT.prompt_from_text(prompt))["input_ids"]
        logits = model(torch.tensor([prompt_ids + completion])).logits[0][len(prompt_ids) - 1 : -1]
    logps = torch.log_softmax(logits.float(), dim=-1)
    return logps.gather(-1, torch.tensor(completion).unsqueeze(-1)).squeeze(-1).tolist()


def _plain_reward(models_dir: Path, family: str, prompt: str, reply: str) -> tuple[float, float, float]:
    """(Σ log p base, Σ log p DPO, β · difference) of a reply, from plain forwards of the base and merged models."""
    completion = _plain_reply_ids(models_dir / family / "base", family, reply)
    logp_base, logp_dpo = (sum(_plain_logps(models_dir / family / side, family, prompt, completion))
                           for side in ("base", "merged"))
    return logp_base, logp_dpo, BETA * (logp_dpo - logp_base)


def test_what_dpo_changed_equals_plain_forwards(served, models_dir):
    studio, _ = served
    tokenizer = studio.registry.get("gpt2").tokenizer
    _, _, runs = studio.compare(PROMPT, "gpt2", CAP, 0.0, 1.0, 0)
    highlights, summary = studio.changes(runs)
    highlights = highlights["gpt2"]
    # Independently: the sampled ids (from plain generate on the merged model), scored by plain base and merged
    # forwards. Cut at the cap, so no EOS: exactly CAP tokens, whatever re-encoding the text would give.
    sampled = _plain_greedy_ids(models_dir / "gpt2" / "merged", PROMPT, CAP)
    assert len(highlights) == CAP == len(sampled)
    expected = [(tokenizer.decode([t]), d - b) for t, b, d in zip(
        sampled, _plain_logps(models_dir / "gpt2" / "base", "gpt2", PROMPT, sampled),
        _plain_logps(models_dir / "gpt2" / "merged", "gpt2", PROMPT, sampled))]
    assert [t for t, _ in highlights] == [t for t, _ in expected]
    scale = max(abs(r) for _, r in expected)
    assert [s for _, s in highlights] == pytest.approx([r / scale for _, r in expected], abs=1e-4)
    assert f"{sum(r for _, r in expected):+.3f} nats" in summary and "mixed-adapter batch" in summary


@pytest.mark.parametrize("family", FAMILIES)
def test_scores_are_beta_times_plain_log_prob_differences(served, models_dir, family):
    studio, client = served
    reply_a, reply_b = "I am fine, thanks for asking!", "The weather is lovely."
    (base_a, dpo_a, reward_a), (base_b, dpo_b, reward_b) = (_plain_reward(models_dir, family, PROMPT, r)
                                                            for r in (reply_a, reply_b))
    assert abs(reward_a - reward_b) > 1e-3  # the perturbed adapter prefers one of them: "preferred" is decided
    label = {"gpt2": "GPT-2", "t5": "T5"}[family]
    [scores] = client.predict(PROMPT, reply_a, reply_b, label, api_name="/score").values()
    assert scores["beta"] == BETA  # from dpo_config.json
    assert [scores[k] for k in ("logp_base_a", "logp_dpo_a", "logp_base_b", "logp_dpo_b")] == pytest.approx(
        [base_a, dpo_a, base_b, dpo_b], abs=1e-3)
    assert [scores["reward_a"], scores["reward_b"], scores["margin"]] == pytest.approx(
        [reward_a, reward_b, reward_a - reward_b], abs=1e-3 * BETA)
    assert scores["preferred"] == ("a" if reward_a > reward_b else "b")
    rows, verdict = studio.score(PROMPT, reply_a, reply_b, family)  # the tab: the same numbers, rounded
    assert [row[:2] for row in rows] == [[label, "A"], [label, "B"]]
    assert [row[4] for row in rows] == pytest.approx([reward_a, reward_b], abs=1e-3 * BETA)
    assert f"DPO prefers reply {scores['preferred'].upper()}" in verdict


def test_fallback_to_two_models_when_no_adapter_is_published(tmp_path, models_dir):
    dirs = build_family(tmp_path, "gpt2", with_adapter=False)
    registry = ModelRegistry(discover_models_dir(tmp_path))
    studio = ui.Studio(registry, VoteStore(tmp_path / "votes.jsonl"), max_new_tokens_cap=CAP)
    assert "serving two models: no adapter published" in studio.serving_summary()
    base, dpo, runs = studio.compare(PROMPT, "gpt2", CAP, 0.0, 1.0, 0)
    assert not registry.get("gpt2").shares_weights
    assert (base, dpo) == (plain_generate(dirs["base"], "gpt2", PROMPT, CAP),
                           plain_generate(dirs["merged"], "gpt2", PROMPT, CAP))
    assert "serving two models: no adapter published" in studio.changes(runs)[1]


def test_blind_votes_are_appended_and_survive_a_restart(tmp_path, served, models_dir):
    registry = served[0].registry  # the loaded tiny models, a fresh vote file
    votes_file = tmp_path / "votes" / "votes.jsonl"
    studio = ui.Studio(registry, VoteStore(votes_file), max_new_tokens_cap=CAP, rng=random.Random(3))
    assert studio.vote_message(None, "A")[0].startswith("Generate a pair")

    seen_orders = set()
    base = plain_generate(models_dir / "gpt2" / "base", "gpt2", PROMPT, CAP)
    dpo = plain_generate(models_dir / "gpt2" / "merged", "gpt2", PROMPT, CAP)
    for choice in ("A", "B", "tie", "both_bad"):
        round_id, reply_a, reply_b = studio.blind(PROMPT, "gpt2", CAP, 0.0, 1.0, 0)
        assert {reply_a, reply_b} == {base, dpo}
        message, cleared = studio.vote_message(round_id, choice)
        assert cleared is None
        record = VoteStore(votes_file).records()[-1]
        sides = {"A": "base" if reply_a == base else "dpo", "B": "base" if reply_b == base else "dpo"}
        seen_orders.add(sides["A"])
        assert f"Reply A was the **{'DPO' if sides['A'] == 'dpo' else 'base'}** model" in message
        assert record["vote"] == choice and record["family"] == "gpt2" and record["prompt"] == PROMPT
        assert record["settings"] == {"max_new_tokens": CAP, "temperature": 0.0, "top_p": 1.0, "seed": 0}
        assert record["timestamp"]
        if choice in ("A", "B"):
            winner = reply_a if choice == "A" else reply_b
            assert record["chosen"] == winner and record["rejected"] == ({reply_a, reply_b} - {winner}).pop()
            assert record["winner_side"] == choice and record["chosen_model"] == record["outcome"] == sides[choice]
        else:  # not a preference: counted, but no pair to train on
            assert record["chosen"] is None and record["rejected"] is None and record["outcome"] == choice
    assert studio.votes.count == 4
    assert seen_orders == {"base", "dpo"}  # the order really is shuffled (seeded RNG here)

    restarted = VoteStore(votes_file)  # a "restart": a new store on the same file
    assert restarted.count == 4
    lines = votes_file.read_text(encoding="utf-8").splitlines()
    assert [json.loads(line) for line in lines] == restarted.records()
    # A crash that cut the last line: the next vote still lands on its own line, the damaged one is skipped.
    with votes_file.open("a", encoding="utf-8") as handle:
        handle.write('{"prompt": "cut')
    vote = make_vote(prompt="p", replies={"A": "x", "B": "y"}, sides={"A": "dpo", "B": "base"}, choice="B",
                     family="t5", settings={})
    assert VoteStore(votes_file).append(vote) == 5
    assert VoteStore(votes_file).records()[-1] == vote


def test_export_votes_to_local_hub(tmp_path, local_hub):
    from huggingface_hub import HfApi

    store = VoteStore(tmp_path / "votes.jsonl")
    with pytest.raises(ValueError, match="no votes to export yet"):
        export_votes(store, f"{local_hub.user}/votes")
    for winner in ("A", "B"):
        store.append(make_vote(prompt="Hi", replies={"A": "hey!", "B": "Greetings."}, sides={"A": "dpo", "B": "base"},
                               choice=winner, family="gpt2", settings={"seed": 0}))
    repo_id = f"{local_hub.user}/dpo-studio-votes"
    url = export_votes(store, repo_id, private=True)
    assert repo_id in url
    files = local_hub.files(repo_id, repo_type="dataset")
    assert files[EXPORT_PATH_IN_REPO] == (tmp_path / "votes.jsonl").read_bytes()
    assert HfApi().repo_info(repo_id, repo_type="dataset").private
    # Through the UI callback (owner only, to the configured repo): a second export updates the same repo; a bad
    # configured repo id is a message, not a crash.
    owner = OwnerPolicy(frozenset({"export"}))
    studio = ui.Studio(ModelRegistry({"x": FamilySource("x", "X", merged="unused")}), store, owner=owner,
                       export_repo=repo_id)
    assert studio.export("").startswith("Exported 2 votes")
    misconfigured = ui.Studio(studio.registry, store, owner=owner, export_repo="not a repo id!")
    assert misconfigured.export("").startswith("Export failed:")


def test_models_load_from_hub_repo_ids_in_a_config(tmp_path, local_hub, models_dir):
    """The config path (Hub repo ids) on the local Hub server; an unreachable Hub is a message, then a retry."""
    for role in ("base", "adapter"):
        files = {p.name: p.read_bytes() for p in (models_dir / "t5" / role).iterdir()}
        local_hub.seed_repo(f"test-org/t5-{role}", files)
    config = tmp_path / "app_config.yaml"
    config.write_text("families:\n  t5: {base: test-org/t5-base, adapter: test-org/t5-adapter}\n")
    registry = ModelRegistry(resolve_sources(config=config, environ={}))
    studio = ui.Studio(registry, VoteStore(tmp_path / "v.jsonl"), max_new_tokens_cap=CAP)
    local_hub.inject_faults("t5-", ["drop"], count=50)  # the Hub is unreachable for a while
    with pytest.raises(Exception, match="could not load T5"):
        studio.compare(PROMPT, "t5", CAP, 0.0)
    with local_hub._lock:  # the Hub is back (hub_server has no public "clear faults")
        local_hub._faults.clear()
    base, dpo, _ = studio.compare(PROMPT, "t5", CAP, 0.0)  # not cached as failed: it loads now
    assert (base, dpo) == (plain_generate(models_dir / "t5" / "base", "t5", PROMPT, CAP),
                           plain_generate(models_dir / "t5" / "merged", "t5", PROMPT, CAP))
    assert registry.get("t5").shares_weights and registry.get("t5").beta == BETA


def test_config_sources_precedence_and_errors(tmp_path, models_dir, monkeypatch):
    default = load_config_file(REPO_ROOT / "examples" / "app_config.yaml")
    assert {f: (s.label, s.base, s.adapter, s.merged) for f, s in default.items()} == {
        "gpt2": ("GPT-2", "openai-community/gpt2", "dpo-studio/gpt2-dpo-lora", "dpo-studio/gpt2-dpo"),
        "t5": ("T5", "google-t5/t5-small", "dpo-studio/t5-dpo-lora", "dpo-studio/t5-dpo"),
    }
    assert resolve_sources(environ={}, cwd=tmp_path) == default  # no ./app_config.yaml: the example file
    (tmp_path / "app_config.yaml").write_text("families:\n  gpt2: {merged: ./m}\n")
    space = resolve_sources(environ={}, cwd=tmp_path)  # the Space's file in the working directory wins
    assert space["gpt2"].merged == str(tmp_path / "m") and space["gpt2"].label == "GPT-2"
    assert not space["gpt2"].shares_weights

    env = {"DPO_STUDIO_GPT2_ADAPTER": "", "DPO_STUDIO_T5_BASE": "me/t5-base"}
    overridden = apply_env_overrides(default, env)
    assert overridden["gpt2"].adapter is None and overridden["gpt2"].merged == "dpo-studio/gpt2-dpo"
    assert overridden["t5"].base == "me/t5-base"
    with pytest.raises(AppConfigError, match="neither an adapter nor a merged"):
        apply_env_overrides(default, {"DPO_STUDIO_GPT2_ADAPTER": "", "DPO_STUDIO_GPT2_MERGED": ""})

    found = discover_models_dir(models_dir)
    assert list(found) == ["gpt2", "t5"]
    assert found["t5"].base == str(models_dir / "t5" / "base") and found["t5"].adapter.endswith("t5/adapter")

    bad = tmp_path / "bad.yaml"
    for text, message in [
        ("families:\n  gpt2: {base: a/b}\n", "families.gpt2 needs 'adapter' or 'merged'"),
        ("families:\n  gpt2: {adapter: a/b, colour: red}\n", r"families.gpt2: unknown key\(s\) \['colour'\]"),
        ("models: {}\n", r"unknown top-level key\(s\) \['models'\]"),
        ("families: [\n", r"invalid YAML \(line 2\)"),
    ]:
        bad.write_text(text)
        with pytest.raises(AppConfigError, match=message):
            load_config_file(bad)
    with pytest.raises(AppConfigError, match="no trained families found"):
        discover_models_dir(tmp_path)

    with pytest.raises(SystemExit) as exit_info:
        ui.main(["--config", str(tmp_path / "missing.yaml")])
    assert exit_info.value.code == 2



def test_app_py_serves_a_models_dir_on_the_port_from_the_environment(models_dir, tmp_path, monkeypatch):
    """`python app.py --models-dir DIR` (run in-process via runpy), port and host from the environment."""
    import runpy
    import sys

    port = free_port()
    monkeypatch.setenv("GRADIO_SERVER_PORT", str(port))
    monkeypatch.setenv("GRADIO_SERVER_NAME", "127.0.0.1")
    monkeypatch.chdir(tmp_path)  # the default votes file lands here
    launched = {}
    real_launch = ui.server.launch

    def launch_in_background(demo, **kwargs):  # main() blocks in launch(); here the server runs in a thread
        launched.update(kwargs, demo=demo)
        real_launch(demo, **{**kwargs, "prevent_thread_lock": True, "quiet": True})

    monkeypatch.setattr(ui.server, "launch", launch_in_background)
    monkeypatch.setattr(sys, "argv", ["app.py", "--models-dir", str(models_dir)])
    runpy.run_path(str(REPO_ROOT / "app.py"), run_name="__main__")
    try:
        assert (launched["server_name"], launched["server_port"]) == ("127.0.0.1", port)
        base, dpo = Client(f"http://127.0.0.1:{port}/", verbose=False).predict(PROMPT, "t5", CAP, 0.0,
                                                                                api_name="/compare")
        assert (base, dpo) == (plain_generate(models_dir / "t5" / "base", "t5", PROMPT, CAP),
                               plain_generate(models_dir / "t5" / "merged", "t5", PROMPT, CAP))
        round_id, *_ = Client(f"http://127.0.0.1:{port}/", verbose=False).predict(PROMPT, "t5", CAP, 0.0, 1.0, 0,
                                                                                  api_name="/blind")
        Client(f"http://127.0.0.1:{port}/", verbose=False).predict(round_id, "A", api_name="/vote")
        assert len((tmp_path / "votes" / "votes.jsonl").read_text().splitlines()) == 1  # the default votes file
    finally:
        launched["demo"].close()
