"""Seq2SeqDPOTrainer: TRL's DPO loss code driven by an encoder-decoder (T5) batch and forward.

Every expected value here is computed independently: per-example log-probs from plain `model(input_ids=prompt,
labels=completion)` calls, and the DPO-family losses from their paper definitions written out below.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import math
import random

import pytest
import torch
import torch.nn.functional as F
from datasets import Dataset
from peft import LoraConfig
from trainer_helpers import EOS, PAD, WORDS, perturb_lora, word_tokenizer
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast, T5Config, T5ForConditionalGeneration
from trl import DPOConfig

from dpo_studio.training.seq2seq_dpo import (
    SUPPORTED_LOSS_TYPES,
    DataCollatorForSeq2SeqPreference,
    Seq2SeqDPOTrainer,
    Seq2SeqPreferenceForward,
)

pytestmark = pytest.mark.usefixtures("single_thread")

TRL_METRICS = ["rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins", "logps/chosen",
               "logps/rejected"]


# ---------------------------------------------------------------------------------------------------------- helpers

@pytest.fixture(scope="module")
def tokenizer() -> PreTrainedTokenizerFast:
    """Word-level tokenizer that appends </s> like T5's."""
    return word_tokenizer(t5=True)


def tiny_t5(seed: int = 0) -> T5ForConditionalGeneration:
    torch.manual_seed(seed)
    config = T5Config(vocab_size=64, d_model=32, d_ff=64, d_kv=8, num_layers=2, num_decoder_layers=2, num_heads=2,
                      decoder_start_token_id=0, pad_token_id=PAD, eos_token_id=EOS)
    return T5ForConditionalGeneration(config)


def toy_rows(n: int, seed: int) -> list[dict[str, str]]:
    """Chosen replies use tokens a*, rejected replies tokens b*; lengths vary so padding is exercised."""
    rng = random.Random(seed)

    def words(prefix: str, lo: int, hi: int) -> str:
        return " ".join(f"{prefix}{rng.randrange(10)}" for _ in range(rng.randint(lo, hi)))

    return [{"prompt": words("p", 2, 5), "chosen": words("a", 1, 4), "rejected": words("b", 1, 4)} for _ in range(n)]


def dpo_args(tmp_path, **overrides) -> DPOConfig:
    kwargs = dict(output_dir=str(tmp_path), report_to=[], bf16=False, gradient_checkpointing=False, use_cpu=True,
                  logging_steps=1, save_strategy="no", per_device_train_batch_size=8, per_device_eval_batch_size=8,
                  beta=0.1, learning_rate=5e-3, max_steps=1, seed=0)
    kwargs.update(overrides)
    return DPOConfig(**kwargs)


def lora_config() -> LoraConfig:
    return LoraConfig(task_type="SEQ_2_SEQ_LM", r=8, lora_alpha=16, lora_dropout=0.0,
                      target_modules=["q", "k", "v", "o", "wi", "wo"])


def make_trainer(tmp_path, tokenizer, train_rows=None, eval_rows=None, peft=True, **overrides) -> Seq2SeqDPOTrainer:
    max_prompt = overrides.pop("max_prompt_length", None)
    max_completion = overrides.pop("max_completion_length", None)
    return Seq2SeqDPOTrainer(
        tiny_t5(),
        args=dpo_args(tmp_path, **overrides),
        train_dataset=Dataset.from_list(train_rows or toy_rows(16, seed=1)),
        eval_dataset=Dataset.from_list(eval_rows or toy_rows(8, seed=2)),
        processing_class=tokenizer,
        peft_config=lora_config() if peft else None,
        max_prompt_length=max_prompt,
        max_completion_length=max_completion,
    )


def collate(trainer: Seq2SeqDPOTrainer, rows) -> dict[str, torch.Tensor]:
    keys = ("prompt_ids", "chosen_ids", "rejected_ids")
    return trainer.data_collator([{k: row[k] for k in keys} for row in rows])


