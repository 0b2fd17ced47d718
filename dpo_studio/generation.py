"""One generation engine for base-vs-DPO comparisons (app, model-card samples, evaluation, benchmarks).

When a LoRA adapter exists, ONE copy of the base weights is held and both sides are served from it: PEFT's
mixed-adapter batches (`adapter_names=[...]` on `generate`/`forward`, eval mode only) run row i with adapter
`adapter_names[i]`, where `"__base__"` means "adapters off". Without an adapter the engine falls back to two plain
models (base and merged), which costs twice the memory but gives the same outputs.

Prompts everywhere are either a user text (rendered with `PromptFormat.prompt_from_text`) or a conversation
(a list of `{role, content}` dicts, rendered with `PromptFormat.render_prompt`), so generation and scoring see
exactly the text that training saw.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from huggingface_hub import hf_hub_download
from huggingface_hub.errors import EntryNotFoundError, HFValidationError, RemoteEntryNotFoundError
from huggingface_hub.utils import validate_repo_id
from peft import PeftModel
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForSeq2SeqLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from dpo_studio.cpu_decode import enable_masked_adapter_batches, enable_small_batch_matmuls
from dpo_studio.prompt_format import (
    DECODER_ONLY_FORMAT,
    ENCODER_DECODER_FORMAT,
    PROMPT_FORMAT_FILE,
    PromptFormat,
)

logger = logging.getLogger(__name__)

BASE_ADAPTER = "__base__"  # PEFT's name for "adapters off" in a mixed batch
DPO_ADAPTER = "default"  # the name PeftModel.from_pretrained gives the loaded adapter
DPO_CONFIG_FILE = "dpo_config.json"  # {"beta": ...} written next to the adapter / merged model by training
DEFAULT_BETA = 0.1  # TRL's DPOConfig default
ADAPTER_WEIGHTS_FILE = "adapter_model.safetensors"

Prompt = str | list[dict[str, str]]  # user text, or a conversation ending with a user turn


# --------------------------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------------------------


@dataclass
class LoadedPair:
    """A base model and its DPO counterpart, ready for side-by-side generation and scoring.

    Shared case (`shares_weights`): `model` is a PeftModel holding the base weights once plus the adapter
    "default". Fallback case: `model` is None and `base_model` / `dpo_model` are two plain models.
    """

    model: PeftModel | None
    tokenizer: PreTrainedTokenizerBase
    prompt_format: PromptFormat
    is_encoder_decoder: bool
    base_model: PreTrainedModel | None = None
    dpo_model: PreTrainedModel | None = None
    beta: float = DEFAULT_BETA
    base_source: str = ""
    dpo_source: str = ""
    # PEFT's mixed-batch `adapter_names` installs hooks on the shared modules for the duration of a call, so
    # concurrent requests (Gradio serves several threads) must not interleave on one pair.
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.model is None and (self.base_model is None or self.dpo_model is None):
            raise ValueError("LoadedPair needs either a PeftModel or both base_model and dpo_model")

    @property
    def shares_weights(self) -> bool:
        """True when base and DPO are served from one set of base weights (adapter on/off)."""
        return self.model is not None

    @property
    def device(self) -> torch.device:
        model = self.model if self.model is not None else self.base_model
        return model.device  # type: ignore[union-attr]


def _is_local(source: str) -> bool:
    return Path(source).expanduser().is_dir()


def _expand(source: str | None) -> str | None:
    """`~/runs/x` -> an absolute path when it is a local directory; Hub ids pass through unchanged."""
    return str(Path(source).expanduser()) if source is not None and _is_local(source) else source


def _check_source(role: str, source: str) -> None:
    """Fail early, in one line, on a source that is neither a local directory nor a possible repo id."""
    if not _is_local(source):
        try:
            validate_repo_id(source)
        except HFValidationError:
            message = f"{role} {source!r} is neither an existing local directory nor a valid Hub repo id"
            raise ValueError(message) from None


def resolve_file(
    source: str, filename: str, *, revision: str | None = None, token: str | bool | None = None
) -> Path | None:
    """Path of `filename` in a local directory or a Hub repo, or None when that source has no such file.

    Used for prompt_format.json, dpo_config.json and to decide where the tokenizer lives.
    """
    if _is_local(source):
        path = Path(source).expanduser() / filename
        return path if path.is_file() else None
    try:
        return Path(hf_hub_download(source, filename, revision=revision, token=token))
    except (EntryNotFoundError, RemoteEntryNotFoundError):
        # Missing in the repo, or (offline) not in the local cache: the caller falls back to the next source.
        return None
    except HFValidationError:
        raise ValueError(f"{source!r} is neither an existing local directory nor a valid Hub repo id") from None


def _first_source_with(
    sources: Sequence[tuple[str, str | None]], filename: str, token: str | bool | None
) -> tuple[str, str | None, Path] | None:
    """The first (source, revision) holding `filename`, with the file's resolved path."""
    for source, revision in sources:
        path = resolve_file(source, filename, revision=revision, token=token)
        if path is not None:
            return source, revision, path
    return None


