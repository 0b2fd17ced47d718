"""End-to-end pipeline on tiny demo models: DPO learns, outputs are complete, loadable and consistent."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from toy_data import write_toy_pairs
from transformers import AutoModelForCausalLM, AutoTokenizer

from dpo_studio.config.arguments import parse_config
from dpo_studio.training.pipeline import run

REPO = Path(__file__).resolve().parents[1]
TINY_DEMO = [
    "--demo", "--demo-hidden-size", "32", "--demo-layers", "1", "--demo-vocab-size", "300", "--demo-sft-epochs", "2",
    "--learning-rate", "3e-3", "--num-train-epochs", "2", "--per-device-train-batch-size", "8", "--logging-steps", "2",
    "--eval-fraction", "0.25", "--lora-r", "8", "--seed", "0", "--eval-generations", "0",
]


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("pipeline")
    data = write_toy_pairs(root / "pairs.jsonl", 60)
    with open(data, "a", encoding="utf-8") as f:  # one gigantic pair, far beyond max_length: truncated, counted
        f.write(json.dumps({"prompt": "Tell me everything about tea?", "chosen": "Oh, tea! " * 400,
                            "rejected": "Certainly. Tea is a beverage. " * 300}) + "\n")
    out = root / "out"
    args = parse_config(["--dataset", str(data), "--output-dir", str(out), "--models", "gpt2", *TINY_DEMO])
    results = run(*args)
    return out, results


def test_dpo_loss_drops_and_accuracy_rises(demo_run):
    out, results = demo_run
    metrics = json.loads((out / "gpt2" / "metrics.json").read_text())
    before, after = metrics["eval_before"], metrics["eval_after"]
    # Before training the LoRA update is zero: policy == reference, so loss = ln 2 and every reward is 0.
    assert before["loss"] == pytest.approx(0.693147, abs=1e-4)
    assert before["rewards/accuracies"] == 0.0
    assert after["loss"] < before["loss"] - 0.1
    assert after["rewards/accuracies"] > 0.8
    assert after["logps/chosen"] - after["logps/rejected"] > before["logps/chosen"] - before["logps/rejected"]
    train_losses = [e["loss"] for e in metrics["log_history"] if "loss" in e]
    assert train_losses[-1] < train_losses[0]


def test_over_long_pairs_are_truncated_and_counted(demo_run):
    out, _ = demo_run
    truncation = json.loads((out / "gpt2" / "metrics.json").read_text())["truncation"]
    assert sum(split["rows"] for split in truncation.values()) == 1
    assert truncation["train"]["total"] + truncation["eval"]["total"] == 61


def test_output_layout(demo_run):
    out, _ = demo_run
    family = out / "gpt2"
    for path in ("adapter/adapter_model.safetensors", "adapter/adapter_config.json", "adapter/prompt_format.json",
                 "merged/model.safetensors", "merged/config.json", "merged/generation_config.json",
                 "merged/tokenizer.json", "merged/prompt_format.json", "merged/README.md", "adapter/README.md",
                 "base/model.safetensors", "metrics.json", "report.html",
                 "plots/loss.png", "plots/rewards.png", "plots/margins.png", "plots/accuracy.png"):
        assert (family / path).is_file(), path
    assert not list(family.rglob("*.bin")), "only safetensors are written"
    assert not (out / ".work").exists() or not any((out / ".work").iterdir()), "staging/checkpoints cleaned up"
    metrics = json.loads((family / "metrics.json").read_text())
    for key in ("family", "base_model", "dataset", "train_runtime_s", "train_pairs_per_s", "eval_before", "eval_after",
                "log_history", "hyperparameters"):
        assert key in metrics, key
    for name in ("loss", "rewards/accuracies", "rewards/margins", "logps/chosen", "logps/rejected"):
        assert name in metrics["eval_before"] and name in metrics["eval_after"]


def test_merged_loads_generates_and_matches_adapter(demo_run):
    out, _ = demo_run
    family = out / "gpt2"
    tokenizer = AutoTokenizer.from_pretrained(family / "merged")
    merged = AutoModelForCausalLM.from_pretrained(family / "merged").eval()
    base = AutoModelForCausalLM.from_pretrained(family / "base")
    with_adapter = PeftModel.from_pretrained(base, family / "adapter").eval()
    inputs = tokenizer(["User: Any tips about tea?\nAssistant:"], return_tensors="pt")
    with torch.no_grad():
        merged_logits = merged(**inputs).logits
        adapter_logits = with_adapter(**inputs).logits
        generated = merged.generate(**inputs, max_new_tokens=8, do_sample=False)
    assert torch.allclose(merged_logits, adapter_logits, atol=1e-4)
    assert generated.shape[1] > inputs["input_ids"].shape[1]
    with torch.no_grad():
        with with_adapter.disable_adapter():
            base_logits = with_adapter(**inputs).logits
    assert not torch.allclose(base_logits, merged_logits, atol=1e-3), "DPO changed the model"


def test_rerun_refuses_to_overwrite_finished_outputs(demo_run, tmp_path):
    out, _ = demo_run
    data = write_toy_pairs(tmp_path / "pairs.jsonl", 60)
    proc = subprocess.run(
        [sys.executable, "train_dpo.py", "--dataset", str(data), "--output-dir", str(out), "--models", "gpt2", *TINY_DEMO],
        capture_output=True, text=True, cwd=REPO, env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert proc.returncode == 2
    assert "finished outputs already exist" in proc.stderr and "--overwrite" in proc.stderr
