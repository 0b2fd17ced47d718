"""The one tokenization (`dpo_studio.data.tokenize.tokenize_pair`) gives the ids the trainers train on.

Causal LMs: the ids of a real `trl.DPOTrainer`'s tokenized train dataset (TRL 1.16's own code path) for three
tokenizers: the GPT-2-style byte-level BPE and the T5-style tokenizer of tests/tiny_models.py, and a Llama-style
SentencePiece tokenizer (BOS added, "▁" word starts, no pre-tokenizer) built here with `tokenizers`, for which
tokenizing the completion alone differs from TRL's prompt + completion (shown below, so these tests can fail). The
app's scorer (`generation.encode_replies_for_scoring`) gives the same ids. Encoder-decoders: `Seq2SeqDPOTrainer`'s
dataset, checked against ids written out independently.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch
from datasets import Dataset
from tiny_models import CORPUS, EOS, bpe_tokenizer
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast, T5Config, T5ForConditionalGeneration
from trl import DPOConfig, DPOTrainer

from dpo_studio.data.prompt_format import DECODER_ONLY_FORMAT, ENCODER_DECODER_FORMAT
from dpo_studio.data.tokenize import TokenizedPair, causal_fit, tokenize_pair
from dpo_studio.inference.generation import encode_replies_for_scoring
from dpo_studio.training.seq2seq_dpo import Seq2SeqDPOTrainer

pytestmark = pytest.mark.usefixtures("single_thread")

# (user text, reply a, reply b): rendered with the family's prompt format, as training and the scorer do.
CHATS = [
    ("How are you?", "I am fine, thanks for asking!", "What about pizza today"),
    ("Tell me a joke", "Why did the chicken cross the road?", "No.</s>"),  # a reply that already ends with EOS
    ("What is the weather like", "The weather is lovely and warm today.", "I really love pasta with friends"),
]
# Raw texts whose prompt ends inside a word: BPE merges across the boundary, so TRL's prompt ids are shorter than
# the tokenized prompt (the completion starts where the two tokenizations diverge).
RAW = [("Hello there, how are you do", "ing today?", "ne today?")]


def llama_style_tokenizer() -> PreTrainedTokenizerFast:
    """SentencePiece-style BPE laid out as transformers' Llama (legacy) fast tokenizer: the normalizer prepends "▁" and
    turns spaces into "▁", no pre-tokenizer, "<s>" added in front; merges learnt within words (as SentencePiece)."""
    backend = Tokenizer(models.BPE(unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=True)
    backend.train_from_iterator(CORPUS * 3, trainers.BpeTrainer(vocab_size=300, special_tokens=["<unk>", "<s>", "</s>"]))
    backend.pre_tokenizer = None
    backend.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    backend.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always", split=False)
    backend.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>", unk_token="<unk>")


TOKENIZERS = {"gpt2-bpe": lambda: bpe_tokenizer(seq2seq=False), "t5": lambda: bpe_tokenizer(seq2seq=True),
              "llama-sentencepiece": llama_style_tokenizer}


def causal_texts() -> list[tuple[str, str, str]]:
    fmt = DECODER_ONLY_FORMAT
    return [(fmt.prompt_from_text(p), fmt.render_completion(a), fmt.render_completion(b)) for p, a, b in CHATS] + RAW


def trl_tokenized(tokenizer, texts: list[tuple[str, str, str]], tmp_path) -> list[TokenizedPair]:
    """The ids of a real `trl.DPOTrainer`'s tokenized train dataset (a tiny GPT-2 of the tokenizer's vocabulary)."""
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=len(tokenizer), n_embd=16, n_layer=1, n_head=2, n_positions=128)
    args = DPOConfig(output_dir=str(tmp_path), report_to=[], bf16=False, use_cpu=True, gradient_checkpointing=False,
                     precompute_ref_log_probs=False, max_length=None)
    dataset = Dataset.from_list([{"prompt": p, "chosen": c, "rejected": r} for p, c, r in texts])
    trainer = DPOTrainer(model=GPT2LMHeadModel(config), ref_model=GPT2LMHeadModel(config), args=args,
                         train_dataset=dataset, processing_class=tokenizer)
    rows = trainer.train_dataset
    assert len(rows) == len(texts)
    return [TokenizedPair(row["prompt_ids"], row["chosen_ids"], row["rejected_ids"]) for row in rows]


@pytest.mark.parametrize("name", sorted(TOKENIZERS))
def test_causal_ids_equal_trl_dpo_trainers(name, tmp_path):
    tokenizer = TOKENIZERS[name]()
    texts = causal_texts()
    expected = trl_tokenized(tokenizer, texts, tmp_path)
    ours = [tokenize_pair(tokenizer, *t, encoder_decoder=False) for t in texts]
    assert ours == expected
    assert all(pair.chosen_ids[-1] == pair.rejected_ids[-1] == tokenizer.eos_token_id for pair in ours)
    # The common-prefix rule is exercised, not only the plain concatenation: the raw pair's prompt is cut short
    # (GPT-2's BPE merges across the boundary; T5's tokenizer ends the prompt alone with </s>).
    assert len(ours[-1].prompt_ids) < len(tokenizer(RAW[0][0])["input_ids"]) or name == "llama-sentencepiece"
    if name != "t5":  # EOS's text is appended only when missing (T5's tokenizer appends another </s> itself)
        assert ours[1].rejected_ids.count(tokenizer.eos_token_id) == 1


def separately_tokenized(tokenizer, prompt: str, completion: str) -> list[int]:
    """What the scorer did before: prompt and completion tokenized apart, EOS id appended."""
    return (tokenizer(prompt)["input_ids"] + tokenizer(completion, add_special_tokens=False)["input_ids"]
            + [tokenizer.eos_token_id])


def test_llama_style_tokenizer_differs_when_the_completion_is_tokenized_alone(tmp_path):
    """Why the scorer must not tokenize the completion alone: "▁" is prepended to it, an extra token TRL never sees."""
    tokenizer = llama_style_tokenizer()
    prompt, chosen, rejected = causal_texts()[0]
    trl_pair = trl_tokenized(tokenizer, [(prompt, chosen, rejected)], tmp_path)[0]
    assert trl_pair.prompt_ids[0] == tokenizer.bos_token_id
    alone = separately_tokenized(tokenizer, prompt, chosen)
    assert alone != trl_pair.prompt_ids + trl_pair.chosen_ids
    assert len(alone) == len(trl_pair.prompt_ids + trl_pair.chosen_ids) + 1  # the stray "▁"
    # For the GPT-2-style BPE and this prompt format the two ways agree: the old scorer was right by accident.
    bpe = bpe_tokenizer(seq2seq=False)
    bpe_pair = tokenize_pair(bpe, prompt, chosen, rejected, encoder_decoder=False)
    assert separately_tokenized(bpe, prompt, chosen) == bpe_pair.prompt_ids + bpe_pair.chosen_ids


@pytest.mark.parametrize("name", sorted(TOKENIZERS))
def test_scorer_ids_equal_trl_dpo_trainers(name, tmp_path):
    tokenizer = TOKENIZERS[name]()
    fmt = DECODER_ONLY_FORMAT
    texts = [(fmt.prompt_from_text(p), fmt.render_completion(a), fmt.render_completion(b)) for p, a, b in CHATS]
    for (prompt, reply_a, reply_b), trl_pair in zip(CHATS, trl_tokenized(tokenizer, texts, tmp_path)):
        enc_a, enc_b = encode_replies_for_scoring(tokenizer, fmt, False, prompt, reply_a, reply_b)
        for enc, completion in ((enc_a, trl_pair.chosen_ids), (enc_b, trl_pair.rejected_ids)):
            assert enc.input_ids == trl_pair.prompt_ids + completion
            assert enc.completion_ids == completion and enc.prompt_length == len(trl_pair.prompt_ids)


def test_seq2seq_ids_equal_seq2seq_dpo_trainers_and_an_independent_count(tmp_path):
    """T5's trainer is ours: its dataset, the function and the scorer agree with ids written out here."""
    tokenizer, fmt = bpe_tokenizer(seq2seq=True), ENCODER_DECODER_FORMAT
    texts = [(fmt.prompt_from_text(p), fmt.render_completion(a), fmt.render_completion(b)) for p, a, b in CHATS]
    config = T5Config(vocab_size=len(tokenizer), d_model=16, d_ff=32, d_kv=8, num_layers=1, num_heads=2,
                      decoder_start_token_id=0, pad_token_id=0, eos_token_id=EOS)
    args = DPOConfig(output_dir=str(tmp_path), report_to=[], bf16=False, use_cpu=True, gradient_checkpointing=False,
                     precompute_ref_log_probs=False, max_length=None)
    torch.manual_seed(0)
    trainer = Seq2SeqDPOTrainer(T5ForConditionalGeneration(config), ref_model=T5ForConditionalGeneration(config),
                                args=args, processing_class=tokenizer,
                                train_dataset=Dataset.from_list([dict(zip(("prompt", "chosen", "rejected"), t))
                                                                 for t in texts]))
    for (prompt, chosen, rejected), row, chat in zip(texts, trainer.train_dataset, CHATS):
        def completion(text: str) -> list[int]:
            ids = tokenizer(text.removesuffix("</s>"), add_special_tokens=False)["input_ids"]
            return ids + [EOS]

        independent = TokenizedPair(tokenizer(prompt)["input_ids"], completion(chosen), completion(rejected))
        assert independent.prompt_ids[-1] == EOS  # T5's tokenizer appends </s> to the encoder's text
        assert tokenize_pair(tokenizer, prompt, chosen, rejected, encoder_decoder=True) == independent
        assert TokenizedPair(row["prompt_ids"], row["chosen_ids"], row["rejected_ids"]) == independent
        enc_a, enc_b = encode_replies_for_scoring(tokenizer, fmt, True, *chat)
        assert (enc_a.input_ids, enc_a.completion_ids, enc_b.completion_ids) == (
            independent.prompt_ids, independent.chosen_ids, independent.rejected_ids)


def test_causal_fit_follows_trl_truncation():
    pair = TokenizedPair([1] * 5, [2] * 3, [3] * 6)  # longest row: 11 tokens
    assert pair.length == 11
    assert causal_fit(pair, None) == "fits" and causal_fit(pair, 11) == "fits"
    assert causal_fit(pair, 10) == "truncated"
    assert causal_fit(pair, 5) == "dropped"  # the prompt alone fills max_length: TRL filters the pair out
    assert causal_fit(pair, 5, "keep_end") == "truncated"  # keep_end keeps the completion's end: nothing dropped


def test_non_text_fields_are_refused_naming_the_field():
    with pytest.raises(TypeError, match="field 'chosen' must be a string"):
        tokenize_pair(bpe_tokenizer(seq2seq=False), "p", [{"role": "assistant", "content": "x"}], "r",
                      encoder_decoder=False)
