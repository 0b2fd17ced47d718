"""The offline demo's base models: a tokenizer trained on the bundled data, small GPT-2- and T5-architecture models
built from config, and a short supervised warm start on both reply styles so the base model can already produce
warm and formal replies (DPO then shifts it towards the preferred one). No network is needed.
"""

from __future__ import annotations

import tempfile
from typing import Iterable

import torch
from datasets import Dataset
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import (
    DataCollatorForSeq2Seq,
    GenerationConfig,
    GPT2Config,
    GPT2LMHeadModel,
    PreTrainedModel,
    PreTrainedTokenizerFast,
    T5Config,
    T5ForConditionalGeneration,
    Trainer,
    TrainingArguments,
)

from dpo_studio.data.prompt_format import PromptFormat
from dpo_studio.data.reading import PreferencePair
from dpo_studio.models.families import Architecture, architecture_of

GPT2_SPECIALS = {"eos": "<|endoftext|>"}
T5_SPECIALS = {"pad": "<pad>", "eos": "</s>", "unk": "<unk>"}


def tokenizer_texts(pairs) -> list[str]:
    """What the demo tokenizer learns from: every reply and every prompt message of the training pairs."""
    return [text for pair in pairs for text in (pair.chosen, pair.rejected, *[c for _, c in pair.messages])]


def train_tokenizer(texts: Iterable[str], vocab_size: int, encoder_decoder: bool) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer trained on `texts`, with GPT-2-style or T5-style special tokens.

    Byte-level BPE (GPT-2's scheme) round-trips any text exactly, which keeps generated text readable for both
    families; the T5 variant appends `</s>` to encoder inputs as T5's own tokenizer does.
    """
    specials = T5_SPECIALS if encoder_decoder else GPT2_SPECIALS
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(specials.values()),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    if encoder_decoder:
        eos_id = tokenizer.token_to_id(specials["eos"])
        tokenizer.post_processor = processors.TemplateProcessing(
            single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", eos_id)]
        )
        return PreTrainedTokenizerFast(
            tokenizer_object=tokenizer, pad_token="<pad>", eos_token="</s>", unk_token="<unk>", model_max_length=512
        )
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    eos = specials["eos"]
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token=eos, eos_token=eos, unk_token=eos, pad_token=eos, model_max_length=512,
        padding_side="left",
    )


def build_model(tokenizer: PreTrainedTokenizerFast, encoder_decoder: bool, hidden: int, layers: int, seed: int) -> PreTrainedModel:
    """A small randomly initialised GPT-2 or T5 sized for a CPU demo."""
    torch.manual_seed(seed)
    heads = 4
    if encoder_decoder:
        config = T5Config(
            vocab_size=len(tokenizer), d_model=hidden, d_kv=hidden // heads, d_ff=hidden * 2, num_layers=layers,
            num_decoder_layers=layers, num_heads=heads, dropout_rate=0.0, feed_forward_proj="relu",
            pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
            decoder_start_token_id=tokenizer.pad_token_id, tie_word_embeddings=True,
        )
        model = T5ForConditionalGeneration(config)
    else:
        config = GPT2Config(
            vocab_size=len(tokenizer), n_positions=512, n_embd=hidden, n_layer=layers, n_head=heads,
            resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
            bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
        model = GPT2LMHeadModel(config)
    model.generation_config = GenerationConfig(
        max_new_tokens=64, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        decoder_start_token_id=tokenizer.pad_token_id if encoder_decoder else None,
    )
    return model


def sft_features(
    tokenizer: PreTrainedTokenizerFast, arch: Architecture, prompt: str, completion: str
) -> dict[str, list[int]]:
    """Tokenise one (prompt, completion) the way DPO training will see it; loss only on the completion + EOS."""
    limit = tokenizer.model_max_length  # over-long pairs keep their start, as DPO training truncates them
    completion_ids = tokenizer(completion, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    if arch.is_encoder_decoder:
        return {"input_ids": tokenizer(prompt)["input_ids"][:limit], "labels": completion_ids[:limit]}
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    input_ids = (prompt_ids + completion_ids)[:limit]
    return {"input_ids": input_ids, "labels": ([-100] * len(prompt_ids) + completion_ids)[:limit]}


def warm_start(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerFast,
    pairs: list[PreferencePair],
    prompt_format: PromptFormat,
    epochs: float,
    learning_rate: float,
    seed: int,
    use_cpu: bool | None = None,
) -> list[dict]:
    """Supervised warm start on both the chosen and the rejected replies; returns the Trainer's log history.
    `use_cpu`: train on the CPU (None: unless there is a GPU), as the DPO run that follows does.

    Args:
        pairs: the training pairs; each prompt is rendered with `prompt_format` as DPO training will see it.
        epochs, learning_rate, seed: of the supervised run (`--demo-sft-epochs`, `--demo-sft-learning-rate`).
    """
    arch = architecture_of(model.config)
    features = []
    for pair in pairs:
        prompt = prompt_format.render_prompt(pair.message_dicts())
        for reply in (pair.chosen, pair.rejected):
            features.append(sft_features(tokenizer, arch, prompt, prompt_format.render_completion(reply)))
    padding_side = tokenizer.padding_side
    tokenizer.padding_side = "right"  # labels and inputs padded at the end; generation code pads left itself
    with tempfile.TemporaryDirectory() as scratch:
        args = TrainingArguments(
            output_dir=scratch, num_train_epochs=epochs, learning_rate=learning_rate, per_device_train_batch_size=16,
            lr_scheduler_type="cosine", warmup_steps=10, logging_steps=20, save_strategy="no", report_to=[],
            seed=seed, use_cpu=not torch.cuda.is_available() if use_cpu is None else use_cpu, disable_tqdm=False,
            train_sampling_strategy="group_by_length",  # replies vary in length: batch similar ones, pad less
        )
        collator = DataCollatorForSeq2Seq(tokenizer, model=model if arch.is_encoder_decoder else None, padding=True)
        trainer = Trainer(model=model, args=args, train_dataset=Dataset.from_list(features), data_collator=collator)
        trainer.train()
        history = list(trainer.state.log_history)
    tokenizer.padding_side = padding_side
    model.eval()
    return history
