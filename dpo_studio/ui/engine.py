"""The Studio's access to the generation engine: loaded pairs, the context window, generate/stream with errors
as one line (a model fault is logged with its traceback, the user sees one line).

Every generation of the app (compare, streamed or not, and blind rounds) enters through one method,
`Engine._decode`. On a Hugging Face ZeroGPU Space (where the `spaces` package is installed) it runs under
`spaces.GPU`, which holds a GPU for the call; streaming works because `spaces.GPU` accepts generator functions.
`spaces.GPU` sends the arguments to a forked GPU worker by pickling, so `_decode` takes names, the prompt and the
settings, and finds the pair in the registry (loaded before the call, so the fork already holds it). Where `spaces`
is not installed (a CPU Space, a local run) nothing imports it and nothing changes.
"""

import logging
from collections.abc import Callable, Iterator
from typing import Any

import gradio as gr

from dpo_studio.app_config import ModelLoadError, ModelRegistry, one_line
from dpo_studio.generation import (
    GenerationResult,
    LoadedPair,
    context_limit,
    generate_pair_results,
    stream_pair_results,
)
from dpo_studio.ui.input_checks import user_error
from dpo_studio.ui.render import html_text

logger = logging.getLogger(__name__)

Results = tuple[GenerationResult, GenerationResult]  # (base row, DPO row) of one generation
Decode = Callable[[str, tuple[str, str] | None, Any, dict[str, Any], bool], Iterator[Results]]


def on_gpu(decode: Decode) -> Decode:
    """`spaces.GPU(decode)` where the `spaces` package is importable (Hugging Face Spaces), else `decode` itself."""
    try:
        import spaces  # installed on Hugging Face Spaces only; its GPU decorator is a no-op off ZeroGPU
    except ImportError:
        return decode
    logger.info("spaces is installed: generation runs under spaces.GPU")
    return spaces.GPU(decode)


class Engine:
    """Base and DPO generation for one family, through `dpo_studio.generation`."""

    def __init__(self, registry: ModelRegistry) -> None:
        self.registry = registry
        # Wrapped here, when the Studio is built before launch: ZeroGPU looks for its GPU functions at start-up.
        self._decode_on_device: Decode = on_gpu(self._decode)

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
        return gr.Error(f"{label}: generation failed: {html_text(one_line(exc))}")

    def generate(self, family: str, prompt: str, settings: dict[str, Any]) -> Results:
        """Base and DPO results for one prompt, same seed and settings, through the shared engine."""
        [(base, dpo)] = list(self._run(family, None, prompt, settings, stream=False))
        return base, dpo

    def stream(self, family: str, prompt: str, settings: dict[str, Any]) -> Iterator[Results]:
        """(base so far, DPO so far) per decoding step; the last item equals `generate`'s result."""
        yield from self._run(family, None, prompt, settings, stream=True)
