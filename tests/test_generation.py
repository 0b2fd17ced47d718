"""Tests for the shared base-vs-DPO engine, on tiny GPT-2 and T5 models built here (no network)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch
from safetensors.torch import load_file
from tiny_models import BETA, EOS, PAD, build_models_dir
from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM

from dpo_studio.data.prompt_format import DECODER_ONLY_FORMAT, ENCODER_DECODER_FORMAT, PromptFormat
from dpo_studio.inference.generation import (
    GenerationResult,
    completion_token_logps,
    encode_pair_for_scoring,
    encoded_token_logps,
    generate_pair_results,
    load_pair,
    score_pair,
    split_generated,
)

pytestmark = pytest.mark.usefixtures("single_thread")


def generate_pair(pair, prompts, **settings) -> list[tuple[str, str]]:
    """(base text, DPO text) per prompt, through the product's `generate_pair_results`."""
    return [(base.text, dpo.text) for base, dpo in generate_pair_results(pair, prompts, **settings)]


def token_log_ratios(pair, prompt, completion: str) -> list[tuple[str, float]]:
    """(token text, log pi_dpo - log pi_base) per completion token (EOS included), through the product's scoring."""
    enc = encode_pair_for_scoring(pair.tokenizer, pair.prompt_format, pair.is_encoder_decoder, prompt, completion)
    base_logps, dpo_logps = encoded_token_logps(pair, enc)
    return [(pair.tokenizer.decode([t]), r) for t, r in zip(enc.completion_ids, (dpo_logps - base_logps).tolist())]

MAX_NEW = 10
PROMPTS = ["Hi", "Tell me a joke about the chicken and the road, please!", "What is your favourite food?"]


@pytest.fixture(scope="module")
def families(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Path]]:
    root = tmp_path_factory.mktemp("models")
    return build_models_dir(root, suppress_eos=False)


@pytest.fixture(scope="module")
def pairs(families) -> dict[str, object]:
    return {f: load_pair(str(d["base"]), str(d["adapter"]), str(d["merged"])) for f, d in families.items()}


def _plain_model(path: Path, family: str):
    cls = AutoModelForCausalLM if family == "gpt2" else AutoModelForSeq2SeqLM
    return cls.from_pretrained(path).eval()


def _plain_greedy(model, tokenizer, family: str, prompt_text: str) -> tuple[list[int], bool]:
    """Unbatched (unpadded) greedy generation, cut at the first EOS, written independently of the engine."""
    ids = torch.tensor([tokenizer(prompt_text)["input_ids"]])
    out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
                         max_new_tokens=MAX_NEW, eos_token_id=EOS, pad_token_id=tokenizer.pad_token_id or EOS)
    new = out[0, ids.shape[1]:] if family == "gpt2" else out[0, 1:]
    new = new.tolist()
    return (new[: new.index(EOS)], True) if EOS in new else (new, False)


@pytest.mark.parametrize("family", ["gpt2", "t5"])
def test_mixed_batch_matches_plain_base_and_merged(families, pairs, family):
    pair = pairs[family]
    assert pair.shares_weights and pair.base_model is None and pair.dpo_model is None
    base, merged = _plain_model(families[family]["base"], family), _plain_model(families[family]["merged"], family)
    results = generate_pair_results(pair, PROMPTS, max_new_tokens=MAX_NEW)
    assert len(results) == len(PROMPTS)
    differs = False
    for prompt, (base_out, dpo_out) in zip(PROMPTS, results):
        text = pair.prompt_format.prompt_from_text(prompt)
        for model, got in ((base, base_out), (merged, dpo_out)):
            ids, ended = _plain_greedy(model, pair.tokenizer, family, text)
            assert got.token_ids == ids
            assert got.ended_with_eos == ended and got.num_tokens == len(ids)
            assert got.text == pair.tokenizer.decode(ids, skip_special_tokens=True).strip()
        differs |= base_out.token_ids != dpo_out.token_ids
    assert differs, "the perturbed adapter should change at least one greedy output"
    # The simple API returns the same texts; chunking into smaller batches changes nothing under greedy decoding.
    assert generate_pair(pair, PROMPTS, max_new_tokens=MAX_NEW) == [(b.text, d.text) for b, d in results]
    assert generate_pair_results(pair, PROMPTS, max_new_tokens=MAX_NEW, batch_size=2) == results


