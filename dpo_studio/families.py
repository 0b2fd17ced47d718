"""What differs per architecture, in one place: default model ids, LoRA targets, prompt format, AutoModel class,
trainer class. A family is a short name (`gpt2`, `t5`) or any Hub id / local path; the architecture is read from
the model's config, never guessed from the name.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace

from peft import LoraConfig
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForSeq2SeqLM,
    AutoTokenizer,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from .config import ConfigError
from .prompt_format import DECODER_ONLY_FORMAT, ENCODER_DECODER_FORMAT, PROMPT_FORMAT_FILE, PromptFormat

# Short family names and the Hub models they stand for.
DEFAULT_MODEL_IDS = {"gpt2": "openai-community/gpt2", "t5": "google-t5/t5-small"}

# LoRA targets per `model_type`: all attention projections (and GPT-2's MLP output), which for DPO on small models
# learns style faster than PEFT's attention-only defaults. Other architectures fall back to PEFT's own table.
LORA_TARGETS = {
    "gpt2": ["c_attn", "c_proj"],
    "t5": ["q", "k", "v", "o"],
    "mt5": ["q", "k", "v", "o"],
    "bart": ["q_proj", "k_proj", "v_proj", "out_proj"],
    "llama": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "qwen2": ["q_proj", "k_proj", "v_proj", "o_proj"],
}


@dataclass(frozen=True)
class Architecture:
    """The per-architecture choices the pipeline needs."""

    is_encoder_decoder: bool
    model_type: str
    # The format a model trained by this tool was trained with (its prompt_format.json), e.g. a round-one merged
    # model trained again on votes; None: the architecture's default.
    saved_prompt_format: PromptFormat | None = None

    @property
    def auto_model_class(self) -> type:
        return AutoModelForSeq2SeqLM if self.is_encoder_decoder else AutoModelForCausalLM

    @property
    def prompt_format(self) -> PromptFormat:
        if self.saved_prompt_format is not None:
            return self.saved_prompt_format
        return ENCODER_DECODER_FORMAT if self.is_encoder_decoder else DECODER_ONLY_FORMAT

    @property
    def task_type(self) -> str:
        return "SEQ_2_SEQ_LM" if self.is_encoder_decoder else "CAUSAL_LM"

    @property
    def kind(self) -> str:
        return "seq2seq" if self.is_encoder_decoder else "causal"

    def trainer_class(self) -> type:
        if self.is_encoder_decoder:
            from .seq2seq_dpo import Seq2SeqDPOTrainer  # TRL's DPOTrainer cannot train encoder-decoders

            return Seq2SeqDPOTrainer
        from trl import DPOTrainer

        return DPOTrainer

    def lora_config(
        self, r: int, alpha: int, dropout: float, target_modules: list[str] | None = None, **extra
    ) -> LoraConfig:
        targets = target_modules or LORA_TARGETS.get(self.model_type)  # None -> PEFT's per-model default
        if self.model_type == "gpt2":
            extra.setdefault("fan_in_fan_out", True)  # GPT-2's Conv1D stores weights transposed
        return LoraConfig(
            task_type=self.task_type, r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=targets,
            bias="none", **extra,
        )


def architecture_of(config: PretrainedConfig) -> Architecture:
    return Architecture(is_encoder_decoder=bool(config.is_encoder_decoder), model_type=config.model_type)


def resolve_model_id(family: str) -> str:
    """`gpt2` -> `openai-community/gpt2`; anything else is already a Hub id or a local path."""
    return DEFAULT_MODEL_IDS.get(family, family)


def load_architecture(model_id: str, revision: str | None = None, trust_remote_code: bool = False) -> Architecture:
    try:
        config = AutoConfig.from_pretrained(model_id, revision=revision, trust_remote_code=trust_remote_code)
    except Exception as exc:  # noqa: BLE001 - one clear line instead of a Hub traceback
        raise ConfigError(f"model '{model_id}': cannot read its config ({type(exc).__name__}: {exc})") from None
    return architecture_of(config)


def load_model_and_tokenizer(
    model_id: str, revision: str | None = None, trust_remote_code: bool = False, quantization_config=None
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase, Architecture]:
    """Load a base model (safetensors only) and its tokenizer; the architecture decides the AutoModel class."""
    arch = load_architecture(model_id, revision, trust_remote_code)
    kwargs = {"revision": revision, "trust_remote_code": trust_remote_code, "use_safetensors": True}
    if quantization_config is not None:
        kwargs["quantization_config"] = quantization_config
    model = arch.auto_model_class.from_pretrained(model_id, **kwargs)
    tokenizer = AutoTokenizer.from_pretrained(model_id, revision=revision, trust_remote_code=trust_remote_code)
    from .generation import resolve_file  # the one home of "this file in a local folder or a Hub repo"

    saved = resolve_file(model_id, PROMPT_FORMAT_FILE, revision=revision)
    if saved is not None:  # a model this tool trained (round two from round one): keep the format it learnt
        arch = replace(arch, saved_prompt_format=PromptFormat.from_dict(json.loads(saved.read_text(encoding="utf-8"))))
    prepare_tokenizer(tokenizer, arch)
    return model, tokenizer, arch


def prepare_tokenizer(tokenizer: PreTrainedTokenizerBase, arch: Architecture) -> PreTrainedTokenizerBase:
    """GPT-2 ships without a pad token; pad with EOS (masked out everywhere) and pad on the left for generation."""
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if not arch.is_encoder_decoder:
        tokenizer.padding_side = "left"
    return tokenizer
