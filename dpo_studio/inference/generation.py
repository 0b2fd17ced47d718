"""One generation engine for base-vs-DPO comparisons (app, model-card samples, evaluation, benchmarks).

When a LoRA adapter exists, ONE copy of the base weights is held and both sides are served from it: PEFT's
mixed-adapter batches (`adapter_names=[...]` on `generate`/`forward`, eval mode only) run row i with adapter
`adapter_names[i]`, where `"__base__"` means "adapters off"; the LoRA layers PEFT builds for serving are
`cpu_decode.MaskedLoraLinear` (one masked pass for such a batch). Without an adapter the engine falls back to two
plain models (base and merged), which costs twice the memory but gives the same outputs. Seeded sampling: see
`_seeded_sampling`.

`stream_pair_results` is the same generation watched step by step (transformers' streamer hook): with shared
weights the base row and the DPO row of the one batch grow together; its last item is the non-streamed result.

Prompts everywhere are either a user text (rendered with `PromptFormat.prompt_from_text`) or a conversation
(a list of `{role, content}` dicts, rendered with `PromptFormat.render_prompt`), so generation and scoring see
exactly the text that training saw.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from peft import LoraConfig, PeftConfig, PeftModel
from transformers import (
    AutoConfig,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    StoppingCriteria,
    StoppingCriteriaList,
)
from transformers.generation.streamers import BaseStreamer

from dpo_studio.data.prompt_format import DECODER_ONLY_FORMAT, ENCODER_DECODER_FORMAT, PROMPT_FORMAT_FILE, PromptFormat
from dpo_studio.data.tokenize import tokenize_pair
from dpo_studio.inference.decode_kernel import choose_decode_kernel
from dpo_studio.inference.serving_lora import serving_lora_config
from dpo_studio.models.classes import auto_model_class, prepare_tokenizer_padding
from dpo_studio.names import (
    ADAPTER_WEIGHTS_FILE,
    BASE_ADAPTER,
    DPO_ADAPTER,
    DPO_CONFIG_FILE,
)
from dpo_studio.public_refs import is_hub_id, is_local_path, local_path, resolve_file

logger = logging.getLogger(__name__)

DEFAULT_BETA = 0.1  # TRL's DPOConfig default

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
        if self.model is None and self.base_model.device != self.dpo_model.device:  # type: ignore[union-attr]
            raise ValueError(f"LoadedPair: base on {self.base_model.device}, DPO on {self.dpo_model.device}: "  # type: ignore[union-attr]
                             "both sides must live on one device")

    @property
    def shares_weights(self) -> bool:
        """True when base and DPO are served from one set of base weights (adapter on/off)."""
        return self.model is not None

    @property
    def device(self) -> torch.device:
        """The one device of both sides (checked at construction); prompts are encoded onto it."""
        model = self.model if self.model is not None else self.base_model
        return model.device  # type: ignore[union-attr]

    def inputs(self, texts: Sequence[str]):
        """Rendered prompts as a padded batch on the pair's device."""
        return self.tokenizer(list(texts), padding=True, return_tensors="pt").to(self.device)


def _expand(source: str | None) -> str | None:
    """`~/runs/x` -> an absolute path when it is a local path; Hub ids pass through unchanged."""
    return str(local_path(source)) if source is not None and is_local_path(source) else source


def _check_source(role: str, source: str) -> None:
    """Fail early, in one line, on a source that is neither a local directory nor a possible repo id."""
    if not (Path(source).is_dir() if is_local_path(source) else is_hub_id(source)):
        raise ValueError(f"{role} {source!r} is neither an existing local directory nor a valid Hub repo id")


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


def _checked_sources(
    base: str | None, adapter: str | None, merged: str | None, revision: str | None, token: str | bool | None
) -> tuple[str, str | None, str | None]:
    """(base, adapter, merged) expanded and checked before any model download; base read from the adapter if None."""
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
    return base, adapter, merged