def read_beta(sources: Sequence[tuple[str, str | None]], token: str | bool | None = None) -> float:
    """DPO beta from the first `dpo_config.json` among `sources`, else the TRL default 0.1."""
    found = _first_source_with(sources, DPO_CONFIG_FILE, token)
    if found is None:
        return DEFAULT_BETA
    data = json.loads(found[2].read_text(encoding="utf-8"))
    if "beta" not in data:
        raise ValueError(f"{found[2]}: field 'beta' is missing")
    return float(data["beta"])


def load_pair(
    base: str | None,
    adapter: str | None,
    merged: str | None = None,
    *,
    revision: str | None = None,
    base_revision: str | None = None,
    token: str | bool | None = None,
    trust_remote_code: bool = False,
    device: str | torch.device | None = None,
    dtype: torch.dtype | str | None = None,
) -> LoadedPair:
    """Load a base model and its DPO version from local directories or Hub repo ids.

    With `adapter`: one base model + `PeftModel.from_pretrained(base, adapter)` (weights shared). Without: two
    plain models, `base` and `merged`. `base` may be None when the adapter records its base model.
    `revision` applies to the adapter and merged repos (our published ones), `base_revision` to the base repo.
    Only safetensors are loaded. Tokenizer and prompt format come from the adapter, else merged, else base.
    """
    if adapter is None and merged is None:
        raise ValueError("load_pair needs an adapter or a merged model for the DPO side (both are None)")
    base, adapter, merged = (_expand(s) for s in (base, adapter, merged))
    for role, source in (("base model", base), ("adapter", adapter), ("merged model", merged)):
        if source is not None:
            _check_source(role, source)
    if adapter is not None:
        # Checked before any download: PEFT would silently fall back to a pickled adapter_model.bin, and the
        # product loads only safetensors from outside.
        if resolve_file(adapter, "adapter_config.json", revision=revision, token=token) is None:
            raise ValueError(f"adapter {adapter!r}: no adapter_config.json found")
        if resolve_file(adapter, ADAPTER_WEIGHTS_FILE, revision=revision, token=token) is None:
            raise ValueError(f"adapter {adapter!r}: no {ADAPTER_WEIGHTS_FILE} (only safetensors are loaded)")
    if base is None:
        if adapter is None:
            raise ValueError("load_pair needs a base model when no adapter is given")
        base = _base_from_adapter(adapter, revision=revision, token=token)

    hub = {"token": token, "trust_remote_code": trust_remote_code}
    config = AutoConfig.from_pretrained(base, revision=base_revision, **hub)
    is_encoder_decoder = bool(getattr(config, "is_encoder_decoder", False))
    model_cls = AutoModelForSeq2SeqLM if is_encoder_decoder else AutoModelForCausalLM
    load_kwargs: dict[str, Any] = {"use_safetensors": True, **hub}
    if dtype is not None:
        load_kwargs["dtype"] = dtype
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"

    # Where tokenizer / prompt format / dpo_config live: the DPO side first (that is what training wrote).
    sources: list[tuple[str, str | None]] = [(s, revision) for s in (adapter, merged) if s is not None]
    sources.append((base, base_revision))

    base_model = model_cls.from_pretrained(base, revision=base_revision, **load_kwargs)
    peft_model: PeftModel | None = None
    dpo_model: PreTrainedModel | None = None
    if adapter is not None:
        peft_model = PeftModel.from_pretrained(
            base_model, adapter, adapter_name=DPO_ADAPTER, revision=revision, token=token, is_trainable=False
        )
        peft_model.to(device).eval()
        # A base row + a DPO row then cost about one row (CPU): see cpu_decode.
        enable_small_batch_matmuls(peft_model)
        enable_masked_adapter_batches(peft_model)
        base_model = None
    else:
        dpo_model = model_cls.from_pretrained(merged, revision=revision, **load_kwargs)
        for model in (base_model, dpo_model):
            model.to(device).eval()
            enable_small_batch_matmuls(model)

    tok_found = _first_source_with(sources, "tokenizer_config.json", token)
    tok_source, tok_revision = (tok_found[0], tok_found[1]) if tok_found else (base, base_revision)
    tokenizer = AutoTokenizer.from_pretrained(tok_source, revision=tok_revision, **hub)
    if not is_encoder_decoder:
        # Decoder-only generation continues from the last prompt token, so batches are padded on the left.
        tokenizer.padding_side = "left"
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
    if tokenizer.eos_token_id is None:
        raise ValueError(f"tokenizer from {tok_source!r} has no EOS token")

    fmt_found = _first_source_with(sources, PROMPT_FORMAT_FILE, token)
    if fmt_found is not None:
        prompt_format = PromptFormat.from_dict(json.loads(fmt_found[2].read_text(encoding="utf-8")))
    else:
        prompt_format = ENCODER_DECODER_FORMAT if is_encoder_decoder else DECODER_ONLY_FORMAT
        logger.warning("No %s next to %s; using the default %s format", PROMPT_FORMAT_FILE, sources[0][0],
                       prompt_format.kind)

    return LoadedPair(
        model=peft_model,
        tokenizer=tokenizer,
        prompt_format=prompt_format,
        is_encoder_decoder=is_encoder_decoder,
        base_model=base_model,
        dpo_model=dpo_model,
        beta=read_beta(sources[:-1], token),
        base_source=base,
        dpo_source=adapter if adapter is not None else str(merged),
    )


