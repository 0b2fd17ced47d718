"""Held-out metrics are means over pairs (accuracy = k/n), for both families, with an uneven last batch.

The expected values come from plain transformers forwards of the merged (policy) and base (reference) models: the
summed log-probability of each completion given its prompt, no trainer and no TRL.
"""

import math

import pytest
import torch
from peft import set_peft_model_state_dict
from safetensors.torch import load_file
from tiny_models import BETA, build_family
from toy_data import toy_rows
from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer
from trl import DPOConfig

from dpo_studio.data.reading import PreferencePair, to_dataset
from dpo_studio.evaluation.held_out import evaluate_pairs
from dpo_studio.models.families import architecture_of, prepare_tokenizer
from dpo_studio.training.pipeline import build_trainer

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(autouse=True)
def fp32(monkeypatch):
    """fp32 on every host (auto precision, precision.choose_precision, would pick bf16 on CPUs with native bf16)."""
    monkeypatch.setenv("DPO_STUDIO_CPU_BF16", "0")

N_PAIRS, EVAL_BATCH = 7, 3  # batches of 3, 3 and 1 pairs


def _pairs() -> list[PreferencePair]:
    rows = toy_rows(N_PAIRS)
    return [PreferencePair((("user", r["prompt"]),), r["chosen"], r["rejected"]) for r in rows]


@torch.no_grad()
def _completion_logp_causal(model, tokenizer, prompt: str, completion: str) -> float:
    """log p(completion + EOS | prompt): the completion starts where the tokenised prompt and prompt+completion part."""
    prompt_ids = tokenizer(prompt)["input_ids"]
    full_ids = tokenizer(prompt + completion + tokenizer.eos_token)["input_ids"]
    start = 0
    while start < min(len(prompt_ids), len(full_ids)) and prompt_ids[start] == full_ids[start]:
        start += 1
    ids = torch.tensor([full_ids])
    log_probs = model(input_ids=ids).logits[0, :-1].float().log_softmax(-1)
    targets = ids[0, 1:]
    token_logps = log_probs.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    return float(token_logps[start - 1:].sum())


@torch.no_grad()
def _completion_logp_seq2seq(model, tokenizer, prompt: str, completion: str) -> float:
    """log p(completion + EOS | prompt) with the prompt in the encoder and the completion teacher-forced."""
    enc = torch.tensor([tokenizer(prompt)["input_ids"]])
    labels = torch.tensor([tokenizer(completion, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]])
    logits = model(input_ids=enc, labels=labels).logits[0].float()
    return float(logits.log_softmax(-1).gather(-1, labels[0].unsqueeze(-1)).sum())


def _expected(family: str, dirs, dataset) -> dict[str, float]:
    auto = AutoModelForSeq2SeqLM if family == "t5" else AutoModelForCausalLM
    policy, reference = auto.from_pretrained(dirs["merged"]).eval(), auto.from_pretrained(dirs["base"]).eval()
    tokenizer = AutoTokenizer.from_pretrained(dirs["base"])
    score = _completion_logp_seq2seq if family == "t5" else _completion_logp_causal
    rows = []
    for row in dataset:
        logps = {side: score(policy, tokenizer, row["prompt"], row[side]) for side in ("chosen", "rejected")}
        refs = {side: score(reference, tokenizer, row["prompt"], row[side]) for side in ("chosen", "rejected")}
        reward_c, reward_r = BETA * (logps["chosen"] - refs["chosen"]), BETA * (logps["rejected"] - refs["rejected"])
        rows.append({
            "loss": -math.log(1 / (1 + math.exp(-(reward_c - reward_r)))),  # sigmoid DPO loss
            "rewards/chosen": reward_c, "rewards/rejected": reward_r, "rewards/margins": reward_c - reward_r,
            "rewards/accuracies": float(reward_c > reward_r),
            "logps/chosen": logps["chosen"], "logps/rejected": logps["rejected"],
        })
    return rows


