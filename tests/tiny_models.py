"""Tiny GPT-2 and T5 families on disk in `train_dpo.py`'s output layout, for app tests (no network).

`build_models_dir(root)` writes root/<family>/{base,adapter,merged} for "gpt2" and "t5": a randomly initialised
model + a byte-level BPE tokenizer trained on a few sentences, a LoRA adapter whose B matrices are perturbed (so DPO
differs from base), the merged model, `prompt_format.json` and `dpo_config.json` (beta) next to adapter and merged.
`plain_generate` is an independent, unbatched `generate` on a plain model, to check the app's outputs against.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSeq2SeqLM,
    AutoTokenizer,
    GPT2Config,
    GPT2LMHeadModel,
    PreTrainedTokenizerFast,
    T5Config,
    T5ForConditionalGeneration,
)

from dpo_studio.data.prompt_format import DECODER_ONLY_FORMAT, ENCODER_DECODER_FORMAT

PAD, EOS, UNK = 0, 1, 2
BETA = 0.25
FAMILIES = ("gpt2", "t5")
CORPUS = [
    "Hello there, how are you doing today? I am fine, thanks for asking!",
    "What is your favourite food? I really love pizza and pasta with friends.",
    "User: tell me a joke\nAssistant: Why did the chicken cross the road? To get to the other side.",
    "respond: User: what is the weather like\nThe weather is lovely and warm today, let's go outside.",
    "How do I keep succulents happy? Give them bright light and water only when the soil is dry.",
]


def bpe_tokenizer(seq2seq: bool, corpus: list[str] = CORPUS, vocab_size: int = 320) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer trained on `corpus`; seq2seq: appends </s> and pads with <pad> like T5's, else
    no pad token (like GPT-2's: the code under test must fall back to EOS)."""
    backend = Tokenizer(models.BPE(unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    # Alphabet learnt from the (ASCII) corpus only, so every token decodes to readable text (screenshots).
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<pad>", "</s>", "<unk>"])
    backend.train_from_iterator(corpus * 3, trainer)
    if seq2seq:  # T5 appends </s> to every encoded text
        backend.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", EOS)])
        return PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="</s>", unk_token="<unk>",
                                       pad_token="<pad>")
    return PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="</s>", unk_token="<unk>")


def word_tokenizer(words: list[str], *, append_eos: bool = False, **special_tokens: str) -> PreTrainedTokenizerFast:
    """A whitespace word-level tokenizer over `words` (token id = position); `append_eos` adds </s> like T5's.
    `special_tokens`: e.g. pad_token="<pad>", eos_token="</s>", unk_token="<unk>" (each must be in `words`)."""
    backend = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token=special_tokens.get("unk_token")))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    if append_eos:
        backend.post_processor = processors.TemplateProcessing(single="$A </s>",
                                                               special_tokens=[("</s>", words.index("</s>"))])
    return PreTrainedTokenizerFast(tokenizer_object=backend, **special_tokens)