def _base_from_adapter(adapter: str, *, revision: str | None, token: str | bool | None) -> str:
    path = resolve_file(adapter, "adapter_config.json", revision=revision, token=token)
    if path is None:
        raise ValueError(f"adapter {adapter!r}: no adapter_config.json found")
    base = json.loads(path.read_text(encoding="utf-8")).get("base_model_name_or_path")
    if not base:
        raise ValueError(f"{path}: field 'base_model_name_or_path' is empty; pass the base model explicitly")
    if base.startswith("../") and _is_local(adapter):  # a demo adapter names its base relative to itself
        base = str((Path(adapter).expanduser() / base).resolve())
    return base


# --------------------------------------------------------------------------------------------------------------
# Generation
# --------------------------------------------------------------------------------------------------------------


@dataclass
class GenerationResult:
    """One generated completion."""

    text: str  # decoded completion, special tokens skipped, surrounding whitespace stripped
    token_ids: list[int]  # generated tokens up to (excluding) the first EOS; no prompt, no padding
    ended_with_eos: bool  # True when the model emitted EOS within max_new_tokens (False: cut at the cap)

    @property
    def num_tokens(self) -> int:
        """Length of the completion in tokens (EOS not counted)."""
        return len(self.token_ids)


def render_prompt(prompt_format: PromptFormat, prompt: Prompt) -> str:
    """Render a user text or a conversation into the model's prompt text."""
    if isinstance(prompt, str):
        return prompt_format.prompt_from_text(prompt)
    return prompt_format.render_prompt(list(prompt))


def split_generated(row: Sequence[int], eos_token_id: int) -> tuple[list[int], bool]:
    """Cut a generated row at its first EOS: (tokens before it, whether there was one).

    Everything after the first EOS is padding that `generate` adds once a row has finished.
    """
    ids: list[int] = []
    for token in row:
        if token == eos_token_id:
            return ids, True
        ids.append(int(token))
    return ids, False


def _sampling_kwargs(max_new_tokens: int, temperature: float, top_p: float) -> dict[str, Any]:
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    if temperature == 0:
        return {"max_new_tokens": max_new_tokens, "do_sample": False}
    return {"max_new_tokens": max_new_tokens, "do_sample": True, "temperature": temperature, "top_p": top_p}


def _decode_rows(pair: LoadedPair, sequences: torch.Tensor, prompt_width: int) -> list[GenerationResult]:
    # Causal outputs repeat the (padded) prompt; seq2seq outputs start with the decoder start token.
    new_tokens = sequences[:, 1:] if pair.is_encoder_decoder else sequences[:, prompt_width:]
    results = []
    for row in new_tokens.tolist():
        ids, ended = split_generated(row, pair.tokenizer.eos_token_id)
        text = pair.tokenizer.decode(ids, skip_special_tokens=True).strip()
        results.append(GenerationResult(text=text, token_ids=ids, ended_with_eos=ended))
    return results


