"""What differs per architecture, in one place: default model ids, LoRA targets, prompt format, AutoModel class,
trainer class. A family is a short name (`gpt2`, `t5`) or any Hub id / local path; the architecture is read from
the model's config, never guessed from the name.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
from dataclasses import dataclass, replace
from typing import Any

import torch
from packaging.version import Version
from peft import LoraConfig
from transformers import (
    AutoConfig,
    AutoTokenizer,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from dpo_studio.bnb_messages import explain_missing_kernel
from dpo_studio.config.arguments import ConfigError
from dpo_studio.config.precision import Precision
from dpo_studio.data.prompt_format import DECODER_ONLY_FORMAT, ENCODER_DECODER_FORMAT, PROMPT_FORMAT_FILE, PromptFormat
from dpo_studio.models.classes import auto_model_class, prepare_tokenizer_padding
from dpo_studio.names import DEFAULT_MODEL_IDS
from dpo_studio.public_refs import resolve_file

# Short family names and the Hub models they stand for.

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
        return auto_model_class(self.is_encoder_decoder)

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


def load_model(
    model_id: str, arch: Architecture, revision: str | None = None, trust_remote_code: bool = False,
    quantization_config=None, device: torch.device | str | None = None,
) -> PreTrainedModel:
    """The one place a base model is loaded for training or merging (safetensors only; bitsandbytes when asked).

    `device`: where the weights go. A GPU is filled directly (no full-precision copy in host memory); None leaves a
    full-precision model on the CPU for the Trainer to place, and quantized weights on this rank's GPU when there is one.
    """
    kwargs: dict[str, Any] = {"revision": revision, "trust_remote_code": trust_remote_code, "use_safetensors": True}
    target = torch.device(device) if device is not None else None
    if quantization_config is not None:
        kwargs["quantization_config"] = quantization_config
        kwargs["device_map"] = quantized_device_map(target.type if target is not None else None)
        if getattr(quantization_config, "load_in_4bit", False) and kwargs["device_map"] == {"": "cpu"}:
            explain_missing_kernel()
    elif target is not None and target.type == "cuda":
        kwargs["device_map"] = {"": target}
    model = arch.auto_model_class.from_pretrained(model_id, **kwargs)
    if quantization_config is not None:
        keep_4bit_weights_trainable(model)
    elif target is not None and target.type not in ("cpu", "cuda"):
        model.to(target)  # any other device (accelerators; `meta` in the tests' stand-in for a GPU)
    return model


def load_model_and_tokenizer(
    model_id: str, revision: str | None = None, trust_remote_code: bool = False, quantization_config=None,
    device: str | None = None,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase, Architecture]:
    """Load a base model (safetensors only) and its tokenizer; the architecture decides the AutoModel class.
    `device`: the run's device ("cuda"/"cpu"), used for quantized weights (the Trainer places the others)."""
    arch = load_architecture(model_id, revision, trust_remote_code)
    model = load_model(model_id, arch, revision, trust_remote_code, quantization_config,
                       device if quantization_config is not None else None)
    tokenizer = AutoTokenizer.from_pretrained(model_id, revision=revision, trust_remote_code=trust_remote_code)
    saved = resolve_file(model_id, PROMPT_FORMAT_FILE, revision=revision)
    if saved is not None:  # a model this tool trained (round two from round one): keep the format it learnt
        arch = replace(arch, saved_prompt_format=PromptFormat.from_dict(json.loads(saved.read_text(encoding="utf-8"))))
    prepare_tokenizer(tokenizer, arch)
    return model, tokenizer, arch


# ------------------------------------------------------------------------------------------ QLoRA (bitsandbytes)
MIN_BITSANDBYTES = "0.50"  # the first release whose CPU backend trains 4-bit/8-bit LoRA


