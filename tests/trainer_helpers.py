"""Shared pieces of the trainer tests (test_speed, test_ref_cache, test_seq2seq_dpo, test_precision): the word-level vocabulary and
tokenizer of the toy preference rows; LoRA perturbation comes from tiny_models (one copy for every test).
"""

from __future__ import annotations

import random

import torch
from tiny_models import perturb_lora  # noqa: F401  (re-exported for the trainer tests)
from tiny_models import word_tokenizer as _word_level
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast, T5Config, T5ForConditionalGeneration

# Prompt words p0..p9, chosen-reply words a0..a9, rejected-reply words b0..b9.
WORDS = ["<pad>", "</s>", "<unk>"] + [f"{p}{i}" for p in "pab" for i in range(10)]
PAD, EOS = 0, 1


def word_tokenizer(t5: bool) -> PreTrainedTokenizerFast:
    """Word-level tokenizer over WORDS; with `t5`, every encoded text ends with </s> as T5's tokenizer does."""
    return _word_level(WORDS, append_eos=t5, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")


def rows(n: int, seed: int) -> list[dict[str, str]]:
    """Widely varying completion lengths so that batches carry padding and buckets matter."""
    rng = random.Random(seed)

    def words(prefix: str, lo: int, hi: int) -> str:
        return " ".join(f"{prefix}{rng.randrange(10)}" for _ in range(rng.randint(lo, hi)))

    return [{"prompt": words("p", 2, 6), "chosen": words("a", 1, 12), "rejected": words("b", 1, 20)} for _ in range(n)]


def tiny_model(t5: bool):
    torch.manual_seed(0)
    if t5:
        return T5ForConditionalGeneration(T5Config(
            vocab_size=len(WORDS), d_model=32, d_ff=64, d_kv=8, num_layers=2, num_decoder_layers=2, num_heads=2,
            decoder_start_token_id=PAD, pad_token_id=PAD, eos_token_id=EOS))
    return GPT2LMHeadModel(GPT2Config(vocab_size=len(WORDS), n_embd=32, n_layer=2, n_head=2, n_positions=64,
                                      eos_token_id=EOS, pad_token_id=PAD))
