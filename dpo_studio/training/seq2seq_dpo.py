"""DPO for encoder-decoder models (T5, BART, ...) on top of TRL's `DPOTrainer`.

Why this module exists: TRL 1.x removed encoder-decoder support from `DPOTrainer`. Its batches are causal
(`prompt + completion` in one row) and its fused LM head (`trl.trainer.utils.add_fused_lm_head`) runs
`model.base_model` as a decoder-only backbone, so a T5 model fails inside its forward pass.

`Seq2SeqDPOTrainer` keeps TRL's `_compute_loss` *unchanged* (every loss type, f-divergences, LD-DPO, WPO weighting,
metrics, PEFT reference through disabled adapters, precomputed reference log-probs) and only changes what that
method is fed:

* `_prepare_dataset` tokenizes the prompt for the encoder and each completion for the decoder (`data.tokenize`);
* `DataCollatorForSeq2SeqPreference` builds one encoder row per pair and `[chosen; rejected]` decoder rows that start
  with `decoder_start_token_id`, with a `completion_mask` that is 0 on the start token. TRL then computes
  `labels = input_ids.masked_fill(completion_mask == 0, -100)` and reads `completion_mask[:, 1:]`, which is exactly
  teacher forcing: decoder input `input_ids[:, :-1]`, predicted label `input_ids[:, 1:]`;
* `Seq2SeqPreferenceForward` is what TRL calls in place of the model (handed over by the public `compute_loss` and
  `compute_ref_log_probs`, see `trainer_seams`): `forward(..., fused_lm_head=True)` runs the encoder once per pair,
  reuses its states for the chosen and the rejected rows, and returns TRL's `FusedCausalLMOutput`. The model itself
  is not changed.

Supported TRL range: >=1.16,<1.17. The code depends on the batch contract of `DPOTrainer._compute_loss` and
`compute_ref_log_probs` (keys, `[chosen; rejected]` order, `fused_lm_head=True`, `FusedCausalLMOutput` fields), which
is private API; an import outside that range raises (older) or warns (newer).
"""

from __future__ import annotations

import contextlib
import copy
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import trl
from accelerate.utils import is_peft_model
from datasets import Dataset, IterableDataset
from packaging.version import Version
from transformers import AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase
from transformers.data.data_collator import DataCollatorMixin
from transformers.modeling_outputs import BaseModelOutput, Seq2SeqLMOutput
from trl import DPOConfig, DPOTrainer

_TRL_SUPPORTED = "trl>=1.16,<1.17"
_trl_version = Version(trl.__version__)
if _trl_version.release[:2] < (1, 16):
    raise ImportError(
        f"dpo_studio.training.seq2seq_dpo needs {_TRL_SUPPORTED} (DPOTrainer._compute_loss batch contract); "
        f"found trl {trl.__version__}"
    )
if _trl_version.release[:2] >= (1, 17):
    warnings.warn(
        f"dpo_studio.training.seq2seq_dpo is tested with {_TRL_SUPPORTED}; trl {trl.__version__} may have changed the private "
        "DPOTrainer._compute_loss batch contract it relies on; run tests/test_seq2seq_dpo.py before trusting results.",
        stacklevel=2,
    )

from trl.trainer.utils import (  # noqa: E402  (after the version check)
    FusedCausalLMOutput,
    create_model_from_path,
    entropy_from_logits,
    pad,
    selective_log_softmax,
)

from dpo_studio.data.tokenize import tokenize_seq2seq_row  # noqa: E402
from dpo_studio.training.fused_output import FUSED_OUTPUT_FIELDS, fused_output  # noqa: E402
from dpo_studio.training.trainer_seams import PreferenceForwardSeams  # noqa: E402

__all__ = [
    "SUPPORTED_LOSS_TYPES",
    "DataCollatorForSeq2SeqPreference",
    "Seq2SeqDPOTrainer",
    "Seq2SeqPreferenceForward",
    "disable_functional_dropout",
]

# Every TRL 1.16 loss type only needs per-sequence log-probs, the completion masks and per-token log-probs (sft), all
# of which the seq2seq batch provides with the same shapes as the causal one, so all of them are supported.
SUPPORTED_LOSS_TYPES = frozenset(
    {
        "sigmoid",
        "hinge",
        "ipo",
        "exo_pair",
        "nca_pair",
        "robust",
        "bco_pair",
        "sppo_hard",
        "aot",
        "aot_unpaired",
        "apo_zero",
        "apo_down",
        "discopop",
        "sft",
        "sigmoid_norm",
    }
)