def perturb_lora(model: torch.nn.Module, seed: int = 0, scale: float = 0.3) -> None:
    """LoRA B starts at zero (policy == reference, DPO == base); seeded random values make them differ."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=gen) * scale)


def _suppress_eos(model: torch.nn.Module) -> None:
    """Zero the special tokens' output embeddings: their logits are 0 while the best of ~300 random logits is
    clearly positive, so greedy replies are non-empty text and run to max_new_tokens (which makes caps visible)."""
    with torch.no_grad():
        model.get_output_embeddings().weight[[PAD, EOS, UNK]] = 0.0


def build_family(root: Path, family: str, *, with_adapter: bool = True, suppress_eos: bool = True) -> dict[str, Path]:
    """Write root/<family>/{base, adapter (if with_adapter), merged}; returns the folders. `suppress_eos`: replies
    run to max_new_tokens (see _suppress_eos); without it the random models may end early."""
    torch.manual_seed(0 if family == "gpt2" else 1)
    seq2seq = family == "t5"
    tokenizer = bpe_tokenizer(seq2seq)
    vocab = len(tokenizer)
    if seq2seq:
        config = T5Config(vocab_size=vocab, d_model=32, d_ff=64, d_kv=8, num_layers=2, num_heads=2,
                          decoder_start_token_id=PAD, pad_token_id=PAD, eos_token_id=EOS,
                          tie_word_embeddings=False)  # untied: zeroing output rows keeps input embeddings
        model, targets, fmt, extra = T5ForConditionalGeneration(config), ["q", "v"], ENCODER_DECODER_FORMAT, {}
    else:
        config = GPT2Config(n_layer=2, n_embd=32, n_head=2, n_positions=256, vocab_size=vocab, bos_token_id=EOS,
                            eos_token_id=EOS, initializer_range=0.3)
        model, targets, fmt = GPT2LMHeadModel(config), ["c_attn"], DECODER_ONLY_FORMAT
        extra = {"fan_in_fan_out": True}  # GPT-2's Conv1D stores weights transposed
    if suppress_eos:
        _suppress_eos(model)
    model.generation_config.max_length = None  # max_new_tokens alone decides
    dirs = {name: root / family / name for name in ("base", "adapter", "merged")}
    model.save_pretrained(dirs["base"])
    tokenizer.save_pretrained(dirs["base"])
    model = type(model).from_pretrained(dirs["base"])  # so the adapter records base_model_name_or_path

    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=targets, **extra))
    perturb_lora(peft_model, seed=0 if family == "gpt2" else 1, scale=0.5)
    settings = json.dumps({"beta": BETA, "loss_type": ["sigmoid"], "base_model": str(dirs["base"])})
    if with_adapter:
        peft_model.save_pretrained(dirs["adapter"])
    merged = peft_model.merge_and_unload()
    merged.save_pretrained(dirs["merged"])
    for name in ("adapter", "merged") if with_adapter else ("merged",):
        tokenizer.save_pretrained(dirs[name])
        fmt.save(dirs[name])
        (dirs[name] / "dpo_config.json").write_text(settings)
    if not with_adapter:
        del dirs["adapter"]
    return dirs


def build_models_dir(root: Path, families: tuple[str, ...] = FAMILIES, **kwargs) -> dict[str, dict[str, Path]]:
    """A `train_dpo.py`-style output folder with the given families."""
    return {family: build_family(root, family, **kwargs) for family in families}


def load_plain(path: Path, family: str):
    """A plain (non-PEFT) model from a folder, in eval mode."""
    cls = AutoModelForSeq2SeqLM if family == "t5" else AutoModelForCausalLM
    return cls.from_pretrained(path).eval()


@torch.inference_mode()
def plain_generate(model_dir: Path, family: str, user_text: str, max_new_tokens: int) -> str:
    """Greedy `generate` on one plain model with its own tokenizer and prompt format, decoded like the app."""
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    fmt = ENCODER_DECODER_FORMAT if family == "t5" else DECODER_ONLY_FORMAT
    ids = torch.tensor([tokenizer(fmt.prompt_from_text(user_text))["input_ids"]])
    out = load_plain(model_dir, family).generate(
        input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=max_new_tokens,
        eos_token_id=EOS, pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else EOS,
    )
    new = out[0, 1:] if family == "t5" else out[0, ids.shape[1]:]
    new = new.tolist()
    if EOS in new:
        new = new[: new.index(EOS)]
    return tokenizer.decode(new, skip_special_tokens=True).strip()


def free_port() -> int:
    """A free TCP port on 127.0.0.1 for a test server."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def ask_compare(proc, port: int, family: str, max_new_tokens: int, timeout_s: float) -> tuple[str, str] | None:
    """The app's `/compare` answer (greedy) from the server `proc` started on `port`, polling until it is up;
    None when it exits or does not answer within `timeout_s`."""
    import time

    from gradio_client import Client

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            client = Client(f"http://127.0.0.1:{port}/", verbose=False, analytics_enabled=False)
            return client.predict("Any tips about tea?", family, max_new_tokens, 0.0, api_name="/compare")
        except Exception:  # noqa: BLE001 - not up yet
            time.sleep(0.5)
    return None


def build_round(models_dir: Path, root: Path, family: str, seed: int) -> dict[str, Path]:
    """A later DPO round of `models_dir`'s family: a LoRA of another seed on the same base, written as
    root/<family>/{adapter, merged} (what a second `train_dpo.py` run writes)."""
    base_dir = models_dir / family / "base"
    seq2seq = family == "t5"
    model_class = T5ForConditionalGeneration if seq2seq else GPT2LMHeadModel
    targets, extra = (["q", "v"], {}) if seq2seq else (["c_attn"], {"fan_in_fan_out": True})
    peft_model = get_peft_model(model_class.from_pretrained(base_dir),
                                LoraConfig(r=4, lora_alpha=8, target_modules=targets, **extra))
    perturb_lora(peft_model, seed=seed, scale=0.5)
    dirs = {name: root / family / name for name in ("adapter", "merged")}
    peft_model.save_pretrained(dirs["adapter"])
    peft_model.merge_and_unload().save_pretrained(dirs["merged"])
    tokenizer = PreTrainedTokenizerFast.from_pretrained(base_dir)
    fmt = ENCODER_DECODER_FORMAT if seq2seq else DECODER_ONLY_FORMAT
    for folder in dirs.values():
        tokenizer.save_pretrained(folder)
        fmt.save(folder)
        (folder / "dpo_config.json").write_text(json.dumps({"beta": BETA, "loss_type": ["sigmoid"],
                                                            "base_model": str(base_dir)}))
    return dirs
