"""`--check-data`: read and validate the data exactly as a run would, and measure it with each family's tokenizer.

The data go through `training_data.prepare_data` (the data room's reader, row checks, split and caps: no second reader);
each family's pairs are rendered in its prompt format and tokenized by the one `data.tokenize.tokenize_pair`, as its
trainer does (TRL's `DPOTrainer` for causal LMs, `Seq2SeqDPOTrainer` for encoder-decoders), with the trainer's
truncation rule. Nothing is trained and nothing is written: the demo's tokenizer is trained in memory (seconds), a
Hub model's tokenizer is downloaded alone.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Any

from trl import DPOConfig

from dpo_studio.config.arguments import ModelArguments, ScriptArguments
from dpo_studio.data.reading import PreferencePair, to_dataset
from dpo_studio.data.tokenize import FIELDS, causal_fit, tokenize_pair, tokenize_seq2seq_row
from dpo_studio.models.families import Architecture, load_architecture, prepare_tokenizer, resolve_model_id


@dataclass
class SplitLengths:
    """Token lengths (prompt + the longer completion) of one split, and what `max_length` would do to it."""

    pairs: int
    min: int
    median: float
    max: int
    truncated: int  # pairs longer than max_length, cut to fit
    dropped: int  # causal LMs: pairs whose prompt alone fills max_length (TRL drops them; not in `truncated`)


def family_tokenizer(family: str, train: list[PreferencePair], script_args: ScriptArguments,
                     model_args: ModelArguments):
    """(tokenizer, architecture) that a run of `family` would train with."""
    if script_args.demo:
        from dpo_studio.models.demo import tokenizer_texts, train_tokenizer

        encoder_decoder = family == "t5"
        tokenizer = train_tokenizer(tokenizer_texts(train), script_args.demo_vocab_size, encoder_decoder)
        arch = Architecture(is_encoder_decoder=encoder_decoder, model_type="t5" if encoder_decoder else "gpt2")
    else:
        from transformers import AutoTokenizer

        model_id = resolve_model_id(family)
        arch = load_architecture(model_id, model_args.model_revision, script_args.trust_remote_code_models)
        tokenizer = AutoTokenizer.from_pretrained(model_id, revision=model_args.model_revision,
                                                  trust_remote_code=script_args.trust_remote_code_models)
    return prepare_tokenizer(tokenizer, arch), arch


def split_lengths(pairs: list[PreferencePair], tokenizer, arch: Architecture, max_length: int | None,
                  truncation_mode: str = "keep_start") -> SplitLengths:
    """Token lengths of `pairs` through the one `tokenize_pair`, and what the family's trainer does with them."""
    lengths, truncated, dropped = [], 0, 0
    for record in to_dataset(pairs, arch.prompt_format).to_list():
        tokens = tokenize_pair(tokenizer, *(record[field] for field in FIELDS), encoder_decoder=arch.is_encoder_decoder)
        lengths.append(tokens.length)
        if arch.is_encoder_decoder:  # Seq2SeqDPOTrainer: max_length bounds the prompt and each completion
            cut = tokenize_seq2seq_row(record, tokenizer, max_length, max_length, truncation_mode == "keep_end")
            truncated += any(cut[f"_truncated_{field}"] for field in FIELDS)
        else:  # TRL: a prompt that fills max_length drops the pair (keep_start), longer pairs are cut
            fit = causal_fit(tokens, max_length, truncation_mode)
            dropped += fit == "dropped"
            truncated += fit == "truncated"
    return SplitLengths(len(lengths), min(lengths), statistics.median(lengths), max(lengths), truncated, dropped)


def check_data(script_args: ScriptArguments, training_args: DPOConfig, model_args: ModelArguments) -> dict[str, Any]:
    """Validate the run's data and measure it per family; raises DataError / ConfigError like a run."""
    from dpo_studio.data.splits import prepare_data

    families = script_args.family_list()  # --model_name_or_path is folded into --models (inherited_flags.py)
    data = prepare_data(script_args, training_args.seed)
    report: dict[str, Any] = {"data": data.info, "max_length": training_args.max_length, "families": {}}
    for family in families:
        tokenizer, arch = family_tokenizer(family, data.train, script_args, model_args)
        report["families"][family] = {
            "architecture": arch.kind,
            **{split: split_lengths(pairs, tokenizer, arch, training_args.max_length, training_args.truncation_mode)
               for split, pairs in (("train", data.train), ("eval", data.eval))},
        }
    return report


def format_report(report: dict[str, Any]) -> str:
    """The lines `train_dpo.py --check-data` prints."""
    info = report["data"]
    lines = []
    for rep in info["load_reports"]:
        lines.append(f"{rep['source']}: {rep['rows_read']} rows read, {rep['rows_kept']} valid, "
                     f"{rep['rows_skipped']} skipped")
        lines += [f"  skipped: {example}" for example in rep["skipped_examples"]]
        if rep["extra_columns"]:
            lines.append(f"  extra columns (ignored): {', '.join(rep['extra_columns'])}")
    lines.append(f"pairs: train {info['train_pairs']}, eval {info['eval_pairs']} (eval: {info['eval_dataset']})")
    max_length = report["max_length"]
    header = f"{'family':<12} {'split':<6} {'pairs':>6} {'tokens min':>10} {'median':>7} {'max':>6} " \
             f"{'over max_length=' + str(max_length):>22}"
    lines += ["", "token lengths: prompt + the longer completion, as the trainer tokenizes them", header,
              "-" * len(header)]
    for family, entry in report["families"].items():
        for split in ("train", "eval"):
            s: SplitLengths = entry[split]
            over = f"{s.truncated} truncated" + (f", {s.dropped} dropped" if s.dropped else "")
            lines.append(f"{family:<12} {split:<6} {s.pairs:>6} {s.min:>10} {s.median:>7g} {s.max:>6} {over:>22}")
    return "\n".join(lines)
