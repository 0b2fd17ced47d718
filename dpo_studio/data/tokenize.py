"""The one tokenization of a preference pair (prompt, chosen, rejected), exactly as the trainer of each family does it.

Everyone calls `tokenize_pair`: the data check (`check-data`), the pipeline's truncation count, the app's scorer, and
our `Seq2SeqDPOTrainer` (through `tokenize_seq2seq_row`). `tests/test_tokenization.py` pins its ids to the ids of a
real `trl.DPOTrainer`'s tokenized dataset for GPT-2-style BPE, T5 and SentencePiece-style tokenizers.

* Causal LMs (TRL 1.16's `DPOTrainer`): EOS is appended to each completion's text unless it already ends with it;
  `prompt`, `prompt + chosen` and `prompt + rejected` are tokenized whole (special tokens included, e.g. a BOS), and
  the completions start where the tokenized prompt and prompt + completion first differ (the shorter of the two
  common prefixes), which is not always after the tokenized prompt (SentencePiece's word-start marker, merges across
  the boundary). Written here by hand because TRL has no function for it: it is the closure `tokenize_fn` inside the
  private `DPOTrainer._prepare_dataset`, whose pieces are TRL-private too (`trl.data_utils._tokenize`), and the app's
  Space ships without TRL. Only TRL's non-conversational branch applies: rows reach the trainer rendered as text by
  `PromptFormat`.
* Encoder-decoders (our `Seq2SeqDPOTrainer`; TRL 1.16 trains causal LMs only): the encoder reads `tokenizer(prompt)`
  (what generation feeds it; T5's tokenizer appends EOS) and each completion is tokenized alone, without special
  tokens, ending with EOS exactly once.

Imports transformers' types only (no TRL, no datasets): the inference-only Space uses it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from transformers import PreTrainedTokenizerBase

FIELDS = ("prompt", "chosen", "rejected")


@dataclass(frozen=True)
class TokenizedPair:
    """Token ids of one preference pair as the trainer sees them; completions end with EOS.

    Causal: the trainer's rows are `prompt_ids + chosen_ids` and `prompt_ids + rejected_ids`. Encoder-decoder: the
    encoder reads `prompt_ids`, the decoder is taught each completion."""

    prompt_ids: list[int]
    chosen_ids: list[int]
    rejected_ids: list[int]

    @property
    def length(self) -> int:
        """Prompt + the longer completion, in tokens."""
        return len(self.prompt_ids) + max(len(self.chosen_ids), len(self.rejected_ids))


def tokenize_pair(tokenizer: PreTrainedTokenizerBase, prompt: str, chosen: str, rejected: str, *,
                  encoder_decoder: bool) -> TokenizedPair:
    """Tokenize one pair of rendered texts exactly as the family's trainer does (see the module docstring)."""
    for field, text in zip(FIELDS, (prompt, chosen, rejected)):
        if not isinstance(text, str):
            raise TypeError(f"field '{field}' must be a string to be tokenized, got {type(text).__name__} "
                            "(render conversational rows with PromptFormat first)")
    if encoder_decoder:
        return _seq2seq_pair(tokenizer, prompt, chosen, rejected)
    return _causal_pair(tokenizer, prompt, chosen, rejected)


def _common_prefix_length(ids: list[int], other_ids: list[int]) -> int:
    """As `trl.data_utils.common_prefix_length` (not imported: the Space has no TRL)."""
    length = 0
    for token, other in zip(ids, other_ids):
        if token != other:
            break
        length += 1
    return length


def _causal_pair(tokenizer: PreTrainedTokenizerBase, prompt: str, chosen: str, rejected: str) -> TokenizedPair:
    """TRL 1.16 `DPOTrainer._prepare_dataset` (`add_eos`, then `tokenize_fn`'s non-conversational branch)."""
    eos = tokenizer.eos_token
    if eos is None:
        raise ValueError(f"tokenizer {type(tokenizer).__name__} has no eos_token")
    prompt_ids = list(tokenizer(text=prompt)["input_ids"])
    full = [list(tokenizer(text=prompt + (text if text.endswith(eos) else text + eos))["input_ids"])
            for text in (chosen, rejected)]
    start = min(_common_prefix_length(prompt_ids, ids) for ids in full)
    return TokenizedPair(prompt_ids[:start], full[0][start:], full[1][start:])


