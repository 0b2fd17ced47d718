"""Command-line / YAML configuration.

Three dataclasses are parsed together by TRL's `TrlParser` (YAML via `--config FILE`, then CLI flags override it;
both `--output_dir` and `--output-dir` spellings work):

- `ScriptArguments` (ours): which model families, which data, publishing, demo and run-control options;
- `DPOTrainingArguments` (TRL's `DPOConfig` whose unset `--bf16` means "auto", see `precision.py`): DPO and Trainer
  hyper-parameters (beta, loss_type, learning_rate, ...);
- `ModelArguments` (TRL's `ModelConfig` with LoRA switched on by default): LoRA rank/alpha/dropout/targets, 4-bit.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from trl import DPOConfig, ModelConfig, TrlParser

from dpo_studio.config.inherited_flags import FlagError, apply_inherited_flags, given_options
from dpo_studio.config.precision import PrecisionError, choose_precision
from dpo_studio.names import family_dir_name  # noqa: F401  (its home is names.py; imported from here by the CLI and pipeline)

DEFAULT_DATASET = "HumanLLMs/Human-Like-DPO-Dataset"


class ConfigError(ValueError):
    """A bad option or model reference; reported as one line with exit code 2."""


@dataclass
class DPOTrainingArguments(DPOConfig):
    """TRL's DPOConfig, with the product's precision rule applied before TRL and transformers validate it."""

    bf16: bool | None = field(
        default=None,
        metadata={
            "help": "bf16 mixed precision. Unset (auto): on where the device computes bf16 natively (a GPU of compute "
            "capability 8.0+, a CPU with AVX512-BF16/AMX); on fp16-only GPUs (capability 7.x, e.g. a T4) fp16 mixed "
            "precision for causal LMs and fp32 for T5; fp32 elsewhere. true/false force it on any machine (emulated "
            "bf16 is slow, but it works)."
        },
    )

    torch_compile: bool | None = field(
        default=None,
        metadata={
            "help": "Train through torch.compile. Unset (auto): on only for bf16 on a CPU in runs long enough for the "
            "measured saving to pay for compiling (dpo_studio/training/speed/compile.py), off elsewhere; true/false force it. "
            "The setting that ran, and why, is in metrics.json."
        },
    )

    def __post_init__(self):
        # TRL would turn an unset bf16 into True, and transformers refuses bf16 on a CPU unless use_cpu is set.
        try:
            self.precision = choose_precision(self.bf16, bool(self.fp16), bool(self.use_cpu))
        except PrecisionError as exc:
            raise ConfigError(str(exc)) from None
        self.bf16, self.fp16 = self.precision.bf16, self.precision.fp16  # auto may pick fp16 on a capability-7.x GPU
        if self.precision.device == "cpu":
            self.use_cpu = True
            self.dataloader_pin_memory = False  # pinned host memory only speeds copies to an accelerator
        super().__post_init__()

# Our defaults where TRL's are tuned for full fine-tuning of large models on GPUs: LoRA wants a much larger learning
# rate than TRL's 1e-6; small models train faster without gradient checkpointing; reference log-probs are computed
# once and reused every epoch. Precision is chosen by `precision.choose_precision` (bf16 left unset = auto); pinned
# memory stays on (transformers' default) for CUDA runs and is switched off for CPU runs in DPOTrainingArguments.
PRODUCT_DEFAULTS: dict[str, object] = {
    "learning_rate": 5e-5,
    "num_train_epochs": 1.0,
    "per_device_train_batch_size": 8,
    "per_device_eval_batch_size": 16,
    "max_length": 512,
    "gradient_checkpointing": False,
    "logging_steps": 5,
    "save_strategy": "steps",
    "save_steps": 200,
    "save_total_limit": 2,
    "eval_strategy": "no",
    "report_to": "none",
    "precompute_ref_log_probs": True,
    "lr_scheduler_type": "linear",
    "warmup_steps": 0,
    "dataloader_num_workers": 0,
}


@dataclass
class ScriptArguments:
    """Options of `train_dpo.py` itself (TRL's DPOConfig and ModelConfig options follow in --help)."""

    models: str = field(
        default="gpt2,t5",
        metadata={
            "help": "Comma-separated model families to train. A family is `gpt2`, `t5`, or any Hub id / local path "
            "of a causal LM or seq2seq LM (the architecture is read from its config). TRL's --model_name_or_path X is "
            "--models X (one model)."
        },
    )
    dataset: str = field(
        default=DEFAULT_DATASET,
        metadata={
            "help": "Preference data: a Hub dataset id or a local .jsonl/.json/.csv/.parquet file with `prompt`, "
            "`chosen`, `rejected` (strings, or conversational lists of {role, content})."
        },
    )
    dataset_split: str = field(default="train", metadata={"help": "Split to read when --dataset is a Hub id."})
    eval_dataset: str | None = field(
        default=None,
        metadata={"help": "Optional held-out preference file/Hub id; when unset, --eval-fraction of --dataset is held out."},
    )
    eval_fraction: float = field(
        default=0.1, metadata={"help": "Share of prompts held out for evaluation (deterministic, by prompt hash)."}
    )
    max_train_pairs: int | None = field(default=None, metadata={"help": "Use at most this many training pairs."})
    max_eval_pairs: int | None = field(default=None, metadata={"help": "Use at most this many held-out pairs."})
    skip_invalid: bool = field(
        default=False, metadata={"help": "Drop invalid rows (and report how many) instead of stopping at the first."}
    )
    overwrite: bool = field(default=False, metadata={"help": "Replace finished outputs already in --output-dir."})
    resume: bool = field(
        default=False, metadata={"help": "Continue an interrupted run from its last checkpoint in --output-dir."}
    )
    keep_checkpoints: bool = field(
        default=False, metadata={"help": "Keep intermediate Trainer checkpoints after a family finishes."}
    )
    ref_logps_dir: str | None = field(
        default=None,
        metadata={
            "help": "Where reference log-probs are kept per family (default: --output-dir/.ref_logps). They are reused "
            "by --resume and by any run whose base, tokenizer, pairs, lengths and precision are the same (another "
            "beta, learning rate, loss type or epoch count); point several runs at one folder to share them."
        },
    )
    check_data: bool = field(
        default=False,
        metadata={
            "help": "Do not train: read and validate --dataset/--eval-dataset exactly as a run would, print row counts "
            "and, per family, token lengths and how many pairs --max-length would truncate; writes nothing."
        },
    )
    estimate: bool = field(
        default=False,
        metadata={
            "help": "With --check-data: also time a few DPO steps of each family on a sample of the data (the run's "
            "own models, trainer and settings, in a temporary folder) and print the whole run's projected time. "
            "Nothing is written."
        },
    )
    estimate_steps: int = field(default=3, metadata={"help": "--estimate: steady DPO steps to time (after one warm-up)."})
    # Offline demo
    demo: bool = field(
        default=False,
        metadata={
            "help": "Offline demo: build small GPT-2/T5-architecture models from config with a tokenizer trained on "
            "the data, give them a short SFT warm start on the chosen and rejected replies, then run LoRA DPO."
        },
    )
    demo_sft_epochs: float = field(default=4.0, metadata={"help": "Demo only: epochs of the SFT warm start."})
    demo_sft_learning_rate: float = field(default=2e-3, metadata={"help": "Demo only: warm-start learning rate."})
    demo_vocab_size: int = field(default=1200, metadata={"help": "Demo only: vocabulary size of the trained tokenizer."})
    demo_hidden_size: int = field(default=128, metadata={"help": "Demo only: hidden size of the built models."})
    demo_layers: int = field(default=3, metadata={"help": "Demo only: layers of the built models."})
    # Evidence
    eval_generations: int = field(
        default=32, metadata={"help": "Held-out prompts to generate from (base vs DPO) for the evidence report; 0 = off."}
    )
    generation_max_new_tokens: int = field(default=128, metadata={"help": "Cap on generated tokens for the evidence."})
    # Evaluation of existing models (no training)
    evaluate: bool = field(
        default=False,
        metadata={
            "help": "Do not train: generate from --eval-base and the DPO model (--eval-adapter / --eval-merged) on "
            "held-out prompts and write generation health + style-judge figures to --output-dir/evaluation.json."
        },
    )
    eval_base: str | None = field(
        default=None, metadata={"help": "--evaluate: base model dir or Hub id (default: the adapter's base)."}
    )
    eval_adapter: str | None = field(default=None, metadata={"help": "--evaluate: DPO LoRA adapter dir or Hub id."})
    eval_merged: str | None = field(default=None, metadata={"help": "--evaluate: merged DPO model dir or Hub id."})
    # Publishing
    push: bool = field(default=False, metadata={"help": "Publish the outputs to the Hugging Face Hub after training."})
    push_only: str | None = field(
        default=None, metadata={"help": "Publish outputs that already exist in this directory, without training."}
    )
    hub_namespace: str | None = field(
        default=None, metadata={"help": "User or organisation to publish under (repos `<ns>/<family>-dpo[-lora]`)."}
    )
    hub_repo_ids: str | None = field(
        default=None,
        metadata={"help": "Explicit repo ids, e.g. `gpt2=me/gpt2-dpo,t5=me/t5-dpo` (adapters go to `<id>-lora`)."},
    )
    private: bool = field(default=False, metadata={"help": "Create private repos."})
    commit_message: str = field(default="Upload DPO model trained with dpo_studio", metadata={"help": "Hub commit message."})
    revision: str | None = field(default=None, metadata={"help": "Branch to push to (created if missing)."})
    allow_fp16_t5: bool = field(
        default=False,
        metadata={"help": "Let --fp16 true train T5-family models (their activations overflow fp16; refused otherwise)."},
    )
    trust_remote_code_models: bool = field(
        default=False, metadata={"help": "Allow custom modelling code from the Hub (off: only built-in architectures)."}
    )

    def family_list(self) -> list[str]:
        families = [name.strip() for name in self.models.split(",") if name.strip()]
        if not families:
            raise ConfigError("--models is empty: give e.g. `gpt2,t5`")
        return families


@dataclass
class ModelArguments(ModelConfig):
    """TRL's ModelConfig with LoRA on by default (this tool trains LoRA adapters unless told otherwise)."""

    use_peft: bool = field(default=True, metadata={"help": "Train a LoRA adapter (default). --use-peft false: full DPO."})
    lora_r: int = field(default=16, metadata={"help": "LoRA rank."})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA alpha."})
    lora_dropout: float = field(default=0.0, metadata={"help": "LoRA dropout (0 keeps DPO's reference exact)."})
    load_in_4bit: bool = field(
        default=False,
        metadata={"help": "QLoRA: hold the frozen base in 4-bit NF4 with double quantization (bitsandbytes, CPU or "
                  "CUDA), computing in bf16 where native, else fp32. merged/ is the adapter on the full-precision base."},
    )
    use_bnb_nested_quant: bool = field(
        default=True, metadata={"help": "4-bit: double quantization (quantize the quantization constants too)."}
    )
    load_in_8bit: bool = field(
        default=False, metadata={"help": "QLoRA with the frozen base in 8-bit (bitsandbytes LLM.int8, CPU or CUDA)."}
    )

    def __post_init__(self):
        if self.load_in_4bit and self.load_in_8bit:  # TRL raises a bare ValueError for this
            raise ConfigError("--load-in-4bit and --load-in-8bit together: choose one quantization")
        super().__post_init__()


def build_parser() -> TrlParser:
    parser = TrlParser((ScriptArguments, DPOTrainingArguments, ModelArguments))
    parser.set_defaults_with_config(**PRODUCT_DEFAULTS)
    return parser


def parse_config(argv: list[str] | None = None) -> tuple[ScriptArguments, DPOTrainingArguments, ModelArguments]:
    """Parse `--config FILE` and CLI flags into the three dataclasses."""
    argv = sys.argv[1:] if argv is None else list(argv)
    script_args, training_args, model_args = build_parser().parse_args_and_config(args=argv)
    config_file, config_values = _config_values(argv)
    given = given_options(argv, config_values)
    try:
        apply_inherited_flags(given, script_args, training_args, model_args, family_dir_name)
    except FlagError as exc:
        raise ConfigError(str(exc)) from None
    if config_file is not None:
        _paths_relative_to(config_file, config_values, script_args, given_options(argv, {}))
    return script_args, training_args, model_args


def _config_values(argv: list[str]) -> tuple[Path | None, dict]:
    """The `--config FILE` named in argv and its keys (TrlParser has already read and validated it)."""
    for i, token in enumerate(argv):
        if token.startswith("--config"):
            value = token.split("=", 1)[1] if "=" in token else argv[i + 1] if i + 1 < len(argv) else None
            if value:
                path = Path(value)
                data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
                return path, data if isinstance(data, dict) else {}
    return None, {}


# Relative data paths in a config file are relative to the file, so `--config examples/demo.yaml` works from any folder.
CONFIG_PATH_FIELDS = ("dataset", "eval_dataset")


def _paths_relative_to(config_file: Path, values: dict, script_args: ScriptArguments, from_cli: set[str]) -> None:
    for name in CONFIG_PATH_FIELDS:
        value = values.get(name)
        if name in from_cli or not isinstance(value, str) or Path(value).is_absolute():
            continue
        candidate = config_file.resolve().parent / value
        if candidate.exists():  # otherwise a Hub id (`user/data`) or a path the data loader reports as missing
            setattr(script_args, name, str(candidate))
