"""Inference-safe architecture rules, shared by training (families.py) and serving (generation.py): which AutoModel
class loads an architecture, and how its tokenizer pads. Imports only transformers, so the Space app (no trl) can
use it; families.py builds its per-architecture table on top.
"""

from __future__ import annotations

from transformers import (
    AutoModelForCausalLM,
    AutoModelForSeq2SeqLM,
    PreTrainedTokenizerBase,
)


def auto_model_class(is_encoder_decoder: bool) -> type:
    """`AutoModelForSeq2SeqLM` for encoder-decoders (T5), else `AutoModelForCausalLM`."""
    return AutoModelForSeq2SeqLM if is_encoder_decoder else AutoModelForCausalLM


def prepare_tokenizer_padding(tokenizer: PreTrainedTokenizerBase, is_encoder_decoder: bool) -> PreTrainedTokenizerBase:
    """GPT-2 ships without a pad token: pad with EOS (masked out everywhere). Decoder-only generation continues from
    the last prompt token, so those batches are padded on the left."""
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if not is_encoder_decoder:
        tokenizer.padding_side = "left"
    return tokenizer