@pytest.mark.parametrize("family", ["gpt2", "t5"])
def test_fallback_without_adapter_gives_same_outputs(families, pairs, family):
    d = families[family]
    fallback = load_pair(str(d["base"]), None, str(d["merged"]))
    assert not fallback.shares_weights and fallback.model is None
    assert fallback.beta == BETA  # read from merged/dpo_config.json
    assert generate_pair_results(fallback, PROMPTS, max_new_tokens=MAX_NEW) == generate_pair_results(
        pairs[family], PROMPTS, max_new_tokens=MAX_NEW
    )


def _unique_numel(*modules) -> int:
    seen: dict[int, int] = {}
    for module in modules:
        if module is not None:
            for p in module.parameters():
                seen[p.data_ptr()] = p.numel()
    return sum(seen.values())


@pytest.mark.parametrize("family", ["gpt2", "t5"])
def test_one_set_of_base_weights_when_adapter_exists(families, pairs, family):
    d = families[family]
    base_numel = _unique_numel(_plain_model(d["base"], family))
    lora_numel = sum(t.numel() for t in load_file(d["adapter"] / "adapter_model.safetensors").values())
    pair = pairs[family]
    assert _unique_numel(pair.model, pair.base_model, pair.dpo_model) == base_numel + lora_numel
    fallback = load_pair(str(d["base"]), None, str(d["merged"]))
    assert _unique_numel(fallback.model, fallback.base_model, fallback.dpo_model) == 2 * base_numel


def _independent_logps(model, tokenizer, family: str, prompt: str, reply: str) -> tuple[torch.Tensor, list[int]]:
    """Per-token log-probs of the training-rendered reply (+EOS), written independently of the engine."""
    fmt = DECODER_ONLY_FORMAT if family == "gpt2" else ENCODER_DECODER_FORMAT
    prompt_ids = tokenizer(fmt.prompt_from_text(prompt))["input_ids"]
    completion = tokenizer(fmt.render_completion(reply), add_special_tokens=False)["input_ids"] + [EOS]
    with torch.no_grad():
        if family == "gpt2":
            logits = model(input_ids=torch.tensor([prompt_ids + completion])).logits[0]
            logits = logits[len(prompt_ids) - 1 : len(prompt_ids) - 1 + len(completion)]
        else:
            logits = model(input_ids=torch.tensor([prompt_ids]), labels=torch.tensor([completion])).logits[0]
    return torch.log_softmax(logits, -1)[torch.arange(len(completion)), completion], completion


@pytest.mark.parametrize("family", ["gpt2", "t5"])
def test_token_log_ratios_and_scores_match_independent_models(families, pairs, family):
    d, pair = families[family], pairs[family]
    base, merged = _plain_model(d["base"], family), _plain_model(d["merged"], family)
    prompt, reply_a, reply_b = "How are you?", "I am fine, thanks!", "What about pizza today"

    base_lp, ids = _independent_logps(base, pair.tokenizer, family, prompt, reply_a)
    merged_lp, _ = _independent_logps(merged, pair.tokenizer, family, prompt, reply_a)
    ratios = token_log_ratios(pair, prompt, reply_a)
    assert [t for t, _ in ratios] == [pair.tokenizer.decode([i]) for i in ids]
    assert ratios[-1][0] == "</s>"  # EOS is scored, as in training
    assert torch.allclose(torch.tensor([r for _, r in ratios]), merged_lp - base_lp, atol=1e-4)

    assert pair.beta == BETA  # read from the adapter's dpo_config.json
    score = score_pair(pair, prompt, reply_a, reply_b)
    for name, reply in (("a", reply_a), ("b", reply_b)):
        lp_base = _independent_logps(base, pair.tokenizer, family, prompt, reply)[0].sum().item()
        lp_merged = _independent_logps(merged, pair.tokenizer, family, prompt, reply)[0].sum().item()
        assert score[f"logp_base_{name}"] == pytest.approx(lp_base, abs=1e-4)
        assert score[f"logp_dpo_{name}"] == pytest.approx(lp_merged, abs=1e-4)
        assert score[f"reward_{name}"] == pytest.approx(BETA * (lp_merged - lp_base), abs=1e-4)
    assert score["preferred"] == ("a" if score["reward_a"] > score["reward_b"] else "b")
    swapped = score_pair(pair, prompt, reply_b, reply_a)
    assert {swapped["preferred"], score["preferred"]} == {"a", "b"}
    assert swapped["margin"] == pytest.approx(-score["margin"], abs=1e-6)
    assert score_pair(pair, prompt, reply_a, reply_b, beta=1.0)["reward_a"] == pytest.approx(
        score["reward_a"] / BETA, abs=1e-4
    )

    # The fallback pair (two plain models) scores the same.
    fallback = load_pair(str(d["base"]), None, str(d["merged"]))
    assert score_pair(fallback, prompt, reply_a, reply_b, beta=BETA) == pytest.approx(score, abs=1e-4)


