"""The arena loop on tiny models, end to end through the local Hub server:

train (round one) -> push -> the app serves the pushed repos -> blind votes -> export the votes as a Hub dataset ->
`train_dpo.py --models <ns>/gpt2-dpo --dataset <ns>/<votes>` (round two, round one as its reference) -> push ->
the app compares round one (base) against round two (DPO).
"""

from __future__ import annotations

import dataclasses
import json
import random
from pathlib import Path

import pytest
import torch
from huggingface_hub import HfApi
from peft import PeftModel
from test_pipeline import TINY_DEMO
from toy_data import TOPICS, write_toy_pairs
from transformers import AutoModelForCausalLM

from dpo_studio import ui
from dpo_studio.arena.votes import VoteStore, export_votes
from dpo_studio.cli.train import run_cli
from dpo_studio.data.prompt_format import PromptFormat
from dpo_studio.data.reading import load_pairs
from dpo_studio.inference.model_sources import FamilySource, ModelRegistry, discover_models_dir

NEW_TOKENS = 12
# Round two trains a Hub model (not a demo): the same tiny-run settings without the demo's own flags.
TINY_RUN = [a for a in TINY_DEMO if a != "--demo"]
for flag in ("--demo-hidden-size", "--demo-layers", "--demo-vocab-size", "--demo-sft-epochs"):
    i = TINY_RUN.index(flag)
    del TINY_RUN[i : i + 2]
pytestmark = pytest.mark.filterwarnings("ignore:.*(no_silent_downcasting|copy keyword is deprecated).*")