def _load_models(
    model_cls: type, base: str, adapter: str | None, merged: str | None, *, revision: str | None,
    base_revision: str | None, load_kwargs: dict[str, Any], device: str | torch.device,
) -> tuple[PeftModel | None, PreTrainedModel | None, PreTrainedModel | None]:
    """(shared PeftModel, None, None) with an adapter, else (None, base model, merged model); in eval mode."""
    base_model = model_cls.from_pretrained(base, revision=base_revision, **load_kwargs)
    if adapter is not None:
        config = PeftConfig.from_pretrained(adapter, revision=revision, token=load_kwargs["token"])
        if isinstance(config, LoraConfig):  # the base row + DPO row of one batch in one LoRA pass: see cpu_decode
            serving_lora_config(config)
        # Adapter weights read onto the CPU like the base's, then both moved to `device` once (PEFT would otherwise
        # pick "cuda" itself whenever torch reports a GPU, e.g. in a ZeroGPU Space's main process).
        peft_model = PeftModel.from_pretrained(base_model, adapter, adapter_name=DPO_ADAPTER, revision=revision,
                                               token=load_kwargs["token"], is_trainable=False, config=config,
                                               torch_device="cpu")
        peft_model.to(device).eval()
        choose_decode_kernel(peft_model, device)  # once per CPU, here at load (never inside a request): decode_kernel.py
        return peft_model, None, None
    dpo_model = model_cls.from_pretrained(merged, revision=revision, **load_kwargs)
    for model in (base_model, dpo_model):
        model.to(device).eval()
    return None, base_model, dpo_model


def _load_tokenizer(
    sources: Sequence[tuple[str, str | None]], is_encoder_decoder: bool, hub: dict[str, Any]
) -> PreTrainedTokenizerBase:
    """The tokenizer of the first source that has one (the DPO side first: that is what training wrote)."""
    tok_found = _first_source_with(sources, "tokenizer_config.json", hub["token"])
    tok_source, tok_revision = (tok_found[0], tok_found[1]) if tok_found else sources[-1]
    tokenizer = AutoTokenizer.from_pretrained(tok_source, revision=tok_revision, **hub)
    prepare_tokenizer_padding(tokenizer, is_encoder_decoder)
    if tokenizer.eos_token_id is None:
        raise ValueError(f"tokenizer from {tok_source!r} has no EOS token")
    return tokenizer