@pytest.mark.parametrize("family,precompute", [("gpt2", True), ("gpt2", False), ("t5", True), ("t5", False)])
def test_held_out_metrics_are_means_over_pairs(tmp_path, family, precompute):
    dirs = build_family(tmp_path, family)
    tokenizer = AutoTokenizer.from_pretrained(dirs["base"])
    auto = AutoModelForSeq2SeqLM if family == "t5" else AutoModelForCausalLM
    model = auto.from_pretrained(dirs["base"])
    arch = architecture_of(model.config)
    prepare_tokenizer(tokenizer, arch)
    lora = arch.lora_config(4, 8, 0.0, ["q", "v"] if family == "t5" else ["c_attn"])  # tiny_models' adapter
    dataset = to_dataset(_pairs(), arch.prompt_format)
    args = DPOConfig(
        output_dir=str(tmp_path / "ckpt"), beta=BETA, loss_type=["sigmoid"], per_device_eval_batch_size=EVAL_BATCH,
        per_device_train_batch_size=2, precompute_ref_log_probs=precompute, bf16=False, use_cpu=True,
        report_to="none", gradient_checkpointing=False, max_length=None,
    )
    trainer = build_trainer(arch, model, tokenizer, dataset, dataset, args, lora)
    # The run's adapter (reference = the base, adapter disabled), with tiny_models' perturbed weights loaded in.
    set_peft_model_state_dict(trainer.model, load_file(dirs["adapter"] / "adapter_model.safetensors"))
    got = evaluate_pairs(trainer)

    per_pair = _expected(family, dirs, dataset)
    expected = {key: sum(r[key] for r in per_pair) / N_PAIRS for key in per_pair[0]}
    # fp32 tolerance: a sequence log-prob is a sum over tokens whose order (merged vs LoRA weights, buckets, the
    # CPU's GEMM kernels) moves it by a few ulps of its size; a reward is BETA times a difference of two of them.
    logp_tolerance = 1e-5 * max(abs(r[f"logps/{side}"]) for r in per_pair for side in ("chosen", "rejected"))
    for key, value in expected.items():
        tolerance = logp_tolerance if key.startswith("logps/") else 2 * BETA * logp_tolerance
        assert got[key] == pytest.approx(value, rel=1e-5, abs=tolerance), key
    correct = sum(r["rewards/accuracies"] for r in per_pair)
    assert got["rewards/accuracies"] == correct / N_PAIRS  # exactly k/n
    assert got["pairs"] == N_PAIRS and got["correct"] == correct
    assert got["logps/gap"] == pytest.approx(expected["logps/chosen"] - expected["logps/rejected"], rel=1e-4)
    # The data make the test discriminating: the mean of per-batch means (Trainer.evaluate) differs from the pair mean.
    batches = [per_pair[i:i + EVAL_BATCH] for i in range(0, N_PAIRS, EVAL_BATCH)]
    batch_mean = sum(sum(r["rewards/margins"] for r in b) / len(b) for b in batches) / len(batches)
    assert abs(batch_mean - expected["rewards/margins"]) > max(1e-3, 10 * BETA * logp_tolerance)
    # Training metrics are untouched by the evaluation (TRL's eval buffer is restored).
    assert not trainer._metrics["eval"]


def test_ties_are_not_correct(tmp_path):
    """Before any update (zero LoRA B) every reward is 0: no pair is counted correct, loss = ln 2."""
    dirs = build_family(tmp_path, "gpt2")
    tokenizer = AutoTokenizer.from_pretrained(dirs["base"])
    base = AutoModelForCausalLM.from_pretrained(dirs["base"])
    arch = architecture_of(base.config)
    prepare_tokenizer(tokenizer, arch)
    dataset = to_dataset(_pairs(), arch.prompt_format)
    args = DPOConfig(output_dir=str(tmp_path / "ckpt"), beta=BETA, per_device_eval_batch_size=EVAL_BATCH, bf16=False,
                     use_cpu=True, report_to="none", gradient_checkpointing=False, precompute_ref_log_probs=True)
    lora = arch.lora_config(4, 8, 0.0, None)
    trainer = build_trainer(arch, base, tokenizer, dataset, dataset, args, lora)
    got = evaluate_pairs(trainer)
    assert got["rewards/accuracies"] == 0.0 and got["correct"] == 0
    assert got["loss"] == pytest.approx(math.log(2), abs=1e-5)
    assert got["rewards/margins"] == pytest.approx(0.0, abs=1e-5)