def test_split_generated():
    assert split_generated([5, 6, EOS, EOS, EOS], EOS) == ([5, 6], True)  # finished rows are padded after EOS
    assert split_generated([EOS, 7], EOS) == ([], True)
    assert split_generated([5, 6, 7], EOS) == ([5, 6, 7], False)  # cut at the cap


def _force_constant_next_token(pair, token: int) -> None:
    """Make the tiny GPT-2 always predict `token`: the final layer norm outputs a constant vector u and only
    `token`'s output embedding is aligned with it (the adapter sits before ln_f, so both sides are affected)."""
    gpt2 = pair.model.get_base_model()
    u = torch.zeros(gpt2.config.n_embd)
    u[0] = 1.0
    with torch.no_grad():
        gpt2.transformer.ln_f.weight.zero_()
        gpt2.transformer.ln_f.bias.copy_(u)
        gpt2.lm_head.weight[:, 0] = 0.0
        gpt2.lm_head.weight[token] = 100.0 * u


def test_eos_and_token_counts_on_constructed_models(families):
    d = families["gpt2"]
    stops = load_pair(str(d["base"]), str(d["adapter"]))  # base None is fine too; here given explicitly
    _force_constant_next_token(stops, EOS)
    for side in generate_pair_results(stops, PROMPTS[:2], max_new_tokens=5)[0]:
        assert side == GenerationResult(text="", token_ids=[], ended_with_eos=True) and side.num_tokens == 0

    loops = load_pair(None, str(d["adapter"]))  # base read from adapter_config.json
    token = loops.tokenizer("Hello", add_special_tokens=False)["input_ids"][0]
    assert token not in loops.tokenizer.all_special_ids
    _force_constant_next_token(loops, token)
    for base_out, dpo_out in generate_pair_results(loops, PROMPTS, max_new_tokens=4):
        for side in (base_out, dpo_out):
            assert side.token_ids == [token] * 4 and side.num_tokens == 4 and not side.ended_with_eos
            assert side.text == (loops.tokenizer.decode([token]) * 4).strip()


@pytest.mark.parametrize("family", ["gpt2", "t5"])
def test_sampling_follows_seed_and_temperature(pairs, family):
    """Same seed: same samples; another seed: other samples; temperature near 0: the greedy replies (so the
    temperature reaches the sampler), temperature 1.5: not the greedy replies."""
    pair = pairs[family]
    kwargs = {"max_new_tokens": MAX_NEW, "top_p": 1.0}
    greedy = generate_pair_results(pair, PROMPTS, max_new_tokens=MAX_NEW)
    hot = generate_pair_results(pair, PROMPTS, seed=3, temperature=1.5, **kwargs)
    assert generate_pair_results(pair, PROMPTS, seed=3, temperature=1.5, **kwargs) == hot
    assert generate_pair_results(pair, PROMPTS, seed=4, temperature=1.5, **kwargs) != hot
    assert hot != greedy
    assert generate_pair_results(pair, PROMPTS, seed=3, temperature=1e-4, **kwargs) == greedy