def manual_token_logps(model, prompt_ids: list[int], completion_ids: list[int]) -> torch.Tensor:
    """log p(completion token | prompt, previous tokens) from one plain teacher-forced forward (T5 shifts labels)."""
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([prompt_ids]), labels=torch.tensor([completion_ids])).logits[0]
    return logits.log_softmax(-1).gather(-1, torch.tensor(completion_ids)[:, None]).squeeze(-1)


# ------------------------------------------------------------------------------------------------------------ data


def test_collator_puts_chosen_rows_first_then_rejected():
    collator = DataCollatorForSeq2SeqPreference(pad_token_id=PAD, decoder_start_token_id=7)
    examples = [
        {"prompt_ids": [10, 11, EOS], "chosen_ids": [20, EOS], "rejected_ids": [30, 31, 32, EOS],
         "ref_chosen_logps": -1.0, "ref_rejected_logps": -2.0},
        {"prompt_ids": [12, EOS], "chosen_ids": [21, 22, EOS], "rejected_ids": [33, EOS],
         "ref_chosen_logps": -3.0, "ref_rejected_logps": -4.0},
    ]
    batch = collator(examples)
    assert batch["encoder_input_ids"].tolist() == [[10, 11, EOS], [12, EOS, PAD]]
    assert batch["encoder_attention_mask"].tolist() == [[1, 1, 1], [1, 1, 0]]
    # rows 0..B-1 are chosen completions, rows B..2B-1 the rejected ones of the same pairs
    assert batch["input_ids"].tolist() == [
        [7, 20, EOS, PAD, PAD],
        [7, 21, 22, EOS, PAD],
        [7, 30, 31, 32, EOS],
        [7, 33, EOS, PAD, PAD],
    ]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 0], [1, 1, 1, 1, 1], [1, 1, 1, 0, 0]]
    assert batch["completion_mask"].tolist() == [[0, 1, 1, 0, 0], [0, 1, 1, 1, 0], [0, 1, 1, 1, 1], [0, 1, 1, 0, 0]]
    assert batch["ref_chosen_logps"].tolist() == [-1.0, -3.0]
    assert batch["ref_rejected_logps"].tolist() == [-2.0, -4.0]


def test_prepare_dataset_tokenizes_for_encoder_and_decoder_and_counts_truncation(tmp_path, tokenizer):
    rows = [
        {"prompt": "p1 p2", "chosen": "a1 a2", "rejected": "b1"},
        {"prompt": "p1 p2 p3 p4 p5 p6", "chosen": "a1 a2 a3 a4", "rejected": "b1 </s>"},  # long prompt, long chosen
    ]
    trainer = make_trainer(tmp_path, tokenizer, train_rows=rows, eval_rows=rows[:1], max_prompt_length=4,
                           max_completion_length=3)
    ds = trainer.train_dataset
    ids = {w: tokenizer.convert_tokens_to_ids(w) for w in WORDS}
    # short row: the encoder sees exactly tokenizer(prompt); completions end with one EOS, no BOS
    assert ds[0]["prompt_ids"] == tokenizer("p1 p2")["input_ids"] == [ids["p1"], ids["p2"], EOS]
    assert ds[0]["chosen_ids"] == [ids["a1"], ids["a2"], EOS]
    assert ds[0]["rejected_ids"] == [ids["b1"], EOS]
    # long row: keep the start, keep EOS last; a completion already ending in </s> gets no second EOS
    assert ds[1]["prompt_ids"] == [ids["p1"], ids["p2"], ids["p3"], EOS]
    assert ds[1]["chosen_ids"] == [ids["a1"], ids["a2"], EOS]
    assert ds[1]["rejected_ids"] == [ids["b1"], EOS]
    assert trainer.truncation_counts["train"] == {"prompt": 1, "chosen": 1, "rejected": 0, "rows": 1, "total": 2}
    assert trainer.truncation_counts["eval"] == {"prompt": 0, "chosen": 0, "rejected": 0, "rows": 0, "total": 1}


