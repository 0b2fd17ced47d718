"""The Studio's access to the generation engine: loaded pairs, the context window, generate/stream with errors
as one line (a model fault is logged with its traceback, the user sees one line)."""

import logging
from collections.abc import Iterator
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


class Engine:
    """Base and DPO generation for one family, through `dpo_studio.generation`."""

    def __init__(self, registry: ModelRegistry) -> None:
        self.registry = registry

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
        pair, rows = self.models_pair(family, *models)
        label = self.label(family)
        settings = self._fit_context(pair, prompt, settings, label)
        try:
            [results] = generate_pair_results(pair, [prompt], **settings)
        except Exception as exc:
            raise self._generation_failed(label, exc) from None
        return dict(zip(rows, results))

    def stream_models(self, family: str, models: tuple[str, str], prompt: str, settings: dict[str, Any]
                      ) -> Iterator[dict[str, GenerationResult]]:
        """`generate_models` as it grows: the replies so far by model name per decoding step."""
        pair, rows = self.models_pair(family, *models)
        label = self.label(family)
        settings = self._fit_context(pair, prompt, settings, label)
        try:
            for results in stream_pair_results(pair, prompt, **settings):
                yield dict(zip(rows, results))
        except Exception as exc:
            raise self._generation_failed(label, exc) from None

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

    def generate(self, family: str, prompt: str, settings: dict[str, Any]) -> tuple[GenerationResult, GenerationResult]:
        """Base and DPO results for one prompt, same seed and settings, through the shared engine."""
        pair, label = self.pair(family), self.label(family)
        settings = self._fit_context(pair, prompt, settings, label)
        try:
            [(base, dpo)] = generate_pair_results(pair, [prompt], **settings)
        except Exception as exc:
            raise self._generation_failed(label, exc) from None
        return base, dpo

    def stream(self, family: str, prompt: str, settings: dict[str, Any]
               ) -> Iterator[tuple[GenerationResult, GenerationResult]]:
        """(base so far, DPO so far) per decoding step; the last item equals `generate`'s result."""
        pair, label = self.pair(family), self.label(family)
        settings = self._fit_context(pair, prompt, settings, label)
        try:
            yield from stream_pair_results(pair, prompt, **settings)
        except Exception as exc:
            raise self._generation_failed(label, exc) from None
