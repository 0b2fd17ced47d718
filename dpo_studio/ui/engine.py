"""The Studio's access to the generation engine: loaded pairs, the context window, generate/stream/score with errors
as one line (a model fault is logged with its traceback, the user sees one line).

Every forward pass of the app enters through one of three methods: `Engine._decode` (compare, streamed or not, and
blind rounds), `Engine._score` (Score tab, /score) and `Engine._token_log_ratios` ("What DPO changed"). On a Hugging
Face ZeroGPU Space (where the `spaces` package is installed) each runs under `spaces.GPU`, which holds a GPU for the
call in a forked worker process; streaming works because `spaces.GPU` accepts generator functions. ZeroGPU's rules,
followed here as its documentation shows:

* the models are loaded at start-up, in the main thread, before the app is built (`ModelRegistry.load_all`), and
  moved to "cuda" there (`spaces` defers that move until a GPU is attached); a worker inherits them through the fork;
* CUDA is never initialised in the main process: nothing outside the three methods runs a forward pass;
* the arguments and results are pickled to and from the worker, so the methods take names, the prompt and the
  settings, and find the pair in the registry.

Where `spaces` is not installed (a CPU Space, a local run) nothing imports it, models load on first use, and nothing
changes.
"""

import logging
from collections.abc import Callable, Iterator
from typing import Any

import gradio as gr

from dpo_studio.arena.visitor_text import without_paths
from dpo_studio.inference.generation import (
    GenerationResult,
    LoadedPair,
    context_limit,
    generate_pair_results,
    generated_token_log_ratios,
    score_pair,
    stream_pair_results,
)
from dpo_studio.inference.model_sources import ModelLoadError, ModelRegistry, one_line
from dpo_studio.ui.input_checks import user_error
from dpo_studio.ui.render import html_text

logger = logging.getLogger(__name__)

Results = tuple[GenerationResult, GenerationResult]  # (base row, DPO row) of one generation
Decode = Callable[[str, tuple[str, str] | None, Any, dict[str, Any], bool], Iterator[Results]]


def spaces_module():
    """The `spaces` package of Hugging Face Spaces, or None where it is not installed."""
    try:
        import spaces  # installed on Hugging Face Spaces only; its GPU decorator is a no-op off ZeroGPU
    except ImportError:
        return None
    return spaces


def on_gpu(function: Callable) -> Callable:
    """`spaces.GPU(function)` where the `spaces` package is importable (Hugging Face Spaces), else `function`."""
    spaces = spaces_module()
    if spaces is None:
        return function
    logger.info("spaces is installed: %s runs under spaces.GPU", getattr(function, "__name__", function))
    return spaces.GPU(function)