def test_rejects_causal_models_unknown_losses_and_conversational_rows(tmp_path, tokenizer):
    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=64, n_embd=16, n_layer=1, n_head=2, n_positions=32))
    with pytest.raises(ValueError, match="encoder-decoder"):
        Seq2SeqDPOTrainer(gpt2, args=dpo_args(tmp_path), train_dataset=Dataset.from_list(toy_rows(4, 0)),
                          processing_class=tokenizer)
    with pytest.raises(ValueError, match="not_a_loss"):
        make_trainer(tmp_path, tokenizer, loss_type=["sigmoid", "not_a_loss"])
    conversational = [{"prompt": [{"role": "user", "content": "p1"}], "chosen": [{"role": "assistant", "content": "a1"}],
                       "rejected": [{"role": "assistant", "content": "b1"}]}]
    with pytest.raises(TypeError, match="field 'prompt' must be a string"):
        make_trainer(tmp_path, tokenizer, train_rows=conversational)


# ----------------------------------------------------------------------------------------------- forward and losses


@pytest.fixture(scope="module")
def perturbed(tmp_path_factory, tokenizer):
    """A trainer whose LoRA policy differs from the (adapter-disabled) reference, plus hand-computed log-probs."""
    trainer = make_trainer(tmp_path_factory.mktemp("perturbed"), tokenizer)
    perturb_lora(trainer.model)
    trainer.model.eval()
    rows = [trainer.train_dataset[i] for i in range(6)]
    policy, reference = [], []
    for row in rows:
        for field in ("chosen_ids", "rejected_ids"):
            policy.append(manual_token_logps(trainer.model, row["prompt_ids"], row[field]))
            with trainer.model.disable_adapter():
                reference.append(manual_token_logps(trainer.model, row["prompt_ids"], row[field]))
    hand = {
        "pc": torch.stack([t.sum() for t in policy[0::2]]),
        "pr": torch.stack([t.sum() for t in policy[1::2]]),
        "rc": torch.stack([t.sum() for t in reference[0::2]]),
        "rr": torch.stack([t.sum() for t in reference[1::2]]),
        "len_c": torch.tensor([float(len(r["chosen_ids"])) for r in rows]),
        "len_r": torch.tensor([float(len(r["rejected_ids"])) for r in rows]),
        "chosen_tokens": torch.cat(policy[0::2]),
    }
    assert len({len(r["chosen_ids"]) for r in rows} | {len(r["rejected_ids"]) for r in rows}) > 1  # padding happens
    assert (hand["pc"] - hand["rc"]).abs().min() > 1e-3  # the policy really differs from the reference
    return trainer, collate(trainer, rows), hand