def _terminated(ids: list[int], eos_id: int) -> list[int]:
    """`ids` ending with EOS exactly once (texts that already end in "</s>" would otherwise get a second one)."""
    while ids and ids[-1] == eos_id:
        ids = ids[:-1]
    return ids + [eos_id]


def _seq2seq_pair(tokenizer: PreTrainedTokenizerBase, prompt: str, chosen: str, rejected: str) -> TokenizedPair:
    eos_id = tokenizer.eos_token_id
    if eos_id is None:
        raise ValueError(f"tokenizer {type(tokenizer).__name__} has no eos_token")
    completions = [_terminated(list(tokenizer(text, add_special_tokens=False)["input_ids"]), eos_id)
                   for text in (chosen, rejected)]
    return TokenizedPair(list(tokenizer(prompt)["input_ids"]), *completions)


def truncate_ids(ids: list[int], limit: int | None, eos_id: int, keep_end: bool) -> tuple[list[int], bool]:
    """Cut `ids` to at most `limit` tokens; a trailing EOS stays the last token (as T5 tokenizers truncate)."""
    if limit is None or len(ids) <= limit:
        return ids, False
    tail = [eos_id] if ids[-1] == eos_id else []
    body, room = ids[: len(ids) - len(tail)], limit - len(tail)
    body = body[len(body) - room :] if keep_end else body[:room]
    return body + tail, True


def tokenize_seq2seq_row(
    example: dict[str, Any],
    tokenizer: PreTrainedTokenizerBase,
    max_prompt_length: int | None,
    max_completion_length: int | None,
    keep_end: bool,
) -> dict[str, Any]:
    """One dataset row as `Seq2SeqDPOTrainer` trains on it: `tokenize_pair`, then its truncation rule (the prompt
    keeps its start or end, completions their start), with a `_truncated_<field>` flag per field (module level so
    `datasets` can hash it)."""
    eos_id = tokenizer.eos_token_id
    if "prompt_ids" in example:  # already tokenized (e.g. a prepared dataset passed again to `evaluate`)
        pair = TokenizedPair(list(example["prompt_ids"]), *(_terminated(list(example[f"{side}_ids"]), eos_id)
                                                           for side in ("chosen", "rejected")))
    else:
        pair = tokenize_pair(tokenizer, *(example[field] for field in FIELDS), encoder_decoder=True)
    prompt_ids, prompt_cut = truncate_ids(pair.prompt_ids, max_prompt_length, eos_id, keep_end)
    chosen_ids, chosen_cut = truncate_ids(pair.chosen_ids, max_completion_length, eos_id, keep_end=False)
    rejected_ids, rejected_cut = truncate_ids(pair.rejected_ids, max_completion_length, eos_id, keep_end=False)
    return {
        "prompt_ids": prompt_ids, "chosen_ids": chosen_ids, "rejected_ids": rejected_ids,
        "_truncated_prompt": prompt_cut, "_truncated_chosen": chosen_cut, "_truncated_rejected": rejected_cut,
    }


def causal_fit(pair: TokenizedPair, max_length: int | None, truncation_mode: str = "keep_start") -> str:
    """What TRL 1.16's `DPOTrainer` does with a pair under `max_length`: "dropped" (`keep_start` and the prompt alone
    fills it: `_prepare_dataset` filters the pair out), "truncated" (the collator cuts a row to `max_length`), "fits"."""
    if max_length is None:
        return "fits"
    if truncation_mode == "keep_start" and len(pair.prompt_ids) >= max_length:
        return "dropped"
    return "truncated" if pair.length > max_length else "fits"