class Engine:
    """Base and DPO generation for one family, through `dpo_studio.inference.generation`."""

    def __init__(self, registry: ModelRegistry) -> None:
        self.registry = registry
        # Wrapped here, when the Studio is built before launch: ZeroGPU looks for its GPU functions at start-up.
        self._decode_on_device: Decode = on_gpu(self._decode)
        self._score_on_device = on_gpu(self._score)
        self._token_log_ratios_on_device = on_gpu(self._token_log_ratios)
        if spaces_module() is not None:  # ZeroGPU: every model in memory before the first GPU call forks a worker
            registry.load_all()

    def _score(self, family: str, prompt: str, reply_a: str, reply_b: str) -> dict[str, Any]:
        """`generation.score_pair` on the device (a forward pass of both models over both replies)."""
        return score_pair(self.registry.get(family), prompt, reply_a, reply_b)

    def _token_log_ratios(self, family: str, prompt: str, sampled: GenerationResult) -> list[tuple[str, float]]:
        """`generation.generated_token_log_ratios` on the device ("What DPO changed")."""
        return generated_token_log_ratios(self.registry.get(family), prompt, sampled)

    def score(self, family: str, prompt: str, reply_a: str, reply_b: str) -> dict[str, Any]:
        """DPO's implicit rewards of two replies (the pair loaded first, here; a load failure is a gr.Error)."""
        self.pair(family)
        return self._score_on_device(family, prompt, reply_a, reply_b)

    def token_log_ratios(self, family: str, prompt: str, sampled: GenerationResult) -> list[tuple[str, float]]:
        """Per-token log pi_dpo - log pi_base of a sampled DPO reply."""
        self.pair(family)
        return self._token_log_ratios_on_device(family, prompt, sampled)

    def _decode(self, family: str, models: tuple[str, str] | None, prompt: Any, settings: dict[str, Any],
                stream: bool) -> Iterator[Results]:
        """The app's one generation entry point: (base row, DPO row) per decoding step when `stream`, else once.

        Args:
            models: two of the family's model names (blind rounds), or None for the family's base vs DPO pair.
        """
        pair = self.registry.get(family) if models is None else self.registry.get_models(family, *models)[0]
        try:
            if stream:
                yield from stream_pair_results(pair, prompt, **settings)
            else:
                [results] = generate_pair_results(pair, [prompt], **settings)
                yield results
        except Exception as exc:
            raise self._generation_failed(self.label(family), exc) from None

    def _run(self, family: str, models: tuple[str, str] | None, prompt: Any, settings: dict[str, Any],
             stream: bool) -> Iterator[Results]:
        """`_decode` on the device, the pair loaded and the settings fitted to its context window first, here
        (load errors and too long prompts are one-line gr.Errors; a forked GPU worker inherits the loaded pair)."""
        pair = self.pair(family) if models is None else self.models_pair(family, *models)[0]
        settings = self._fit_context(pair, prompt, settings, self.label(family))
        return self._decode_on_device(family, models, prompt, settings, stream)

    def pair(self, family: str) -> LoadedPair:
        """The family's loaded pair (loaded on first use); a load failure is a one-line gr.Error."""
        try:
            return self.registry.get(family)
        except ModelLoadError as exc:
            raise gr.Error(html_text(str(exc))) from None

    def models_pair(self, family: str, a: str, b: str) -> tuple[LoadedPair, tuple[str, str]]:
        """Two of the family's models served together and which sits in the base / DPO row; a load failure is a
        one-line gr.Error."""
        try:
            return self.registry.get_models(family, a, b)
        except ModelLoadError as exc:
            raise gr.Error(html_text(str(exc))) from None

    def generate_models(self, family: str, models: tuple[str, str], prompt: str, settings: dict[str, Any]
                        ) -> dict[str, GenerationResult]:
        """Replies of two of the family's models (names such as "base", "dpo", "round2"), by model name."""
        rows = self.models_pair(family, *models)[1]
        [results] = list(self._run(family, rows, prompt, settings, stream=False))
        return dict(zip(rows, results))

    def stream_models(self, family: str, models: tuple[str, str], prompt: str, settings: dict[str, Any]
                      ) -> Iterator[dict[str, GenerationResult]]:
        """`generate_models` as it grows: the replies so far by model name per decoding step."""
        rows = self.models_pair(family, *models)[1]
        for results in self._run(family, rows, prompt, settings, stream=True):
            yield dict(zip(rows, results))

    def label(self, family: str) -> str:
        return self.registry.source(family).label

    def _fit_context(self, pair: LoadedPair, prompt: str, settings: dict[str, Any], label: str) -> dict[str, Any]:
        """Shrink max_new_tokens to the model's context window (GPT-2's positions are finite; T5's are not)."""
        limit = context_limit(pair)
        if limit is None:
            return settings
        n_prompt = len(pair.tokenizer(pair.prompt_format.prompt_from_text(prompt))["input_ids"])
        room = limit - n_prompt
        if room < 1:
            raise user_error(f"The prompt is {n_prompt} tokens; {label} reads at most {limit} tokens.")
        return {**settings, "max_new_tokens": min(settings["max_new_tokens"], room)}

    @staticmethod
    def _generation_failed(label: str, exc: Exception) -> gr.Error:
        # A model fault, not the user's: log it, show one line.
        logger.exception("Generation with %s failed", label)
        return gr.Error(f"{label}: generation failed: {html_text(without_paths(one_line(exc)))}")

    def generate(self, family: str, prompt: str, settings: dict[str, Any]) -> Results:
        """Base and DPO results for one prompt, same seed and settings, through the shared engine."""
        [(base, dpo)] = list(self._run(family, None, prompt, settings, stream=False))
        return base, dpo

    def stream(self, family: str, prompt: str, settings: dict[str, Any]) -> Iterator[Results]:
        """(base so far, DPO so far) per decoding step; the last item equals `generate`'s result."""
        yield from self._run(family, None, prompt, settings, stream=True)