@torch.inference_mode()
def generate_pair_results(
    pair: LoadedPair,
    prompts: Sequence[Prompt],
    *,
    max_new_tokens: int = 64,
    temperature: float = 0.0,
    top_p: float = 1.0,
    seed: int = 0,
    batch_size: int | None = None,
) -> list[tuple[GenerationResult, GenerationResult]]:
    """Generate base and DPO completions for every prompt: a list of (base, dpo) results.

    Shared weights: one `generate` call per batch of prompts, holding every prompt twice (base rows with adapters
    off, DPO rows with the adapter). `batch_size` (prompts per call, None = all at once) bounds memory.
    `temperature == 0` is greedy decoding, exactly comparable between the two sides. With sampling, the RNG is
    seeded once with `seed` before the first call, so runs are reproducible, but each row still draws its own
    random numbers (base and DPO do not see the same draws). Fallback (two models): each model generates with
    the RNG reseeded to `seed` (+ the chunk's offset), so sampled fallback outputs differ from shared ones.
    """
    gen_kwargs = _sampling_kwargs(max_new_tokens, temperature, top_p)
    tokenizer = pair.tokenizer
    gen_kwargs |= {"pad_token_id": tokenizer.pad_token_id, "eos_token_id": tokenizer.eos_token_id}
    texts = [render_prompt(pair.prompt_format, p) for p in prompts]
    if not texts:
        return []
    step = batch_size or len(texts)
    out: list[tuple[GenerationResult, GenerationResult]] = []
    with pair.lock:
        torch.manual_seed(seed)
        for start in range(0, len(texts), step):
            chunk = texts[start : start + step]
            enc = tokenizer(chunk, padding=True, return_tensors="pt").to(pair.device)
            width = enc["input_ids"].shape[1]
            n = len(chunk)
            if pair.shares_weights:
                sequences = pair.model.generate(  # type: ignore[union-attr]
                    input_ids=enc["input_ids"].repeat(2, 1),
                    attention_mask=enc["attention_mask"].repeat(2, 1),
                    adapter_names=[BASE_ADAPTER] * n + [DPO_ADAPTER] * n,
                    **gen_kwargs,
                )
                rows = _decode_rows(pair, sequences, width)
                base_rows, dpo_rows = rows[:n], rows[n:]
            else:
                # Reseed before each model so both sides start from the same RNG state (seed for the first chunk).
                torch.manual_seed(seed + start)
                base_rows = _decode_rows(pair, pair.base_model.generate(**enc, **gen_kwargs), width)  # type: ignore
                torch.manual_seed(seed + start)
                dpo_rows = _decode_rows(pair, pair.dpo_model.generate(**enc, **gen_kwargs), width)  # type: ignore
            out.extend(zip(base_rows, dpo_rows))
    return out


def generate_pair(
    pair: LoadedPair,
    prompts: Sequence[Prompt],
    *,
    max_new_tokens: int = 64,
    temperature: float = 0.0,
    top_p: float = 1.0,
    seed: int = 0,
) -> list[tuple[str, str]]:
    """(base text, DPO text) for every prompt; see `generate_pair_results` for the semantics."""
    results = generate_pair_results(
        pair, prompts, max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, seed=seed
    )
    return [(base.text, dpo.text) for base, dpo in results]


# --------------------------------------------------------------------------------------------------------------
# Teacher-forced scoring
# --------------------------------------------------------------------------------------------------------------


@dataclass
class EncodedPair:
    """A prompt and one completion tokenized as in training.

    Causal: `input_ids` = ids(prompt) + completion_ids, the completion starting at `prompt_length`.
    Seq2seq: `input_ids` = encoder ids of the prompt (tokenizer adds </s>), `completion_ids` are the labels.
    `completion_ids` always end with EOS.
    """

    input_ids: list[int]
    completion_ids: list[int]
    prompt_length: int