def _logits(model, ids: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return model.eval()(input_ids=ids).logits


def test_votes_train_round_two_from_the_round_one_repo(tmp_path, local_hub, monkeypatch, single_thread):
    # fp32 on every host: the exact checks below (loss log 2 before training, greedy replies of two separately
    # loaded models) hold in fp32; bf16 training is covered by tests/test_precision.py on every host.
    monkeypatch.setenv("DPO_STUDIO_CPU_BF16", "0")
    ns = local_hub.user
    # Round one: the demo, pushed.
    data = write_toy_pairs(tmp_path / "pairs.jsonl", 24)
    round_one = tmp_path / "round1"
    assert run_cli(["--dataset", str(data), "--output-dir", str(round_one), "--models", "gpt2", *TINY_DEMO,
                    "--push", "--hub-namespace", ns]) == 0
    assert "model.safetensors" in local_hub.files(f"{ns}/gpt2-dpo")

    # The Space: serves the pushed repos; visitors vote in blind rounds (A/B picks, ties, both bad).
    registry = ModelRegistry({"gpt2": FamilySource("gpt2", "GPT-2", adapter=f"{ns}/gpt2-dpo-lora")})
    votes_file = tmp_path / "votes" / "votes.jsonl"
    studio = ui.Studio(registry, VoteStore(votes_file), rng=random.Random(0))
    choices = ["A", "B"] * 8 + ["tie", "tie", "both_bad"]
    for i, choice in enumerate(choices):
        round_id, reply_a, reply_b = studio.blind(f"Any tips about {TOPICS[i]}?", "gpt2", NEW_TOKENS, 1.0, 1.0, i)
        studio.vote(round_id, choice)
    records = VoteStore(votes_file).records()
    decided = [r for r in records if r["chosen"] is not None]
    skipped = len(records) - len(decided)
    assert skipped >= 3  # the ties and the both-bad (identical replies count as ties too)

    # The votes file itself loads as training data: the pairs, and the ties / both-bad counted and skipped.
    pairs, report = load_pairs(str(votes_file))
    assert report.votes_without_preference == skipped and report.rows_kept == len(decided) == len(pairs)
    assert [(p.messages[-1][1], p.chosen, p.rejected) for p in pairs] == [
        (r["prompt"], r["chosen"].strip(), r["rejected"].strip()) for r in decided]

    # Exported to the Hub, it loads the same way (through `datasets`).
    export_votes(VoteStore(votes_file), f"{ns}/arena-votes")
    hub_pairs, hub_report = load_pairs(f"{ns}/arena-votes")
    assert hub_pairs == pairs and hub_report.votes_without_preference == skipped

    # A round-one repo whose prompt format is not the default one (e.g. a user's own cue): round two must train
    # with what the repo says, not with the architecture's default.
    custom = PromptFormat(kind="plain-chat", assistant_cue="Friend:")
    HfApi().upload_file(path_or_fileobj=json.dumps(dataclasses.asdict(custom)).encode(),
                        path_in_repo="prompt_format.json", repo_id=f"{ns}/gpt2-dpo")

    # Round two: the round-one merged repo is the model, the votes the data.
    round_two = tmp_path / "round2"
    assert run_cli(["--models", f"{ns}/gpt2-dpo", "--dataset", f"{ns}/arena-votes", "--output-dir",
                    str(round_two), *TINY_RUN, "--push", "--hub-repo-ids", f"gpt2-dpo={ns}/gpt2-dpo-round2"]) == 0
    out = round_two / "gpt2-dpo"
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["base_model"] == f"{ns}/gpt2-dpo"
    assert metrics["data"]["load_reports"][0]["votes_without_preference"] == skipped
    assert metrics["data"]["train_pairs"] + metrics["data"]["eval_pairs"] == len(decided)
    adapter_config = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert adapter_config["base_model_name_or_path"] == f"{ns}/gpt2-dpo"
    # The prompt format and tokenizer are round one's (read from its repo), and saved again.
    assert PromptFormat.load(out / "merged") == PromptFormat.load(out / "adapter") == custom
    assert metrics["prompt_format"]["assistant_cue"] == "Friend:"
    assert (out / "merged" / "tokenizer.json").read_bytes() == (round_one / "gpt2" / "merged" / "tokenizer.json"
                                                                ).read_bytes()
    # Round one is the reference: before any step the new adapter is zero, so the policy equals the reference and
    # DPO's loss is log 2 with zero rewards.
    assert metrics["eval_before"]["loss"] == pytest.approx(0.693147, abs=1e-4)
    assert metrics["eval_before"]["rewards/margins"] == pytest.approx(0.0, abs=1e-5)
    ids = torch.tensor([[5, 17, 42, 7, 99, 3]])
    round_one_model = AutoModelForCausalLM.from_pretrained(round_one / "gpt2" / "merged")
    round_two_peft = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(f"{ns}/gpt2-dpo"),
                                               out / "adapter")
    with round_two_peft.disable_adapter():  # the reference DPO used: round one, exactly
        torch.testing.assert_close(_logits(round_two_peft, ids), _logits(round_one_model, ids), atol=1e-5, rtol=0)
    assert not torch.allclose(_logits(round_two_peft, ids), _logits(round_one_model, ids), atol=1e-4)  # it learnt

    # The app compares round one (base side) with round two (DPO side), both from the Hub.
    pushed = json.loads(local_hub.files(f"{ns}/gpt2-dpo-round2-lora")["adapter_config.json"])
    assert pushed["base_model_name_or_path"] == f"{ns}/gpt2-dpo"
    compare = ui.Studio(ModelRegistry({"gpt2": FamilySource("gpt2", "GPT-2", adapter=f"{ns}/gpt2-dpo-round2-lora")}),
                        VoteStore(tmp_path / "round2-votes.jsonl"))
    base, dpo, _ = compare.compare("Any tips about tea?", "gpt2", NEW_TOKENS, 0.0, 1.0, 0)
    [(expected_base, expected_dpo)] = _greedy_pair(round_one / "gpt2" / "merged", out / "merged",
                                                   "Any tips about tea?")
    assert (base, dpo) == (expected_base, expected_dpo)
    # `python app.py --models-dir round2` gives the same pairing: round one as base, round two as DPO.
    assert discover_models_dir(round_two)["gpt2-dpo"].base == f"{ns}/gpt2-dpo"


def _greedy_pair(round_one: Path, round_two: Path, prompt: str) -> list[tuple[str, str]]:
    """Plain greedy generations of two plain models, decoded like the app (independent of the app's engine)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(round_two)
    fmt = PromptFormat.load(round_two)
    ids = torch.tensor([tokenizer(fmt.prompt_from_text(prompt))["input_ids"]])
    texts = []
    for path in (round_one, round_two):
        with torch.inference_mode():
            out = AutoModelForCausalLM.from_pretrained(path).eval().generate(
                input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=NEW_TOKENS,
                pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id)
        new = out[0, ids.shape[1]:].tolist()
        if tokenizer.eos_token_id in new:
            new = new[: new.index(tokenizer.eos_token_id)]
        texts.append(tokenizer.decode(new, skip_special_tokens=True).strip())
    return [tuple(texts)]


def test_a_votes_file_of_ties_only_names_why_there_are_no_pairs(tmp_path):
    from dpo_studio.arena.votes import make_vote
    from dpo_studio.data.reading import DataError

    store = VoteStore(tmp_path / "votes.jsonl")
    for choice in ("tie", "both_bad"):
        store.append(make_vote(prompt="Hi", replies={"A": "hey", "B": "hello"}, sides={"A": "dpo", "B": "base"},
                               choice=choice, family="gpt2", settings={}))
    with pytest.raises(DataError, match=r"no valid preference pairs \(2 tie / both-bad votes skipped\)"):
        load_pairs(str(store.path))