def bitsandbytes_problem(load_in_4bit: bool) -> str | None:
    """Why bitsandbytes cannot quantize on this machine, or None. Probes a real quantization of a tiny tensor."""
    if importlib.util.find_spec("bitsandbytes") is None:
        return f"bitsandbytes is not installed: pip install 'bitsandbytes>={MIN_BITSANDBYTES}'"
    version = importlib.metadata.version("bitsandbytes")
    if torch.cuda.is_available():
        return None
    if Version(version) < Version(MIN_BITSANDBYTES):
        return f"bitsandbytes {version} has no CPU backend; CPU QLoRA needs bitsandbytes>={MIN_BITSANDBYTES}"
    try:
        import bitsandbytes.functional as bnb_functional

        weight = torch.randn(64, 64)
        if load_in_4bit:
            bnb_functional.quantize_4bit(weight, quant_type="nf4")
        else:
            bnb_functional.int8_vectorwise_quant(weight.half())
    except Exception as exc:  # noqa: BLE001 - whatever the backend raises, the user needs one line
        return f"bitsandbytes {version} cannot quantize on this CPU ({type(exc).__name__}: {exc})"
    return None


def check_quantization(load_in_4bit: bool, load_in_8bit: bool, use_peft: bool) -> None:
    """Option errors of QLoRA, before any data or model is loaded."""
    if not (load_in_4bit or load_in_8bit):
        return
    if load_in_4bit and load_in_8bit:
        raise ConfigError("--load-in-4bit and --load-in-8bit together: choose one quantization")
    if not use_peft:
        raise ConfigError("--load-in-4bit/--load-in-8bit train a LoRA adapter on frozen quantized weights: "
                          "drop --use-peft false, or drop the quantization for full DPO")
    problem = bitsandbytes_problem(load_in_4bit)
    if problem:
        raise ConfigError(f"--load-in-{4 if load_in_4bit else 8}bit: {problem}")


def quantization_config(
    load_in_4bit: bool, load_in_8bit: bool, precision: Precision, quant_type: str = "nf4", double_quant: bool = True
):
    """bitsandbytes settings: 4-bit (NF4 with double quantization by default), computing in the run's mixed precision
    (bf16 where native, else fp32), or 8-bit (LLM.int8). None when neither is asked for."""
    from transformers import BitsAndBytesConfig

    if load_in_4bit:
        compute = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision.compute, torch.float32)
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=quant_type,
                                  bnb_4bit_use_double_quant=double_quant, bnb_4bit_compute_dtype=compute)
    if load_in_8bit:
        return BitsAndBytesConfig(load_in_8bit=True)
    return None


def describe_quantization(config) -> str | None:
    """'4-bit NF4 (double quantization), bf16 compute' for metrics.json and the card."""
    if config is None:
        return None
    if config.load_in_4bit:
        compute = str(config.bnb_4bit_compute_dtype).replace("torch.", "").replace("bfloat16", "bf16").replace(
            "float32", "fp32").replace("float16", "fp16")
        double = " (double quantization)" if config.bnb_4bit_use_double_quant else ""
        return f"4-bit {config.bnb_4bit_quant_type.upper()}{double}, {compute} compute"
    return "8-bit (LLM.int8)"


def keep_4bit_weights_trainable(model: torch.nn.Module) -> int:
    """Stop bitsandbytes from repacking 4-bit weights into its CPU inference layout; returns the layers changed.

    Why: on CPUs with AVX512-BF16, bitsandbytes 0.50's `Linear4bit` repacks its weight in place at the first
    eval-mode forward (here: TRL's reference log-prob pass and the held-out evaluation), and its matmul on the repacked
    weight then fails in training ("a view of a leaf Variable ... in-place operation"). Training keeps the default
    layout on every CPU; the published models are full precision, so serving never needs the packed one.
    """
    changed = 0
    for module in model.modules():
        if getattr(module, "support_avx512bf16_for_cpu", False):
            module.support_avx512bf16_for_cpu = False
            changed += 1
    return changed


def quantized_device_map(device: str | None = None) -> dict[str, Any]:
    """bitsandbytes places quantized weights at load time: this process's GPU (LOCAL_RANK under torchrun) on a CUDA run,
    the CPU on a CPU run (`--use_cpu true` on a GPU host included). None: CUDA when there is a GPU."""
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        import os

        return {"": int(os.environ.get("LOCAL_RANK", "0"))}
    return {"": "cpu"}


def prepare_tokenizer(tokenizer: PreTrainedTokenizerBase, arch: Architecture) -> PreTrainedTokenizerBase:
    """The architecture's padding rule (`model_classes.prepare_tokenizer_padding`, shared with serving)."""
    return prepare_tokenizer_padding(tokenizer, arch.is_encoder_decoder)