def _load_prompt_format(
    sources: Sequence[tuple[str, str | None]], is_encoder_decoder: bool, token: str | bool | None
) -> PromptFormat:
    """The saved prompt_format.json of the first source that has one, else the architecture's default format."""
    found = _first_source_with(sources, PROMPT_FORMAT_FILE, token)
    if found is not None:
        return PromptFormat.from_dict(json.loads(found[2].read_text(encoding="utf-8")))
    prompt_format = ENCODER_DECODER_FORMAT if is_encoder_decoder else DECODER_ONLY_FORMAT
    logger.warning("No %s next to %s; using the default %s format", PROMPT_FORMAT_FILE, sources[0][0],
                   prompt_format.kind)
    return prompt_format


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
    Only safetensors are loaded. Tokenizer and prompt format come from the adapter, else merged, else base.

    Args:
        base, adapter, merged: local directories or Hub repo ids (see above for which combinations work).
        revision: branch, tag or commit of the adapter and merged repos (our published ones).
        base_revision: the same for the base repo.
        token: Hub token; None uses the login, False sends none.
        device, dtype: where and in which dtype to load (default: CPU unless CUDA; the checkpoint's dtype).
    """
    base, adapter, merged = _checked_sources(base, adapter, merged, revision, token)
    hub = {"token": token, "trust_remote_code": trust_remote_code}
    config = AutoConfig.from_pretrained(base, revision=base_revision, **hub)
    is_encoder_decoder = bool(getattr(config, "is_encoder_decoder", False))
    load_kwargs: dict[str, Any] = {"use_safetensors": True, **hub} | ({"dtype": dtype} if dtype is not None else {})
    peft_model, base_model, dpo_model = _load_models(
        auto_model_class(is_encoder_decoder), base, adapter, merged, revision=revision, base_revision=base_revision,
        load_kwargs=load_kwargs, device=device or ("cuda" if torch.cuda.is_available() else "cpu"))
    # Where tokenizer / prompt format / dpo_config live: the DPO side first (that is what training wrote).
    sources = [(s, revision) for s in (adapter, merged) if s is not None] + [(base, base_revision)]
    return LoadedPair(
        model=peft_model,
        tokenizer=_load_tokenizer(sources, is_encoder_decoder, hub),
        prompt_format=_load_prompt_format(sources, is_encoder_decoder, token),
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
    if base.startswith("../") and is_local_path(adapter):  # a demo adapter names its base relative to itself
        base = str((local_path(adapter) / base).resolve())
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


def _result(tokenizer: PreTrainedTokenizerBase, row: Sequence[int]) -> GenerationResult:
    ids, ended = split_generated(row, tokenizer.eos_token_id)
    return GenerationResult(text=tokenizer.decode(ids, skip_special_tokens=True).strip(), token_ids=ids,
                            ended_with_eos=ended)


def _decode_rows(pair: LoadedPair, sequences: torch.Tensor, prompt_width: int) -> list[GenerationResult]:
    # Causal outputs repeat the (padded) prompt; seq2seq outputs start with the decoder start token.
    new_tokens = sequences[:, 1:] if pair.is_encoder_decoder else sequences[:, prompt_width:]
    return [_result(pair.tokenizer, row) for row in new_tokens.tolist()]


StepListener = Callable[[str, list[int]], None]  # (side "base"/"dpo"/"both", the new token of each row)


class _StepStreamer(BaseStreamer):
    """transformers' streamer hook for a whole batch (its Text*Streamer classes take one row only).

    `generate` calls `put` once with the prompt (skipped here), then once per decoding step with the token just
    chosen for every row; those go to `listener`. It only observes: the tokens generated are the same with or
    without it.
    """

    def __init__(self, side: str, listener: StepListener) -> None:
        self.side, self.listener, self._prompt_seen = side, listener, False

    def put(self, value: torch.Tensor) -> None:
        if not self._prompt_seen:
            self._prompt_seen = True
            return
        self.listener(self.side, value.reshape(-1).tolist())

    def end(self) -> None:
        pass


class _StopWhenSet(StoppingCriteria):
    """Ends `generate` early once `event` is set (a streaming client went away); never fires otherwise."""

    def __init__(self, event: threading.Event) -> None:
        self.event = event

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        return torch.full((input_ids.shape[0],), self.event.is_set(), dtype=torch.bool, device=input_ids.device)


def _generate_chunk(
    pair: LoadedPair,
    chunk: Sequence[str],
    gen_kwargs: dict[str, Any],
    seed: int,
    *,
    listener: StepListener | None = None,
    stop: threading.Event | None = None,
) -> tuple[list[GenerationResult], list[GenerationResult]]:
    """(base results, DPO results) for a chunk of rendered prompts; the caller holds `pair.lock`.

    With `listener`, every decoding step's tokens are handed to it as they are chosen (streaming); the results
    are the same as without it. The RNG is seeded by the caller in the shared case (once per call), here in the
    two-model case (before each model, so both start from the same state).
    """
    enc = pair.inputs(chunk)
    width = enc["input_ids"].shape[1]
    n = len(chunk)
    extra: dict[str, Any] = {}
    if stop is not None:
        extra["stopping_criteria"] = StoppingCriteriaList([_StopWhenSet(stop)])

    def streamer(side: str) -> dict[str, Any]:
        return {"streamer": _StepStreamer(side, listener)} if listener is not None else {}

    if pair.shares_weights:
        # One decode loop: the base rows and the DPO rows of the same batch advance together.
        sequences = pair.model.generate(  # type: ignore[union-attr]
            input_ids=enc["input_ids"].repeat(2, 1),
            attention_mask=enc["attention_mask"].repeat(2, 1),
            adapter_names=[BASE_ADAPTER] * n + [DPO_ADAPTER] * n,
            **gen_kwargs, **extra, **streamer("both"),
        )
        rows = _decode_rows(pair, sequences, width)
        return rows[:n], rows[n:]
    # Two plain models cannot share a decode loop, and torch's global RNG is what `generate` samples from: they
    # run in turn, each reseeded, so streamed and non-streamed outputs are the same.
    torch.manual_seed(seed)
    base_rows = _decode_rows(pair, pair.base_model.generate(**enc, **gen_kwargs, **extra,  # type: ignore
                                                            **streamer("base")), width)
    torch.manual_seed(seed)
    dpo_rows = _decode_rows(pair, pair.dpo_model.generate(**enc, **gen_kwargs, **extra,  # type: ignore
                                                          **streamer("dpo")), width)
    return base_rows, dpo_rows


@contextmanager
def _seeded_sampling(seed: int, device: torch.device) -> Iterator[None]:
    """torch's global generator seeded with `seed` for one request, its previous state restored after.

    transformers' sampler draws from the global generator (`generate` takes no `torch.Generator`), so a seed means
    the same replies only if nothing else draws from it between seeding and sampling: the caller holds `pair.lock`,
    and nothing in the serving path draws random numbers of its own. Restoring the state leaves the rest of the
    process (and the next request) unaffected by this one.
    """
    devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def _generation_kwargs(pair: LoadedPair, max_new_tokens: int, temperature: float, top_p: float) -> dict[str, Any]:
    tokenizer = pair.tokenizer
    return _sampling_kwargs(max_new_tokens, temperature, top_p) | {
        "pad_token_id": tokenizer.pad_token_id, "eos_token_id": tokenizer.eos_token_id}


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

    Args:
        max_new_tokens: tokens to generate per reply at most.
        temperature: 0 is greedy; above 0 samples (with `top_p` nucleus filtering).
        seed: seeds torch's generator for this call only (its previous state is restored).
    """
    gen_kwargs = _generation_kwargs(pair, max_new_tokens, temperature, top_p)
    texts = [render_prompt(pair.prompt_format, p) for p in prompts]
    if not texts:
        return []
    step = batch_size or len(texts)
    out: list[tuple[GenerationResult, GenerationResult]] = []
    with pair.lock, _seeded_sampling(seed, pair.device):
        for start in range(0, len(texts), step):
            base_rows, dpo_rows = _generate_chunk(pair, texts[start : start + step], gen_kwargs, seed + start)
            out.extend(zip(base_rows, dpo_rows))
    return out


def stream_pair_results(
    pair: LoadedPair,
    prompt: Prompt,
    *,
    max_new_tokens: int = 64,
    temperature: float = 0.0,
    top_p: float = 1.0,
    seed: int = 0,
) -> Iterator[tuple[GenerationResult, GenerationResult]]:
    """Base and DPO results for one prompt as they grow: one (base so far, DPO so far) per decoding step.

    The same `generate` call as `generate_pair_results(pair, [prompt], ...)` (same seed and settings, a streamer
    watching it), run in a worker thread; the last item is that call's final result, so it equals the
    non-streamed one. With shared weights both sides grow at every step (one decode loop for both rows); with two
    models the base reply grows first, then the DPO reply. Closing the iterator early stops the generation.
    """
    gen_kwargs = _generation_kwargs(pair, max_new_tokens, temperature, top_p)
    text = render_prompt(pair.prompt_format, prompt)
    steps: queue.Queue[Any] = queue.Queue()
    stop = threading.Event()
    done = object()
    outcome: dict[str, Any] = {}

    @torch.inference_mode()  # inference mode is per thread
    def work() -> None:
        try:
            with pair.lock, _seeded_sampling(seed, pair.device):
                outcome["rows"] = _generate_chunk(pair, [text], gen_kwargs, seed,
                                                  listener=lambda side, tokens: steps.put((side, tokens)), stop=stop)
        except BaseException as exc:  # re-raised in the consumer's thread
            outcome["error"] = exc
        finally:
            steps.put(done)

    ids: dict[str, list[int]] = {"base": [], "dpo": []}
    ended = {"base": False, "dpo": False}
    eos = pair.tokenizer.eos_token_id
    worker = threading.Thread(target=work, name="stream-pair", daemon=True)
    worker.start()
    try:
        while (item := steps.get()) is not done:
            side, tokens = item
            for name, token in zip(("base", "dpo") if side == "both" else (side,), tokens):
                if ended[name]:
                    continue  # after EOS, `generate` pads the finished row
                if token == eos:
                    ended[name] = True
                else:
                    ids[name].append(int(token))
            yield _result(pair.tokenizer, ids["base"]), _result(pair.tokenizer, ids["dpo"])
        worker.join()
        if "error" in outcome:
            raise outcome["error"]
        (base,), (dpo,) = outcome["rows"]
        yield base, dpo
    finally:
        stop.set()  # the consumer left early: end the generation at its next step


# --------------------------------------------------------------------------------------------------------------
# Teacher-forced scoring
# --------------------------------------------------------------------------------------------------------------


@dataclass
class EncodedPair:
    """A prompt and one completion tokenized as in training (`data.tokenize.tokenize_pair`).

    Causal: `input_ids` = prompt ids + completion_ids, the completion starting at `prompt_length` (TRL's prompt ids:
    the part of the tokenized prompt that prompt + completion shares). Seq2seq: `input_ids` = encoder ids of the
    prompt (tokenizer adds </s>), `completion_ids` are the labels. `completion_ids` always end with EOS.
    """

    input_ids: list[int]
    completion_ids: list[int]
    prompt_length: int


def encode_replies_for_scoring(
    tokenizer: PreTrainedTokenizerBase,
    prompt_format: PromptFormat,
    is_encoder_decoder: bool,
    prompt: Prompt,
    reply_a: str,
    reply_b: str,
) -> tuple[EncodedPair, EncodedPair]:
    """(prompt, reply_a, reply_b) tokenized exactly as the family's trainer tokenizes the preference pair
    (prompt, chosen=reply_a, rejected=reply_b): the one `tokenize_pair`, so the scores are those DPO's loss sees."""
    tokens = tokenize_pair(tokenizer, render_prompt(prompt_format, prompt), prompt_format.render_completion(reply_a),
                           prompt_format.render_completion(reply_b), encoder_decoder=is_encoder_decoder)
    prompt_ids = tokens.prompt_ids
    return tuple(  # type: ignore[return-value]
        EncodedPair(input_ids=prompt_ids if is_encoder_decoder else prompt_ids + completion,
                    completion_ids=completion, prompt_length=len(prompt_ids))
        for completion in (tokens.chosen_ids, tokens.rejected_ids)
    )


def encode_pair_for_scoring(
    tokenizer: PreTrainedTokenizerBase,
    prompt_format: PromptFormat,
    is_encoder_decoder: bool,
    prompt: Prompt,
    reply: str,
) -> EncodedPair:
    """(prompt, reply) tokenized as in training: the pair (prompt, reply, reply) of `encode_replies_for_scoring`."""
    return encode_replies_for_scoring(tokenizer, prompt_format, is_encoder_decoder, prompt, reply, reply)[0]


def _completion_logits(model: torch.nn.Module, pair: LoadedPair, enc: EncodedPair, rows: int,
                       **extra: Any) -> torch.Tensor:
    """Logits predicting each completion token, shape (rows, n_completion, vocab), for `rows` copies of `enc`."""
    device = pair.device
    input_ids = torch.tensor([enc.input_ids] * rows, device=device)
    # No padding here, though the trailing EOS may equal the pad id: the all-ones mask says so explicitly.
    attention_mask = torch.ones_like(input_ids)
    if pair.is_encoder_decoder:
        labels = torch.tensor([enc.completion_ids] * rows, device=device)
        # With labels, the model builds decoder inputs by shifting them right (teacher forcing).
        return model(input_ids=input_ids, attention_mask=attention_mask, labels=labels, **extra).logits
    logits = model(input_ids=input_ids, attention_mask=attention_mask, **extra).logits
    # Position t predicts token t+1: the completion tokens are predicted from prompt_length-1 to the next-to-last.
    return logits[:, enc.prompt_length - 1 : -1]


class ContextTooLong(ValueError):
    """A prompt + reply longer than the model's position table (GPT-2: n_positions)."""


def context_limit(pair: LoadedPair) -> int | None:
    """How many tokens a decoder-only model reads at most (its learned positions); None when unbounded (T5)."""
    if pair.is_encoder_decoder:
        return None  # relative position buckets: no hard limit
    model = pair.model if pair.model is not None else pair.base_model
    config = model.config  # type: ignore[union-attr]
    return getattr(config, "n_positions", None) or getattr(config, "max_position_embeddings", None)


def encode_generated(pair: LoadedPair, prompt: Prompt, result: GenerationResult) -> EncodedPair:
    """A prompt and a generated completion as the very token ids that were sampled (no re-tokenizing of the
    decoded text, which BPE may split differently), + EOS when the model emitted it."""
    prompt_ids = list(pair.tokenizer(render_prompt(pair.prompt_format, prompt))["input_ids"])
    completion_ids = list(result.token_ids) + ([pair.tokenizer.eos_token_id] if result.ended_with_eos else [])
    input_ids = prompt_ids if pair.is_encoder_decoder else prompt_ids + completion_ids
    return EncodedPair(input_ids=input_ids, completion_ids=completion_ids, prompt_length=len(prompt_ids))


@torch.inference_mode()
def encoded_token_logps(pair: LoadedPair, enc: EncodedPair, what: str = "the prompt + reply"
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token log-probs of `enc.completion_ids` under base and DPO (teacher forcing, one 2-row forward)."""
    limit = context_limit(pair)
    if limit is not None and len(enc.input_ids) > limit:
        raise ContextTooLong(f"{what} is {len(enc.input_ids)} tokens; the model reads at most {limit} tokens "
                             f"(its max positions)")
    if not enc.completion_ids:
        empty = torch.zeros(0)
        return empty, empty
    targets = torch.tensor(enc.completion_ids, device=pair.device)
    with pair.lock:
        if pair.shares_weights:
            # One 2-row forward: row 0 with adapters off, row 1 with the DPO adapter (PEFT mixed batch).
            logits = _completion_logits(pair.model, pair, enc, 2, adapter_names=[BASE_ADAPTER, DPO_ADAPTER])
        else:
            logits = torch.cat([_completion_logits(m, pair, enc, 1) for m in (pair.base_model, pair.dpo_model)])
    # TRL's selective_log_softmax computes the same (tests check it), but importing trl would put the training stack
    # into the inference-only Space; this is its two-line core.
    logps = torch.log_softmax(logits.float(), dim=-1)
    token_logps = logps.gather(-1, targets.expand(2, -1).unsqueeze(-1)).squeeze(-1)
    return token_logps[0].cpu(), token_logps[1].cpu()


def completion_token_logps(
    pair: LoadedPair, prompt: Prompt, reply: str, what: str = "the prompt + reply"
) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """Per-token log-probs of `reply` (as rendered in training, incl. EOS) under base and DPO, and the token ids."""
    enc = encode_pair_for_scoring(pair.tokenizer, pair.prompt_format, pair.is_encoder_decoder, prompt, reply)
    base_logps, dpo_logps = encoded_token_logps(pair, enc, what)
    return base_logps, dpo_logps, enc.completion_ids


def _ratios(pair: LoadedPair, enc: EncodedPair) -> list[tuple[str, float]]:
    base_logps, dpo_logps = encoded_token_logps(pair, enc)
    ratios = (dpo_logps - base_logps).tolist()
    return [(pair.tokenizer.decode([token]), ratio) for token, ratio in zip(enc.completion_ids, ratios)]


def generated_token_log_ratios(pair: LoadedPair, prompt: Prompt, result: GenerationResult) -> list[tuple[str, float]]:
    """log pi_dpo - log pi_base of each token that generation sampled (its EOS only if it emitted one)."""
    return _ratios(pair, encode_generated(pair, prompt, result))


def score_pair(pair: LoadedPair, prompt: Prompt, reply_a: str, reply_b: str, beta: float | None = None) -> dict:
    """DPO's implicit rewards r = beta * (log pi_dpo(reply|prompt) - log pi_base(reply|prompt)) for two replies.

    Returns beta, per reply the summed log-probs under base and DPO and the reward, the margin reward_a - reward_b
    and `preferred` ("a", "b" or "tie"). `beta` defaults to the one the model was trained with (`pair.beta`). The
    replies are tokenized as the trainer tokenizes the pair (prompt, chosen=reply_a, rejected=reply_b).
    """
    beta = pair.beta if beta is None else float(beta)
    result: dict[str, Any] = {"beta": beta}
    encoded = encode_replies_for_scoring(pair.tokenizer, pair.prompt_format, pair.is_encoder_decoder, prompt,
                                         reply_a, reply_b)
    for name, enc in zip(("a", "b"), encoded):
        base_logps, dpo_logps = encoded_token_logps(pair, enc, f"the prompt + reply {name.upper()}")
        logp_base, logp_dpo = float(base_logps.sum()), float(dpo_logps.sum())
        result[f"logp_base_{name}"] = logp_base
        result[f"logp_dpo_{name}"] = logp_dpo
        result[f"reward_{name}"] = beta * (logp_dpo - logp_base)
    margin = result["reward_a"] - result["reward_b"]
    result["margin"] = margin
    result["preferred"] = "a" if margin > 0 else "b" if margin < 0 else "tie"
    return result