# Inputs the teacher-forced seq2seq forward derives from the preference batch itself.
_TEACHER_FORCING_KEYS = (
    "decoder_input_ids",
    "decoder_attention_mask",
    "decoder_inputs_embeds",
    "inputs_embeds",
    "encoder_outputs",
    "use_cache",
)


# --------------------------------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------------------------------


@dataclass
class DataCollatorForSeq2SeqPreference(DataCollatorMixin):
    """Pads preference examples for an encoder-decoder model, in the layout TRL's `_compute_loss` expects.

    Each example holds `prompt_ids`, `chosen_ids`, `rejected_ids` (completions already end with EOS) and optionally
    `ref_chosen_logps` / `ref_rejected_logps`. Returns, for B examples:

    - `encoder_input_ids`, `encoder_attention_mask`: `[B, Lp]`, right-padded prompts, one row per pair;
    - `input_ids`: `[2B, 1 + Lc]` decoder rows `[decoder_start] + completion`, chosen rows first then rejected rows;
    - `attention_mask`: `[2B, 1 + Lc]` decoder mask (1 on the start token and the completion);
    - `completion_mask`: `[2B, 1 + Lc]`, 0 on the start token and padding, 1 on completion tokens (EOS included);
    - `ref_chosen_logps`, `ref_rejected_logps`: `[B]` when present in the examples.

    Truncation is done by `Seq2SeqDPOTrainer._prepare_dataset`, so this collator does not truncate.
    """

    pad_token_id: int
    decoder_start_token_id: int
    pad_to_multiple_of: int | None = None
    return_tensors: str = "pt"

    def torch_call(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        prompts = [torch.tensor(ex["prompt_ids"], dtype=torch.long) for ex in examples]
        completions = [ex["chosen_ids"] for ex in examples] + [ex["rejected_ids"] for ex in examples]
        decoder_rows = [torch.tensor([self.decoder_start_token_id, *ids], dtype=torch.long) for ids in completions]
        completion_masks = [torch.tensor([0] + [1] * len(ids), dtype=torch.long) for ids in completions]

        def _pad(tensors: list[torch.Tensor], value: int) -> torch.Tensor:
            return pad(tensors, padding_value=value, padding_side="right", pad_to_multiple_of=self.pad_to_multiple_of)

        output = {
            "encoder_input_ids": _pad(prompts, self.pad_token_id),
            "encoder_attention_mask": _pad([torch.ones_like(p) for p in prompts], 0),
            "input_ids": _pad(decoder_rows, self.pad_token_id),
            "attention_mask": _pad([torch.ones_like(r) for r in decoder_rows], 0),
            "completion_mask": _pad(completion_masks, 0),
        }
        for key in ("ref_chosen_logps", "ref_rejected_logps"):
            if key in examples[0]:
                output[key] = torch.tensor([ex[key] for ex in examples])
        return output


# --------------------------------------------------------------------------------------------------------------------
# Model forward
# --------------------------------------------------------------------------------------------------------------------


def _unwrap_peft(model: torch.nn.Module) -> torch.nn.Module:
    return model.get_base_model() if is_peft_model(model) else model


def _teacher_forced_forward(
    model: PreTrainedModel,
    forward: Callable[..., Any],
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    encoder_input_ids: torch.Tensor,
    encoder_attention_mask: torch.Tensor | None,
    **kwargs: Any,
) -> Any:
    """Run the encoder once on the B prompts and the decoder (via `forward`) on the 2B (or kB) decoder rows."""
    n_pairs, n_rows = encoder_input_ids.size(0), input_ids.size(0)
    if n_rows % n_pairs:
        raise ValueError(f"decoder batch ({n_rows} rows) is not a multiple of the encoder batch ({n_pairs} prompts)")
    repeats = n_rows // n_pairs
    if encoder_attention_mask is None:
        encoder_attention_mask = torch.ones_like(encoder_input_ids)
    hidden = model.get_encoder()(input_ids=encoder_input_ids, attention_mask=encoder_attention_mask)[0]
    # Row i of every block of n_pairs decoder rows belongs to prompt i: batch is [chosen; rejected].
    hidden = torch.cat([hidden] * repeats, dim=0)
    cross_mask = torch.cat([encoder_attention_mask] * repeats, dim=0)
    return forward(
        attention_mask=cross_mask,
        encoder_outputs=BaseModelOutput(last_hidden_state=hidden),
        decoder_input_ids=input_ids[:, :-1],
        decoder_attention_mask=None if attention_mask is None else attention_mask[:, :-1],
        use_cache=False,
        **kwargs,
    )


def _labelled_values(logits: torch.Tensor, targets: torch.Tensor, outputs: tuple[str, ...]) -> list[Any]:
    """Per-token values (FUSED_OUTPUT_FIELDS order, None where not requested) of `targets` under `logits`, both for
    the labelled positions only (`[N, V]`, `[N]`).

    Counterpart of TRL's `ChunkedLogProbFunction` (which works from hidden states and the LM head weight): here the
    model's own forward produced the logits, so architecture details (T5's output scaling, BART's final_logits_bias)
    are the model's business. Log-probs and entropy are TRL's functions; TRL has none for the other three.
    """
    selected = logits.float()
    values: dict[str, torch.Tensor | None] = dict.fromkeys(FUSED_OUTPUT_FIELDS)
    # One row of N tokens: TRL's fp32 path loops over rows, so this is a single logsumexp.
    values["log_probs"] = selective_log_softmax(selected.unsqueeze(0), targets.unsqueeze(0)).squeeze(0)
    with torch.no_grad():  # metrics / WPO weights only, as in TRL
        if "entropy" in outputs:
            values["entropy"] = entropy_from_logits(selected)
        if "log_sum_sq_probs" in outputs:  # log sum p^2 = logsumexp(2z) - 2 logsumexp(z)
            values["log_sum_sq_probs"] = torch.logsumexp(2 * selected, dim=-1) - 2 * torch.logsumexp(selected, dim=-1)
        if "mean_logits" in outputs:
            values["mean_logits"] = selected.mean(-1)
        if "is_top1" in outputs:
            values["is_top1"] = selected.argmax(-1) == targets
    return list(values.values())


def _fused_seq2seq_forward(
    model: PreTrainedModel,
    forward: Callable[..., Any],
    outputs: tuple[str, ...],
    input_ids: torch.Tensor,
    labels: torch.Tensor,
    encoder_input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    encoder_attention_mask: torch.Tensor | None = None,
    num_items_in_batch: int | torch.Tensor | None = None,
    **kwargs: Any,
) -> FusedCausalLMOutput:
    model_outputs = _teacher_forced_forward(
        model, forward, input_ids, attention_mask, encoder_input_ids, encoder_attention_mask, **kwargs
    )
    shifted_labels = labels[:, 1:].to(model_outputs.logits.device)
    mask = shifted_labels != -100
    values = _labelled_values(model_outputs.logits[mask], shifted_labels[mask], outputs)
    return fused_output(values, mask, num_items_in_batch)


class Seq2SeqPreferenceForward:
    """Seq2seq counterpart of TRL's `add_fused_lm_head`, as a callable `Seq2SeqDPOTrainer` hands TRL in place of the
    model (the model itself is not changed).

    `forward(input_ids=dec, attention_mask=dec_mask, encoder_input_ids=enc, encoder_attention_mask=enc_mask,
    labels=labels, fused_lm_head=True)` (the batch of `DataCollatorForSeq2SeqPreference`) runs the encoder once on the
    B prompts, the decoder on the 2B rows, and returns a `FusedCausalLMOutput` whose per-token fields have shape
    `[2B, Lc]`, aligned with `labels[:, 1:]`. The same batch without `fused_lm_head` gives teacher-forced logits;
    calls without `encoder_input_ids` (generation) go to `model` unchanged.

    Args:
        model: the model TRL was given (PEFT, accelerate-prepared, DDP-wrapped or not).
        base: the encoder-decoder `PreTrainedModel` inside it; the encoder and decoder calls go to it directly (LoRA
            layers live inside its modules, so they and PEFT's disabled-adapter reference apply).
        outputs: per-token fields to compute (FUSED_OUTPUT_FIELDS).
        autocast: context manager factory the direct calls run under (the trainer's `accelerator.autocast`).
        run_buckets: `speed.batching.run_buckets` to run right-padded decoder rows per length bucket (each bucket
            trimmed to its own length; padded logits are zeros, never scored); None: one decoder call.
        single_call: DDP/FSDP: ONE call of `model` itself with plain seq2seq kwargs (the encoder then runs per decoder
            row), so the wrapper's gradient synchronisation sees the whole forward.
    """

    def __init__(
        self,
        model: Callable[..., Any],
        base: PreTrainedModel,
        outputs: tuple[str, ...] = ("log_probs",),
        *,
        autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
        run_buckets: Callable[..., torch.Tensor] | None = None,
        single_call: bool = False,
    ):
        if not getattr(base.config, "is_encoder_decoder", False):
            raise ValueError(f"Seq2SeqPreferenceForward needs an encoder-decoder model, got {type(base).__name__}")
        unknown = set(outputs) - set(FUSED_OUTPUT_FIELDS)
        if unknown:
            raise ValueError(f"unknown fused outputs {sorted(unknown)}; choose among {list(FUSED_OUTPUT_FIELDS)}")
        self.model, self.base, self.outputs, self.autocast = model, base, tuple(outputs), autocast
        self.run_buckets, self.single_call = run_buckets, single_call

    def __call__(self, *args, fused_lm_head=False, encoder_input_ids=None, encoder_attention_mask=None, **kw):
        if encoder_input_ids is None:
            if fused_lm_head:
                raise ValueError("fused_lm_head=True needs `encoder_input_ids` (use DataCollatorForSeq2SeqPreference)")
            return self.model(*args, **kw)
        if args:
            raise TypeError("pass the preference batch to the seq2seq fused forward as keyword arguments")
        _drop_teacher_forcing_kwargs(kw)
        kw.pop("shift_labels", None)  # context/sequence parallelism is not supported for seq2seq
        labels, num_items = kw.pop("labels", None), kw.pop("num_items_in_batch", None)
        input_ids, attention_mask = kw.pop("input_ids"), kw.pop("attention_mask", None)
        with self.autocast():
            if self.single_call:
                model_outputs = self._one_call(input_ids, attention_mask, encoder_input_ids, encoder_attention_mask, kw)
            else:
                model_outputs = _teacher_forced_forward(
                    self.base, self._decoder_rows, input_ids, attention_mask, encoder_input_ids,
                    encoder_attention_mask, **kw,
                )
        if not fused_lm_head:  # a preference batch without the fused head (TRL's deprecated `compute_metrics` path)
            return model_outputs
        shifted_labels = labels[:, 1:].to(model_outputs.logits.device)
        mask = shifted_labels != -100
        values = _labelled_values(model_outputs.logits[mask], shifted_labels[mask], self.outputs)
        return fused_output(values, mask, num_items)

    def _one_call(self, input_ids, attention_mask, encoder_input_ids, encoder_attention_mask, kw: dict[str, Any]):
        repeats = input_ids.size(0) // encoder_input_ids.size(0)
        if encoder_attention_mask is None:
            encoder_attention_mask = torch.ones_like(encoder_input_ids)
        return self.model(
            input_ids=torch.cat([encoder_input_ids] * repeats, dim=0),
            attention_mask=torch.cat([encoder_attention_mask] * repeats, dim=0),
            decoder_input_ids=input_ids[:, :-1],
            decoder_attention_mask=None if attention_mask is None else attention_mask[:, :-1],
            use_cache=False,
            **kw,
        )

    def _decoder_rows(self, **kw: Any) -> Any:
        """The base model's teacher-forced call, per length bucket of the decoder rows when `run_buckets` is set."""
        dec_ids, dec_mask, enc = kw.get("decoder_input_ids"), kw.get("decoder_attention_mask"), kw["encoder_outputs"]
        extra = set(kw) - {"attention_mask", "encoder_outputs", "decoder_input_ids", "decoder_attention_mask",
                           "use_cache", "return_dict"}
        if self.run_buckets is None or dec_mask is None or extra:
            return self.base(**kw)
        hidden, cross_mask = enc[0], kw.get("attention_mask")

        def run(index: torch.Tensor, length: int) -> torch.Tensor:
            return self.base(
                attention_mask=None if cross_mask is None else cross_mask.index_select(0, index),
                encoder_outputs=BaseModelOutput(last_hidden_state=hidden.index_select(0, index)),
                decoder_input_ids=dec_ids.index_select(0, index)[:, :length],
                decoder_attention_mask=dec_mask.index_select(0, index)[:, :length],
                use_cache=False,
            ).logits

        logits = self.run_buckets(dec_mask, dec_ids.size(1), run)
        return self.base(**kw) if logits is None else Seq2SeqLMOutput(logits=logits)


def _drop_teacher_forcing_kwargs(kw: dict[str, Any]) -> None:
    """Remove (in place) what the teacher-forced decoder call sets itself; PeftModelForSeq2SeqLM.forward passes them
    explicitly as None. A real value there cannot be combined with a preference batch."""
    for key in _TEACHER_FORCING_KEYS:
        value = kw.pop(key, None)
        if value is not None and key != "use_cache":
            raise ValueError(f"`{key}` cannot be combined with `encoder_input_ids` in the seq2seq forward")
    for key in ("output_attentions", "output_hidden_states", "return_dict"):
        if key in kw and kw[key] is None:
            del kw[key]


_FUNCTIONAL_DROPOUT_ATTRS = ("dropout", "attention_dropout", "activation_dropout")


def disable_functional_dropout(model: torch.nn.Module) -> None:
    """Zero dropout probabilities stored as float attributes (T5 attention, BART layers).

    TRL's `disable_dropout_in_model` only zeroes `nn.Dropout` modules, but T5Attention applies
    `nn.functional.dropout(p=self.dropout)` to attention probabilities in train mode and BART's layers do the same
    for hidden states, so `disable_dropout=True` would leave them on (and make even the reference forward random).
    The config is left alone, so saved models keep their dropout settings.
    """
    for module in model.modules():
        for attr in _FUNCTIONAL_DROPOUT_ATTRS:
            if isinstance(getattr(module, attr, None), float):
                setattr(module, attr, 0.0)


# --------------------------------------------------------------------------------------------------------------------
# Trainer
# --------------------------------------------------------------------------------------------------------------------


def _decoder_start_token_id(base: PreTrainedModel) -> int:
    """The token every decoder row starts with; refuses causal models and configs without one."""
    if not getattr(base.config, "is_encoder_decoder", False):
        raise ValueError(
            f"Seq2SeqDPOTrainer needs an encoder-decoder model (config.is_encoder_decoder=True), got "
            f"{type(base).__name__}; use trl.DPOTrainer for causal LMs"
        )
    decoder_start = base.config.decoder_start_token_id
    if decoder_start is None:
        decoder_start = getattr(base.generation_config, "decoder_start_token_id", None)
    if decoder_start is None:
        raise ValueError(f"{type(base).__name__} config has no decoder_start_token_id")
    return decoder_start


class Seq2SeqDPOTrainer(PreferenceForwardSeams, DPOTrainer):
    """`trl.DPOTrainer` for encoder-decoder models; same constructor, plus two length limits.

    Truncation rule (DPOConfig has no separate prompt/completion limits): the encoder prompt keeps at most
    `max_prompt_length` tokens and each decoder completion at most `max_completion_length` tokens; both default to
    `args.max_length` (None = no truncation). Truncated sequences keep their EOS as last token (as T5 tokenizers do
    with `truncation=True`). Prompts keep their start (`truncation_mode="keep_start"`) or their end (`"keep_end"`);
    completions always keep their start. Nothing is dropped. Per-split counts are in `self.truncation_counts`.

    Without PEFT and without `ref_model`, the reference is a frozen deep copy of `model` (TRL would reload it from
    the Hub id in the config, which a locally built model does not have).
    """

    def __init__(
        self,
        model: str | PreTrainedModel,
        ref_model: PreTrainedModel | None = None,
        args: DPOConfig | None = None,
        data_collator: Any = None,
        train_dataset: Dataset | IterableDataset | None = None,
        eval_dataset: Any = None,
        processing_class: PreTrainedTokenizerBase | None = None,
        compute_metrics: Callable | None = None,
        callbacks: list | None = None,
        optimizers: tuple = (None, None),
        quantization_config: Any = None,
        peft_config: Any = None,
        *,
        max_prompt_length: int | None = None,
        max_completion_length: int | None = None,
    ):
        args = args or DPOConfig("seq2seq-DPO")
        if isinstance(model, str):
            model, processing_class = self._load_model(model, args, quantization_config, processing_class)
            quantization_config = None  # consumed here; the parent rejects it for an instantiated model
        base = _unwrap_peft(model)
        decoder_start = _decoder_start_token_id(base)
        processing_class = self._checked_tokenizer(base, processing_class)
        self._check_training_options(args, model, peft_config)
        if ref_model is None and peft_config is None and not is_peft_model(model) and not args.precompute_ref_log_probs:
            # Hand-written: `trl.create_reference_model` does the same, but 1.16 deprecated it to trl.experimental.
            ref_model = copy.deepcopy(base).eval().requires_grad_(False)
        if ref_model is not None and not getattr(ref_model.config, "is_encoder_decoder", False):
            raise ValueError(f"ref_model must be an encoder-decoder model, got {type(ref_model).__name__}")
        self._set_length_limits(args, max_prompt_length, max_completion_length)  # read by `_prepare_dataset`
        if data_collator is None:
            data_collator = DataCollatorForSeq2SeqPreference(
                pad_token_id=processing_class.pad_token_id,
                decoder_start_token_id=decoder_start,
                pad_to_multiple_of=args.pad_to_multiple_of,
            )
        # The parent installs TRL's causal fused head, which cannot run T5, and may precompute reference log-probs
        # before returning: every preference batch reaches the model through `preference_forward` instead (handed
        # to TRL by the public `compute_loss` / `compute_ref_log_probs`), so TRL's head only ever falls through.
        self._reference_dropout_disabled = False

        super().__init__(
            model=model, ref_model=ref_model, args=args, data_collator=data_collator, train_dataset=train_dataset,
            eval_dataset=eval_dataset, processing_class=processing_class, compute_metrics=compute_metrics,
            callbacks=callbacks, optimizers=optimizers, quantization_config=quantization_config, peft_config=peft_config,
        )
        if args.disable_dropout:
            for module in (self.model, self.ref_model):
                if module is not None:
                    disable_functional_dropout(module)

    @staticmethod
    def _load_model(model_id: str, args: DPOConfig, quantization_config: Any, processing_class: Any):
        """(model, tokenizer) for a model id or path, as TRL's own constructor would load them."""
        init_kwargs = dict(args.model_init_kwargs or {})
        init_kwargs.setdefault("trust_remote_code", args.trust_remote_code)
        if quantization_config is not None:
            init_kwargs["quantization_config"] = quantization_config
        model = create_model_from_path(model_id, **init_kwargs)
        if processing_class is None:
            processing_class = AutoTokenizer.from_pretrained(model_id, trust_remote_code=args.trust_remote_code)
        return model, processing_class

    @staticmethod
    def _checked_tokenizer(base: PreTrainedModel, processing_class: Any) -> PreTrainedTokenizerBase:
        """The tokenizer to use (loaded from the model's path if none was given), with EOS and a pad token."""
        if processing_class is None:
            if not base.config.name_or_path:
                raise ValueError("processing_class (a tokenizer) is required for a model that was not loaded by id/path")
            processing_class = AutoTokenizer.from_pretrained(base.config.name_or_path)
        if not isinstance(processing_class, PreTrainedTokenizerBase):
            raise TypeError(
                f"processing_class must be a tokenizer for Seq2SeqDPOTrainer, got {type(processing_class).__name__}"
            )
        if processing_class.eos_token_id is None:
            raise ValueError(f"tokenizer {type(processing_class).__name__} has no eos_token")
        if processing_class.pad_token is None:
            processing_class.pad_token = processing_class.eos_token
        return processing_class

    @staticmethod
    def _check_training_options(args: DPOConfig, model: torch.nn.Module, peft_config: Any) -> None:
        """Loss types, PEFT methods and kernels this trainer cannot run are refused before anything is built."""
        unsupported = [lt for lt in args.loss_type if lt not in SUPPORTED_LOSS_TYPES]
        if unsupported:
            raise ValueError(
                f"loss_type {unsupported} not supported by Seq2SeqDPOTrainer; "
                f"choose among {sorted(SUPPORTED_LOSS_TYPES)}"
            )
        for config in [peft_config, *(model.peft_config.values() if is_peft_model(model) else [])]:
            if config is not None and getattr(config, "is_prompt_learning", False):
                raise ValueError(
                    f"PEFT {type(config).__name__} (prompt learning) is not supported by Seq2SeqDPOTrainer; use LoRA"
                )
        if args.use_liger_kernel:
            raise ValueError("use_liger_kernel is not supported by Seq2SeqDPOTrainer (no Liger kernels for seq2seq)")

    def _set_length_limits(self, args: DPOConfig, max_prompt_length: int | None, max_completion_length: int | None):
        self.max_prompt_length = args.max_length if max_prompt_length is None else max_prompt_length
        self.max_completion_length = args.max_length if max_completion_length is None else max_completion_length
        for name in ("max_prompt_length", "max_completion_length"):
            value = getattr(self, name)
            if value is not None and value < 2:
                raise ValueError(f"{name} must be >= 2 (one token plus EOS), got {value}")
        self.truncation_counts: dict[str, dict[str, int]] = {}

    def preference_forward(self, model: Any, fields: tuple[str, ...]) -> Seq2SeqPreferenceForward:
        """What TRL calls in place of `model` (see `trainer_seams`): the encoder once per pair, the decoder rows."""
        return Seq2SeqPreferenceForward(
            model, self.base_model_of(model), fields, autocast=self.accelerator.autocast,
            run_buckets=self.decoder_row_buckets(), single_call=self.runs_distributed(model),
        )

    def create_model_card(self, model_name: str | None = None, dataset_name: str | None = None,
                          tags: str | list[str] | None = None):
        # TRL's card tags its trainer ("trl", "dpo"); this one adds "seq2seq" through the public argument.
        tags = [tags] if isinstance(tags, str) else list(tags or [])
        return super().create_model_card(model_name=model_name, dataset_name=dataset_name, tags=[*tags, "seq2seq"])

    def decoder_row_buckets(self) -> Callable[..., torch.Tensor] | None:
        """How decoder rows are split by length (None: one call); `FastSeq2SeqDPOTrainer` sets it."""
        return None

    def compute_ref_log_probs(self, model, inputs):
        # TRL may run the reference pass inside its own __init__ (precomputed log-probs): functional dropout is
        # zeroed at the first reference batch, whenever that comes.
        if self.args.disable_dropout and not self._reference_dropout_disabled:
            disable_functional_dropout(self.ref_model or self.model)
            self._reference_dropout_disabled = True
        return super().compute_ref_log_probs(model, inputs)

    def _prepare_dataset(
        self,
        dataset: Dataset | IterableDataset,
        processing_class: PreTrainedTokenizerBase,
        args: DPOConfig,
        dataset_name: str,
    ) -> Dataset | IterableDataset:
        """Tokenize prompts for the encoder and completions for the decoder, truncating per the class docstring."""
        first = next(iter(dataset))
        if "prompt_ids" not in first:
            missing = [f for f in ("prompt", "chosen", "rejected") if f not in first]
            if missing:
                raise ValueError(
                    f"{dataset_name} dataset is missing column(s) {missing}; "
                    "Seq2SeqDPOTrainer needs prompt/chosen/rejected"
                )
        map_kwargs: dict[str, Any] = {}
        if isinstance(dataset, Dataset):  # IterableDataset.map has no num_proc / desc
            map_kwargs = {"num_proc": args.dataset_num_proc, "desc": f"Tokenizing {dataset_name} dataset (seq2seq)"}
        dataset = dataset.map(
            tokenize_seq2seq_row,
            fn_kwargs={
                "tokenizer": processing_class,
                "max_prompt_length": self.max_prompt_length,
                "max_completion_length": self.max_completion_length,
                "keep_end": args.truncation_mode == "keep_end",
            },
            **map_kwargs,
        )
        flags = ["_truncated_prompt", "_truncated_chosen", "_truncated_rejected"]
        if isinstance(dataset, Dataset):
            columns = {f: dataset[f] for f in flags}
            counts = {f.removeprefix("_truncated_"): int(sum(v)) for f, v in columns.items()}
            counts["rows"] = sum(any(row) for row in zip(*columns.values()))
            counts["total"] = len(dataset)
            self.truncation_counts[dataset_name] = counts
            if counts["rows"]:
                warnings.warn(
                    f"{dataset_name}: truncated {counts['rows']}/{counts['total']} rows (prompt {counts['prompt']}, "
                    f"chosen {counts['chosen']}, rejected {counts['rejected']}; max_prompt_length="
                    f"{self.max_prompt_length}, max_completion_length={self.max_completion_length})",
                    stacklevel=2,
                )
        return dataset.remove_columns(flags)