@pytest.mark.parametrize("family", ["gpt2", "t5"])
def test_engine_log_probs_equal_trl_selective_log_softmax(families, pairs, family):
    """generation's per-token log-softmax (kept hand-written so the Space needs no trl) equals TRL's."""
    from trl.trainer.utils import selective_log_softmax

    pair, model = pairs[family], _plain_model(families[family]["merged"], family)
    fmt = DECODER_ONLY_FORMAT if family == "gpt2" else ENCODER_DECODER_FORMAT
    prompt_ids = pair.tokenizer(fmt.prompt_from_text("How are you?"))["input_ids"]
    completion = pair.tokenizer(fmt.render_completion("I am fine"), add_special_tokens=False)["input_ids"] + [EOS]
    with torch.no_grad():
        if family == "gpt2":
            logits = model(input_ids=torch.tensor([prompt_ids + completion])).logits[:, len(prompt_ids) - 1 : -1]
        else:
            logits = model(input_ids=torch.tensor([prompt_ids]), labels=torch.tensor([completion])).logits
    expected = selective_log_softmax(logits, torch.tensor([completion]))[0]
    _, dpo_logps, ids = completion_token_logps(pair, "How are you?", "I am fine")
    assert ids == completion
    assert torch.allclose(dpo_logps, expected, atol=1e-4)


def test_clear_errors(families, pairs, tmp_path):
    with pytest.raises(ValueError, match="adapter or a merged model"):
        load_pair(str(families["gpt2"]["base"]), None, None)
    with pytest.raises(ValueError, match="base model .* neither an existing local directory"):
        load_pair(str(tmp_path / "missing" / "model"), None, str(families["gpt2"]["merged"]))
    pickled = tmp_path / "pickled_adapter"
    pickled.mkdir()
    (pickled / "adapter_config.json").write_text((families["gpt2"]["adapter"] / "adapter_config.json").read_text())
    with pytest.raises(ValueError, match="only safetensors"):
        load_pair(str(families["gpt2"]["base"]), str(pickled))
    with pytest.raises(ValueError, match="temperature"):
        generate_pair(pairs["gpt2"], ["hi"], temperature=-1)


def test_tokenizer_and_prompt_format_come_from_the_dpo_side_first(families, pairs, tmp_path):
    d = families["gpt2"]
    merged = tmp_path / "merged"
    shutil.copytree(d["merged"], merged)
    PromptFormat(kind="plain-chat", assistant_cue="Bot:").save(merged)
    assert load_pair(str(d["base"]), None, str(merged)).prompt_format.assistant_cue == "Bot:"
    with_adapter = load_pair(str(d["base"]), str(d["adapter"]), str(merged))
    assert with_adapter.prompt_format == DECODER_ONLY_FORMAT  # the adapter's own file wins over merged/
    tokenizer = with_adapter.tokenizer
    assert tokenizer.padding_side == "left" and tokenizer.pad_token_id == tokenizer.eos_token_id == EOS
    assert pairs["t5"].tokenizer.pad_token_id == PAD  # seq2seq keeps its own pad token


@pytest.mark.parametrize("family", ["gpt2", "t5"])
def test_seeded_sampling_equals_stock_peft_mixed_batch(families, pairs, family):
    """The product's sampled tokens (its LoRA layers, its seeding) equal stock PEFT's: PeftModel.from_pretrained
    with PEFT's own layers, one mixed base/adapter batch, torch seeded with the same seed right before generate."""
    from peft import PeftModel

    d, pair = families[family], pairs[family]
    stock = PeftModel.from_pretrained(_plain_model(d["base"], family), d["adapter"]).eval()
    assert not any(type(m).__module__.startswith("dpo_studio") for m in stock.modules())
    for prompt in PROMPTS[:2]:
        ids = torch.tensor([pair.tokenizer(pair.prompt_format.prompt_from_text(prompt))["input_ids"]] * 2)
        torch.manual_seed(3)
        with torch.inference_mode():
            out = stock.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                                 adapter_names=["__base__", "default"], do_sample=True, temperature=0.7, top_p=0.9, max_new_tokens=MAX_NEW, eos_token_id=EOS,
                                 pad_token_id=pair.tokenizer.pad_token_id)
        new = out[:, ids.shape[1]:] if family == "gpt2" else out[:, 1:]
        expected = [split_generated(row, EOS)[0] for row in new.tolist()]
        [(base, dpo)] = generate_pair_results(pair, [prompt], max_new_tokens=MAX_NEW, temperature=0.7, top_p=0.9,
                                              seed=3)
        assert [base.token_ids, dpo.token_ids] == expected
