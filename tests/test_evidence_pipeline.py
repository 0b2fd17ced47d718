"""Evidence after training: generation figures in metrics.json, report.html in a real browser, cards, the
--evaluate entry point, a planted degenerate DPO model, and finished outputs surviving a crash while writing cards."""

import json
from pathlib import Path

import pytest
from toy_data import write_toy_pairs
from transformers import AutoModelForCausalLM, AutoTokenizer

from dpo_studio.cli.train import run_cli
from dpo_studio.config.arguments import parse_config
from dpo_studio.data.prompt_format import PromptFormat
from dpo_studio.inference.generation import LoadedPair
from dpo_studio.training.pipeline import generation_evidence, prepare_data, run

CHROMIUM = Path("/usr/bin/chromium")
TINY = [
    "--demo", "--models", "gpt2", "--demo-hidden-size", "32", "--demo-layers", "1", "--demo-vocab-size", "300",
    "--demo-sft-epochs", "2", "--learning-rate", "3e-3", "--num-train-epochs", "2", "--per-device-train-batch-size",
    "8", "--eval-fraction", "0.25", "--lora-r", "8", "--seed", "0", "--eval-generations", "6",
    "--generation-max-new-tokens", "12",
]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("evidence")
    data = write_toy_pairs(root / "pairs.jsonl", 60)
    out = root / "out"
    run(*parse_config(["--dataset", str(data), "--output-dir", str(out), *TINY]))
    return data, out


def test_metrics_carry_generation_evidence(trained):
    _, out = trained
    metrics = json.loads((out / "gpt2" / "metrics.json").read_text())
    for side in ("generation_before", "generation_after"):
        figures = metrics[side]
        for key in ("mean_length_tokens", "eos_rate", "distinct_1", "distinct_2", "repeated_trigram_rate",
                    "preferred_style_rate"):
            assert key in figures, key
        assert figures["num_outputs"] == 6
        assert 0 < figures["mean_length_tokens"] <= 12
    assert 0 <= metrics["generation_comparison"]["dpo_win_rate"] <= 1
    assert 3 <= len(metrics["samples"]) <= 5
    assert metrics["judge"]["heldout_accuracy"] > 0.9
    assert isinstance(metrics["generation_warnings"], list)


def test_card_shows_samples_and_the_evidence_table(trained):
    _, out = trained
    metrics = json.loads((out / "gpt2" / "metrics.json").read_text())
    card = (out / "gpt2" / "merged" / "README.md").read_text()
    assert metrics["samples"][0]["prompt"] in card
    assert "Preferred style rate" in card


@pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian chromium (/usr/bin/chromium) is not installed")
def test_report_html_renders_offline_with_its_images(trained, tmp_path):
    from playwright.sync_api import sync_playwright

    _, out = trained
    report = out / "gpt2" / "report.html"
    errors = []
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=str(CHROMIUM), headless=True,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        page = browser.new_page()
        page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
        page.on("requestfailed", lambda request: errors.append(f"request failed: {request.url}"))
        page.goto(report.as_uri())
        widths = page.eval_on_selector_all("img", "imgs => imgs.map(i => i.complete ? i.naturalWidth : 0)")
        tables = page.eval_on_selector_all("table", "ts => ts.length")
        text = page.inner_text("body")
        page.screenshot(path=str(tmp_path / "report.png"), full_page=True)
        browser.close()
    assert len(widths) == 4 and all(w > 0 for w in widths), widths
    assert tables >= 3  # held-out metrics, generation figures, samples
    assert "rewards/accuracies" in text and "Samples" in text
    assert errors == []


def test_evaluate_entry_point_measures_the_dpo_side_it_is_given(trained, tmp_path, capsys):
    """Independent expectations: a "DPO model" that is a copy of the base must measure exactly like the base (same
    seed and settings on both sides), while the trained adapter must not; and both come from --evaluate alone."""
    data, out = trained
    family = out / "gpt2"
    common = ["--evaluate", "--eval-base", str(family / "base"), "--dataset", str(data), "--eval-fraction", "0.25",
              "--seed", "0", "--eval-generations", "6", "--generation-max-new-tokens", "12"]
    assert run_cli([*common, "--eval-merged", str(family / "base"), "--output-dir", str(tmp_path / "same")]) == 0
    assert run_cli([*common, "--eval-adapter", str(family / "adapter"), "--output-dir", str(tmp_path / "dpo")]) == 0
    printed = capsys.readouterr().out
    assert "| Metric | Base | DPO |" in printed and "evaluation written to" in printed
    same = json.loads((tmp_path / "same" / "evaluation.json").read_text())
    dpo = json.loads((tmp_path / "dpo" / "evaluation.json").read_text())
    assert same["shares_weights"] is False and dpo["shares_weights"] is True
    assert same["generation_after"] == same["generation_before"]
    assert all(sample["base"] == sample["dpo"] for sample in same["samples"])
    assert any(sample["base"] != sample["dpo"] for sample in dpo["samples"])
    assert dpo["generation_before"]["num_outputs"] == 6


def test_evaluate_needs_a_dpo_model(tmp_path, capsys):
    data = write_toy_pairs(tmp_path / "pairs.jsonl", 20)
    assert run_cli(["--evaluate", "--dataset", str(data), "--output-dir", str(tmp_path / "e")]) == 2
    assert "--evaluate needs the DPO model" in capsys.readouterr().err


def test_planted_degenerate_dpo_model_triggers_the_health_warning(trained):
    data_file, out = trained
    family = out / "gpt2"
    tokenizer = AutoTokenizer.from_pretrained(family / "merged")
    tokenizer.padding_side = "left"
    base = AutoModelForCausalLM.from_pretrained(family / "base").eval()
    degenerate = AutoModelForCausalLM.from_pretrained(family / "merged").eval()
    repeated = tokenizer(" the", add_special_tokens=False)["input_ids"][0]

    def always_the(module, inputs, logits):  # the "DPO model" says " the" forever and never stops
        logits = logits.clone()
        logits[..., repeated] += 1e4
        return logits

    degenerate.get_output_embeddings().register_forward_hook(always_the)
    pair = LoadedPair(model=None, tokenizer=tokenizer, prompt_format=PromptFormat.load(family / "merged"),
                      is_encoder_decoder=False, base_model=base, dpo_model=degenerate)
    script_args, training_args, _ = parse_config(["--dataset", str(data_file), "--output-dir", str(out), *TINY])
    evidence = generation_evidence(pair, prepare_data(script_args, 0), script_args, seed=0)
    assert evidence["generation_after"]["repeated_trigram_rate"] > 0.8
    assert evidence["generation_after"]["eos_rate"] == 0.0
    warnings = " ".join(evidence["generation_warnings"])
    assert "repeated_trigram_rate" in warnings and "learning rate" in warnings


def test_crash_while_writing_cards_keeps_finished_outputs(trained, monkeypatch):
    data, out = trained
    family = out / "gpt2"
    before = {p: p.read_bytes() for p in (family / "metrics.json", family / "merged" / "model.safetensors")}

    def crash(*args, **kwargs):
        raise RuntimeError("simulated crash while writing model cards")

    monkeypatch.setattr("dpo_studio.outputs.cards.write_model_cards", crash)
    with pytest.raises(RuntimeError, match="simulated crash"):
        run(*parse_config(["--dataset", str(data), "--output-dir", str(out), "--overwrite", *TINY]))
    for path, content in before.items():
        assert path.read_bytes() == content, f"{path} changed"
    assert (family / "adapter" / "adapter_model.safetensors").exists()  # still the complete, earlier folder
