"""Advice when DPO degenerates: the signs (falling held-out chosen log-probs, repetition, length collapse) are found
from metrics.json's figures, the advice reaches metrics.json, report.html and the card, and the remedy it names
measurably reduces the problem on tiny models (the effect is asserted, not the wording)."""

import json
import re
import shlex

import pytest
from huggingface_hub import ModelCard
from test_pipeline import TINY_DEMO
from toy_data import write_toy_pairs

from dpo_studio.config.arguments import parse_config
from dpo_studio.evaluation.degeneration import advice, degeneration_signs, diagnose
from dpo_studio.run_layout import RunMetrics
from dpo_studio.training.pipeline import run

pytestmark = pytest.mark.usefixtures("single_thread")
# Long enough at TINY_DEMO's learning rate for plain DPO to push the chosen replies' own log-probs down.
DEGENERATING = ["--models", "gpt2", *TINY_DEMO, "--num-train-epochs", "6", "--eval-generations", "0"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("degeneration")
    data = write_toy_pairs(root / "pairs.jsonl", 48)

    def train(name: str, *extra: str) -> tuple[RunMetrics, object]:
        out = root / name
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("HF_HUB_OFFLINE", "1")
            [result] = run(*parse_config(["--dataset", str(data), "--output-dir", str(out), *DEGENERATING, *extra]))
        return result.metrics, out / "gpt2"

    plain, plain_dir = train("plain")
    # The remedies, read from the advice itself: the flags it names, applied to the same run.
    flags = re.findall(r"`(--[^`]+)`", plain.degeneration["advice"] or "")
    sft = next(f for f in flags if f.startswith("--loss_type"))
    assert "--learning_rate" in flags
    rpo, _ = train("rpo", *shlex.split(sft))
    slower, _ = train("slower", "--learning_rate", f"{plain.hyperparameters['learning_rate'] / 10:g}")
    return {"plain": (plain, plain_dir), "rpo": rpo, "slower": slower}


def test_plain_dpo_degenerates_and_every_output_says_what_to_do(runs):
    metrics, family = runs["plain"]
    found = metrics.degeneration
    assert "falling chosen log-probs" in found["signs"]
    drop = (metrics.eval_before["logps/chosen"] - metrics.eval_after["logps/chosen"]) / abs(
        metrics.eval_before["logps/chosen"])
    assert found["chosen_logp_rel_drop"] == pytest.approx(drop, abs=1e-6) and drop > 0.02
    on_disk = json.loads((family / "metrics.json").read_text())
    assert on_disk["degeneration"] == found
    sentence = found["advice"]
    assert sentence.count(". ") == 0 and sentence.endswith(".")  # one sentence
    report = (family / "report.html").read_text()
    assert re.search(r"<p class='warn' id='degeneration'>⚠ [^<]*--loss_type sigmoid sft", report)
    card = ModelCard.load(family / "merged" / "README.md").text
    assert sentence in card


def test_the_remedies_reduce_the_fall_of_chosen_log_probs(runs):
    plain = runs["plain"][0].degeneration["chosen_logp_rel_drop"]
    for name in ("rpo", "slower"):
        remedied = runs[name].degeneration
        assert remedied["chosen_logp_rel_drop"] < plain / 2, (name, remedied, plain)
        assert "falling chosen log-probs" not in remedied["signs"] and remedied["advice"] is None
    # The remedies still learn the preference (not a remedy by doing nothing).
    assert runs["rpo"].eval_after["rewards/accuracies"] > runs["rpo"].eval_before["rewards/accuracies"]
    assert runs["rpo"].hyperparameters["loss_type"] == "sigmoid,sft"


HEALTHY = {"repeated_trigram_rate": 0.02, "distinct_2": 0.8, "mean_length_tokens": 40.0, "empty_rate": 0.0}


def test_signs_from_the_generations():
    base = {"eval_before": {"logps/chosen": -100.0}, "eval_after": {"logps/chosen": -100.5},
            "generation_before": HEALTHY}
    assert degeneration_signs(RunMetrics(**base, generation_after=HEALTHY)) == []
    looping = {**HEALTHY, "repeated_trigram_rate": 0.4, "distinct_2": 0.3}
    assert degeneration_signs(RunMetrics(**base, generation_after=looping)) == ["repetition"]
    short = {**HEALTHY, "mean_length_tokens": 8.0}
    assert degeneration_signs(RunMetrics(**base, generation_after=short)) == ["length collapse"]
    longer = {**HEALTHY, "mean_length_tokens": 90.0}  # a drift, but not a collapse (the health warning covers it)
    assert degeneration_signs(RunMetrics(**base, generation_after=longer)) == []
    falling = {**base, "eval_after": {"logps/chosen": -110.0}, "generation_after": short}
    assert degeneration_signs(RunMetrics(**falling)) == ["falling chosen log-probs", "length collapse"]
    assert diagnose(RunMetrics(**base, generation_after=HEALTHY))["advice"] is None
    again = advice(["repetition"], {"loss_type": "sigmoid,sft", "learning_rate": 1e-3, "beta": 0.1})
    assert "--loss_weights 1.0 2.0" in again and "(now 0.001)" in again  # already RPO: weigh the SFT term up