def encode_pair_for_scoring(
    tokenizer: PreTrainedTokenizerBase,
    prompt_format: PromptFormat,
    is_encoder_decoder: bool,
    prompt: Prompt,
    reply: str,
) -> EncodedPair:
    """Tokenize (prompt, reply) exactly as the training code does: prompt and completion separately, + EOS."""
    prompt_ids = tokenizer(render_prompt(prompt_format, prompt))["input_ids"]
    completion_ids = tokenizer(prompt_format.render_completion(reply), add_special_tokens=False)["input_ids"]
    completion_ids = list(completion_ids) + [tokenizer.eos_token_id]
    if is_encoder_decoder:
        return EncodedPair(input_ids=list(prompt_ids), completion_ids=completion_ids, prompt_length=len(prompt_ids))
    return EncodedPair(
        input_ids=list(prompt_ids) + completion_ids, completion_ids=completion_ids, prompt_length=len(prompt_ids)
    )


def _completion_logits(model: torch.nn.Module, pair: LoadedPair, enc: EncodedPair, rows: int,
                       **extra: Any) -> torch.Tensor:
    """Logits predicting each completion token, shape (rows, n_completion, vocab), for `rows` copies of `enc`."""
    device = pair.device
    input_ids = torch.tensor([enc.input_ids] * rows, device=device)
    if pair.is_encoder_decoder:
        labels = torch.tensor([enc.completion_ids] * rows, device=device)
        # With labels, the model builds decoder inputs by shifting them right (teacher forcing).
        return model(input_ids=input_ids, labels=labels, **extra).logits
    logits = model(input_ids=input_ids, **extra).logits
    # Position t predicts token t+1: the completion tokens are predicted from prompt_length-1 to the next-to-last.
    return logits[:, enc.prompt_length - 1 : -1]


@torch.inference_mode()
def completion_token_logps(
    pair: LoadedPair, prompt: Prompt, reply: str
) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """Per-token log-probs of `reply` (as rendered in training, incl. EOS) under base and DPO, and the token ids."""
    enc = encode_pair_for_scoring(pair.tokenizer, pair.prompt_format, pair.is_encoder_decoder, prompt, reply)
    targets = torch.tensor(enc.completion_ids, device=pair.device)
    with pair.lock:
        if pair.shares_weights:
            # One 2-row forward: row 0 with adapters off, row 1 with the DPO adapter (PEFT mixed batch).
            logits = _completion_logits(pair.model, pair, enc, 2, adapter_names=[BASE_ADAPTER, DPO_ADAPTER])
        else:
            logits = torch.cat([_completion_logits(m, pair, enc, 1) for m in (pair.base_model, pair.dpo_model)])
    logps = torch.log_softmax(logits.float(), dim=-1)
    token_logps = logps.gather(-1, targets.expand(2, -1).unsqueeze(-1)).squeeze(-1)
    return token_logps[0].cpu(), token_logps[1].cpu(), enc.completion_ids


def token_log_ratios(pair: LoadedPair, prompt: Prompt, completion: str) -> list[tuple[str, float]]:
    """For each completion token (EOS included): its text and log pi_dpo(token) - log pi_base(token)."""
    base_logps, dpo_logps, ids = completion_token_logps(pair, prompt, completion)
    ratios = (dpo_logps - base_logps).tolist()
    return [(pair.tokenizer.decode([token]), ratio) for token, ratio in zip(ids, ratios)]


def score_pair(pair: LoadedPair, prompt: Prompt, reply_a: str, reply_b: str, beta: float | None = None) -> dict:
    """DPO's implicit rewards r = beta * (log pi_dpo(reply|prompt) - log pi_base(reply|prompt)) for two replies.

    Returns beta, per reply the summed log-probs under base and DPO and the reward, the margin reward_a - reward_b
    and `preferred` ("a", "b" or "tie"). `beta` defaults to the one the model was trained with (`pair.beta`).
    """
    beta = pair.beta if beta is None else float(beta)
    result: dict[str, Any] = {"beta": beta}
    for name, reply in (("a", reply_a), ("b", reply_b)):
        base_logps, dpo_logps, _ = completion_token_logps(pair, prompt, reply)
        logp_base, logp_dpo = float(base_logps.sum()), float(dpo_logps.sum())
        result[f"logp_base_{name}"] = logp_base
        result[f"logp_dpo_{name}"] = logp_dpo
        result[f"reward_{name}"] = beta * (logp_dpo - logp_base)
    margin = result["reward_a"] - result["reward_b"]
    result["margin"] = margin
    result["preferred"] = "a" if margin > 0 else "b" if margin < 0 else "tie"
    return result