def sequence_logps(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed log-probs of the chosen and rejected completions of a collated batch, through the public
    `Seq2SeqPreferenceForward` on `model` as it stands (wrap in `disable_adapter()` for the reference)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    labels = batch["input_ids"].masked_fill(batch["completion_mask"] == 0, -100)
    inputs = {k: v for k, v in batch.items() if k not in {"completion_mask", "ref_chosen_logps", "ref_rejected_logps"}}
    out = Seq2SeqPreferenceForward(model, base)(**inputs, labels=labels, use_cache=False, fused_lm_head=True)
    chosen, rejected = out.log_probs.sum(dim=1).chunk(2, dim=0)
    return chosen, rejected


def test_sequence_logps_equal_manual_sums_of_token_log_probs(perturbed):
    trainer, batch, hand = perturbed
    with torch.no_grad():
        chosen, rejected = sequence_logps(trainer.model, batch)
        torch.testing.assert_close(chosen, hand["pc"], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(rejected, hand["pr"], rtol=1e-5, atol=1e-5)
        with trainer.model.disable_adapter():
            ref_chosen, ref_rejected = sequence_logps(trainer.model, batch)
        torch.testing.assert_close(ref_chosen, hand["rc"], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(ref_rejected, hand["rr"], rtol=1e-5, atol=1e-5)
        # the fused forward the trainer hands TRL gives the same per-token values, zero on padding
        labels = batch["input_ids"].masked_fill(batch["completion_mask"] == 0, -100)
        forward = trainer.preference_forward(trainer.model, ("log_probs",))
        out = forward(**{k: v for k, v in batch.items() if k != "completion_mask"}, labels=labels,
                      use_cache=False, fused_lm_head=True)
    assert out.log_probs.shape == (12, batch["input_ids"].size(1) - 1)
    assert (out.log_probs[batch["completion_mask"][:, 1:] == 0] == 0).all()
    torch.testing.assert_close(out.log_probs.sum(1), torch.cat([hand["pc"], hand["pr"]]), rtol=1e-5, atol=1e-5)


def test_the_distributed_single_call_scores_like_the_encoder_once_path(perturbed):
    """Under DDP/FSDP the forward is ONE call of the wrapped model (encoder per decoder row, so the wrapper's gradient
    sync sees it): same per-token log-probs (fp32, 1e-5) and LoRA gradients (rtol 1e-4, atol 1e-5: the encoder's
    gradient sums its two decoder rows in another order) as the encoder run once per pair."""
    trainer, batch, _ = perturbed
    labels = batch["input_ids"].masked_fill(batch["completion_mask"] == 0, -100)
    inputs = {k: v for k, v in batch.items() if k != "completion_mask"}
    base = trainer.model.get_base_model()
    outs = []
    for single_call in (False, True):
        trainer.model.zero_grad()
        forward = Seq2SeqPreferenceForward(trainer.model, base, ("log_probs",), single_call=single_call)
        out = forward(**inputs, labels=labels, use_cache=False, fused_lm_head=True)
        out.log_probs.sum().backward()
        grads = {n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.grad is not None}
        outs.append((out.log_probs.detach(), grads))
    trainer.model.zero_grad()
    (once, once_grads), (single, single_grads) = outs
    torch.testing.assert_close(single, once, atol=1e-5, rtol=1e-5)
    assert once_grads.keys() == single_grads.keys() and once_grads
    for name in once_grads:
        torch.testing.assert_close(single_grads[name], once_grads[name], rtol=1e-4, atol=1e-5)


def _logsig(x):
    return F.logsigmoid(x)


def expected_loss(loss_type: str, h: dict, beta: float, eps: float, tau: float = 0.05) -> torch.Tensor:
    """DPO-family losses written from their papers / the TRL docs, from per-sequence log-probs."""
    lc, lr = h["pc"] - h["rc"], h["pr"] - h["rr"]  # policy/reference log-ratios of chosen and rejected
    delta = lc - lr
    if loss_type == "sigmoid":  # DPO
        per = -_logsig(beta * delta)
    elif loss_type == "hinge":  # SLiC
        per = torch.clamp(1 - beta * delta, min=0)
    elif loss_type == "ipo":  # IPO on length-normalized log-ratios, target 1/(2 tau)
        per = (lc / h["len_c"] - lr / h["len_r"] - 1 / (2 * beta)) ** 2
    elif loss_type == "robust":  # cDPO-robust: unbiased under label-flip rate eps
        per = ((1 - eps) * -_logsig(beta * delta) - eps * -_logsig(-beta * delta)) / (1 - 2 * eps)
    elif loss_type == "bco_pair":
        per = -_logsig(beta * lc) - _logsig(-beta * lr)
    elif loss_type == "sppo_hard":  # winner pushed to +1/(2 beta), loser to -1/(2 beta)
        per = (lc - 1 / (2 * beta)) ** 2 + (lr + 1 / (2 * beta)) ** 2
    elif loss_type == "nca_pair":
        per = -_logsig(beta * lc) - 0.5 * _logsig(-beta * lc) - 0.5 * _logsig(-beta * lr)
    elif loss_type == "apo_zero":
        per = (1 - torch.sigmoid(beta * lc)) + torch.sigmoid(beta * lr)
    elif loss_type == "apo_down":
        per = torch.sigmoid(beta * lc) + (1 - torch.sigmoid(beta * delta))
    elif loss_type == "exo_pair":  # KL(q || p) with q = softmax over the pair, p = (1 - eps, eps)
        q = torch.sigmoid(beta * delta)
        per = q * torch.log(q / (1 - eps)) + (1 - q) * torch.log((1 - q) / eps)
    elif loss_type == "discopop":  # log-ratio modulated blend of logistic and exponential losses
        x = beta * delta
        mix = torch.sigmoid(x / tau)
        per = (1 - mix) * -_logsig(x) + mix * torch.exp(-x)
    elif loss_type == "sigmoid_norm":
        per = -_logsig(beta * (lc / h["len_c"] - lr / h["len_r"]))
    elif loss_type == "aot":  # paired AOT: sorted policy margins vs sorted reference margins
        d = torch.sort(h["pc"] - h["pr"]).values - torch.sort(h["rc"] - h["rr"]).values
        per = -(1 - eps) * _logsig(beta * d) - eps * _logsig(-beta * d)
    elif loss_type == "aot_unpaired":  # sorted chosen log-ratios vs sorted rejected log-ratios
        d = torch.sort(lc).values - torch.sort(lr).values
        per = -(1 - eps) * _logsig(beta * d) - eps * _logsig(-beta * d)
    elif loss_type == "sft":  # NLL of the chosen completions, averaged over their tokens
        return -h["chosen_tokens"].mean()
    else:
        raise AssertionError(loss_type)
    return per.mean()


LOSS_CASES = [
    ("sigmoid", 0.0), ("hinge", 0.0), ("ipo", 0.0), ("robust", 0.1), ("bco_pair", 0.0), ("sppo_hard", 0.0),
    ("nca_pair", 0.0), ("apo_zero", 0.0), ("apo_down", 0.0), ("exo_pair", 1e-3), ("discopop", 0.0),
    ("sigmoid_norm", 0.0), ("aot", 0.1), ("aot_unpaired", 0.1), ("sft", 0.0),
]


def test_every_supported_loss_type_is_covered():
    assert {name for name, _ in LOSS_CASES} == SUPPORTED_LOSS_TYPES


@pytest.mark.parametrize("loss_type,eps", LOSS_CASES)
def test_loss_matches_hand_formula(perturbed, loss_type, eps):
    trainer, batch, hand = perturbed
    # TRL's _compute_loss reads these attributes on each call; one trainer serves all loss types.
    trainer.loss_types, trainer.loss_weights, trainer.label_smoothing = [loss_type], [1.0], eps
    with torch.no_grad():
        loss = trainer.compute_loss(trainer.model, batch)
    expected = expected_loss(loss_type, hand, beta=trainer.beta, eps=eps, tau=trainer.args.discopop_tau)
    assert math.isfinite(loss.item())
    torch.testing.assert_close(loss, expected, rtol=1e-4, atol=1e-5)


def test_metrics_use_trl_names_and_hand_values(perturbed):
    trainer, batch, hand = perturbed
    trainer.loss_types, trainer.loss_weights, trainer.label_smoothing = ["sigmoid"], [1.0], 0.0
    trainer._metrics["eval"].clear()
    with torch.no_grad():
        trainer.compute_loss(trainer.model, batch)
    metrics = {k: v[-1] for k, v in trainer._metrics["eval"].items()}
    beta = trainer.beta
    chosen_rewards, rejected_rewards = beta * (hand["pc"] - hand["rc"]), beta * (hand["pr"] - hand["rr"])
    assert metrics["rewards/chosen"] == pytest.approx(chosen_rewards.mean().item(), abs=1e-5)
    assert metrics["rewards/rejected"] == pytest.approx(rejected_rewards.mean().item(), abs=1e-5)
    assert metrics["rewards/margins"] == pytest.approx((chosen_rewards - rejected_rewards).mean().item(), abs=1e-5)
    assert metrics["rewards/accuracies"] == pytest.approx((chosen_rewards > rejected_rewards).float().mean().item())
    assert metrics["logps/chosen"] == pytest.approx(hand["pc"].mean().item(), abs=1e-4)
    assert metrics["logps/rejected"] == pytest.approx(hand["pr"].mean().item(), abs=1e-4)
    trainer._metrics["eval"].clear()


def test_swapping_chosen_and_rejected_flips_margins_and_accuracy(perturbed):
    trainer, _, _ = perturbed
    trainer.loss_types, trainer.loss_weights, trainer.label_smoothing = ["sigmoid"], [1.0], 0.0
    rows = toy_rows(8, seed=2)
    swapped = [{"prompt": r["prompt"], "chosen": r["rejected"], "rejected": r["chosen"]} for r in rows]
    normal = trainer.evaluate(eval_dataset=Dataset.from_list(rows))
    flipped = trainer.evaluate(eval_dataset=Dataset.from_list(swapped))
    assert abs(normal["eval_rewards/margins"]) > 1e-3
    assert flipped["eval_rewards/margins"] == pytest.approx(-normal["eval_rewards/margins"], abs=1e-5)
    assert flipped["eval_rewards/chosen"] == pytest.approx(normal["eval_rewards/rejected"], abs=1e-5)
    assert flipped["eval_rewards/accuracies"] == pytest.approx(1 - normal["eval_rewards/accuracies"])
    assert {f"eval_{m}" for m in TRL_METRICS} | {"eval_loss"} <= set(normal)


def test_encoder_runs_once_per_pair_and_decoder_on_both_completions(perturbed):
    trainer, batch, _ = perturbed
    base = trainer.model.get_base_model()
    calls = {"encoder": [], "decoder": []}
    hooks = [base.encoder.register_forward_hook(lambda m, a, kw, out: calls["encoder"].append(kw["input_ids"].size(0)),
                                                with_kwargs=True),
             base.decoder.register_forward_hook(lambda m, a, kw, out: calls["decoder"].append(kw["input_ids"].size(0)),
                                                with_kwargs=True)]
    try:
        labels = batch["input_ids"].masked_fill(batch["completion_mask"] == 0, -100)
        with torch.no_grad():
            trainer.preference_forward(trainer.model, ("log_probs",))(
                **{k: v for k, v in batch.items() if k != "completion_mask"}, labels=labels, use_cache=False,
                fused_lm_head=True)
            assert calls == {"encoder": [6], "decoder": [12]}
            # a full loss computation = one policy forward + one reference forward, each with one encoder pass
            calls["encoder"].clear(), calls["decoder"].clear()
            trainer.loss_types, trainer.loss_weights = ["sigmoid"], [1.0]
            trainer.compute_loss(trainer.model, batch)
            assert calls == {"encoder": [6, 6], "decoder": [12, 12]}
    finally:
        for hook in hooks:
            hook.remove()


def test_generate_still_uses_the_original_forward(perturbed, tokenizer):
    trainer, _, _ = perturbed
    model = trainer.model
    prompt = tokenizer(["p1 p2 p3"], return_tensors="pt")
    out = model.generate(**prompt, max_new_tokens=5, do_sample=False)
    # Same greedy output when decoding by hand with the unpatched class forward
    base = model.get_base_model()
    ids = torch.tensor([[0]])
    with torch.no_grad():
        for _ in range(out.size(1) - 1):
            logits = type(base).forward(base, **prompt, decoder_input_ids=ids).logits
            ids = torch.cat([ids, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert out.tolist() == ids.tolist()


# ----------------------------------------------------------------------------------------------------------- training


def test_gradients_reach_only_lora_weights(tmp_path, tokenizer):
    trainer = make_trainer(tmp_path, tokenizer)
    perturb_lora(trainer.model)  # with B = 0 the gradient of A is exactly zero
    trainer.model.train()
    batch = collate(trainer, [trainer.train_dataset[i] for i in range(4)])
    trainer.compute_loss(trainer.model, batch).backward()
    named = dict(trainer.model.named_parameters())
    lora = {n: p for n, p in named.items() if "lora_" in n}
    assert lora and all(p.grad is not None for p in lora.values())
    assert all(p.grad.abs().sum() > 0 for n, p in lora.items())
    assert all(p.grad is None for n, p in named.items() if "lora_" not in n)


def test_precomputed_reference_gives_same_eval_metrics(tmp_path, tokenizer):
    results = []
    for precompute in (False, True):
        trainer = make_trainer(tmp_path / str(precompute), tokenizer, precompute_ref_log_probs=precompute)
        if precompute:
            assert "ref_chosen_logps" in trainer.eval_dataset.column_names
        perturb_lora(trainer.model)
        results.append(trainer.evaluate())
    online, precomputed = results
    for key in ["eval_loss"] + [f"eval_{m}" for m in TRL_METRICS]:
        assert precomputed[key] == pytest.approx(online[key], abs=1e-5), key


def test_full_finetuning_without_peft_uses_a_frozen_reference_copy(tmp_path, tokenizer):
    trainer = make_trainer(tmp_path, tokenizer, peft=False)
    assert trainer.ref_model is not None and trainer.ref_model is not trainer.model
    batch = collate(trainer, [trainer.train_dataset[i] for i in range(4)])
    trainer.model.train()
    loss = trainer.compute_loss(trainer.model, batch)
    # policy == reference at the start; exact only if disable_dropout also zeroed T5's functional attention dropout
    assert loss.item() == pytest.approx(math.log(2), abs=1e-6)
    loss.backward()
    assert trainer.model.encoder.block[0].layer[0].SelfAttention.q.weight.grad is not None
    assert all(p.grad is None for p in trainer.ref_model.parameters())


def test_short_lora_run_learns_the_toy_preference(tmp_path, tokenizer):
    trainer = make_trainer(tmp_path, tokenizer, train_rows=toy_rows(32, seed=1), eval_rows=toy_rows(16, seed=2),
                           max_steps=30, learning_rate=5e-3)
    before = trainer.evaluate()
    trainer.train()
    after = trainer.evaluate()
    assert before["eval_loss"] == pytest.approx(math.log(2), abs=1e-5)  # fresh LoRA: policy == reference
    assert after["eval_loss"] < before["eval_loss"] - 0.1
    assert after["eval_rewards/accuracies"] > before["eval_rewards/accuracies"]
    assert after["eval_rewards/accuracies"] >= 0.8
    assert after["eval_rewards/margins"] > 0
    train_logs = [entry for entry in trainer.state.log_history if "rewards/chosen" in entry]
    assert len(train_logs) == 30 and all({"loss", *TRL_METRICS} <= set(entry) for entry in train_logs)
    first, last = train_logs[:5], train_logs[-5:]
    assert sum(e["loss"] for e in last) < sum(e["loss"] for e in first)


def test_labelled_values_match_a_direct_softmax_computation():
    """The per-token fields (TRL's selective_log_softmax / entropy_from_logits plus ours) against plain softmax."""
    from dpo_studio.training.seq2seq_dpo import _labelled_values

    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(37, 50, generator=gen) * 3
    targets = torch.randint(0, 50, (37,), generator=gen)
    fields = ("log_probs", "entropy", "log_sum_sq_probs", "mean_logits", "is_top1")
    log_probs, entropy, log_sum_sq, mean_logits, is_top1 = _labelled_values(logits, targets, fields)
    p = logits.double().softmax(-1)
    rows = torch.arange(37)
    torch.testing.assert_close(log_probs.double(), p[rows, targets].log(), atol=1e-5, rtol=0)
    torch.testing.assert_close(entropy.double(), -(p * p.log()).sum(-1), atol=1e-5, rtol=0)
    torch.testing.assert_close(log_sum_sq.double(), (p**2).sum(-1).log(), atol=1e-5, rtol=0)
    torch.testing.assert_close(mean_logits, logits.mean(-1))
    assert torch.equal(is_top1, targets == logits.argmax(-1))
    assert _labelled_values(logits, targets, ("log_probs",))[1:] == [None] * 4
