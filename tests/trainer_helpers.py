"""Shared pieces of the trainer tests (test_speed, test_seq2seq_dpo, test_precision): the word-level vocabulary and
tokenizer of the toy preference rows; LoRA perturbation comes from tiny_models (one copy for every test).
"""

from __future__ import annotations

from tiny_models import perturb_lora  # noqa: F401  (re-exported for the trainer tests)
from tiny_models import word_tokenizer as _word_level
from transformers import PreTrainedTokenizerFast

# Prompt words p0..p9, chosen-reply words a0..a9, rejected-reply words b0..b9.
WORDS = ["<pad>", "</s>", "<unk>"] + [f"{p}{i}" for p in "pab" for i in range(10)]
PAD, EOS = 0, 1


def word_tokenizer(t5: bool) -> PreTrainedTokenizerFast:
    """Word-level tokenizer over WORDS; with `t5`, every encoded text ends with </s> as T5's tokenizer does."""
    return _word_level(WORDS, append_eos=t5, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")
