"""Shared pieces of the trainer tests (test_speed, test_seq2seq_dpo, test_precision): the word-level vocabulary and
tokenizer of the toy preference rows, and LoRA B weights made non-zero so that the policy differs from its reference.
"""

from __future__ import annotations

import torch
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

# Prompt words p0..p9, chosen-reply words a0..a9, rejected-reply words b0..b9.
WORDS = ["<pad>", "</s>", "<unk>"] + [f"{p}{i}" for p in "pab" for i in range(10)]
PAD, EOS = 0, 1


def word_tokenizer(t5: bool) -> PreTrainedTokenizerFast:
    """Word-level tokenizer over WORDS; with `t5`, every encoded text ends with </s> as T5's tokenizer does."""
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    if t5:
        tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", EOS)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")


def perturb_lora(model: torch.nn.Module, seed: int = 0, scale: float = 0.3) -> None:
    """LoRA B starts at zero (policy == reference); give it seeded random values so the policy differs."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=gen) * scale)
