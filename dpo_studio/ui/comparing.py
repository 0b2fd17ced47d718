"""The Studio's Compare tab and /compare, /compare_stream: both models side by side, then "What DPO changed"
(per-token log-ratios of the sampled DPO reply), and the Models tab's serving summary."""

from collections.abc import Iterator
from typing import Any

import gradio as gr

from dpo_studio.inference.generation import GenerationResult, LoadedPair
from dpo_studio.public_refs import public_ref
from dpo_studio.ui.engine import Engine
from dpo_studio.ui.input_checks import (
    DEFAULT_MAX_NEW_TOKENS,
    DEFAULT_SEED,
    DEFAULT_TEMPERATURE,
    DEFAULT_TOP_P,
    InputChecks,
)
from dpo_studio.ui.render import columns, md_text

Columns = tuple[str, str, list[dict[str, Any]]]  # (base column, DPO column, runs)


def _run(name: str, label: str, prompt: str, base: GenerationResult, dpo: GenerationResult,
         settings: dict[str, Any]) -> dict[str, Any]:
    # The sampled DPO token ids travel with the run: the "What DPO changed" view scores exactly those.
    return {"family": name, "label": label, "prompt": prompt, "base": base.text, "dpo": dpo.text,
            "dpo_ids": list(dpo.token_ids), "dpo_ended": dpo.ended_with_eos, "settings": settings}


def _changes_line(label: str, pair: LoadedPair, ratios: list[tuple[str, float]], scale: float) -> str:
    """The summary of one family's per-token view: the sum, the implicit reward, the extremes, how it is served."""
    total = sum(r for _, r in ratios)
    mode = ("one base model + LoRA adapter (mixed-adapter batch)" if pair.shares_weights
            else "serving two models: no adapter published")
    line = (f"**{md_text(label)}**: Σ log-ratio over {len(ratios)} tokens = {total:+.3f} nats "
            f"(implicit reward β·Σ = {pair.beta * total:+.4f}, β = {pair.beta:g}); colour scale ±{scale:.3f}")
    if ratios:
        up = max(ratios, key=lambda t: t[1])
        down = min(ratios, key=lambda t: t[1])
        line += (f"; most boosted <code>{md_text(up[0])}</code> ({up[1]:+.3f}), most suppressed "
                 f"<code>{md_text(down[0])}</code> ({down[1]:+.3f})")
    return f"{line}. Serving: {mode}."


class Comparing:
    """Compare (whole or streamed), What DPO changed, serving summary, over the checks and the engine it is given."""

    def __init__(self, checks: InputChecks, engine: Engine) -> None:
        self.checks = checks
        self.engine = engine
        self.registry = engine.registry

    def compare(self, prompt: str, family: str, max_new_tokens: Any = DEFAULT_MAX_NEW_TOKENS,
                temperature: Any = DEFAULT_TEMPERATURE, top_p: Any = DEFAULT_TOP_P, seed: Any = DEFAULT_SEED,
                progress: Any = None) -> Columns:
        """(base text, DPO text, runs) for one family, or every family with a "[Label]" header per section.

        `runs` (one dict per family) feeds the "What DPO changed" view. With several families a family that fails
        to load shows its message in its section; a single family's failure is raised as gr.Error.
        """
        result: Columns | None = None
        for result in self._compare_steps(prompt, family, max_new_tokens, temperature, top_p, seed, progress,
                                          stream=False):
            pass
        assert result is not None
        return result

    def compare_stream(self, prompt: str, family: str, max_new_tokens: Any = DEFAULT_MAX_NEW_TOKENS,
                       temperature: Any = DEFAULT_TEMPERATURE, top_p: Any = DEFAULT_TOP_P, seed: Any = DEFAULT_SEED,
                       progress: Any = None) -> Iterator[Columns]:
        """`compare` as it grows: one (base column, DPO column, runs) per decoding step, the last = `compare`'s."""
        yield from self._compare_steps(prompt, family, max_new_tokens, temperature, top_p, seed, progress,
                                       stream=True)

    def _compare_steps(self, prompt: Any, family: Any, max_new_tokens: Any, temperature: Any, top_p: Any,
                       seed: Any, progress: Any, *, stream: bool) -> Iterator[Columns]:
        text, names, settings = self.checks.request(prompt, family, max_new_tokens, temperature, top_p, seed)
        sections = len(names) > 1
        runs: list[dict[str, Any]] = []
        for i, name in enumerate(names):
            label = self.engine.label(name)
            if progress is not None:
                loading = "loading the models (first request), then generating" if not self.registry.is_loaded(
                    name) else "generating"
                progress(i / len(names), desc=f"{label}: {loading}")
            try:
                if stream:
                    run = None
                    for base, dpo in self.engine.stream(name, text, settings):
                        run = _run(name, label, text, base, dpo, settings)
                        yield columns([*runs, run], sections)
                else:
                    run = _run(name, label, text, *self.engine.generate(name, text, settings), settings)
            except gr.Error as exc:
                if not sections:
                    raise
                run = {"family": name, "label": label, "error": exc.message}
            runs.append(run)
        if all("error" in run for run in runs):
            raise gr.Error(" / ".join(run["error"] for run in runs))
        yield columns(runs, sections)

    def changes(self, runs: list[dict[str, Any]] | None) -> tuple[dict[str, list[tuple[str, float]]], str]:
        """Per-token log pi_dpo - log pi_base of each DPO reply, as HighlightedText data per family, and a summary.

        Scores are scaled per reply into [-1, 1] (what Gradio colours), so the largest change is fully coloured;
        the summary gives the scale and the raw sums.
        """
        highlights: dict[str, list[tuple[str, float]]] = {}
        lines: list[str] = []
        for run in runs or []:
            label = self.engine.label(run["family"])
            if "error" in run:
                lines.append(f"**{md_text(label)}**: {md_text(run['error'])}")
                continue
            pair = self.registry.get(run["family"])
            # The tokens generation sampled (re-encoding the decoded text could split it differently); the EOS
            # only when the model emitted it.
            sampled = GenerationResult(text=run["dpo"], token_ids=run["dpo_ids"], ended_with_eos=run["dpo_ended"])
            ratios = self.engine.token_log_ratios(run["family"], run["prompt"], sampled)
            scale = max((abs(r) for _, r in ratios), default=0.0) or 1.0
            highlights[run["family"]] = [(token, max(-1.0, min(1.0, r / scale))) for token, r in ratios]
            lines.append(_changes_line(label, pair, ratios, scale))
        return highlights, "\n\n".join(lines)

    def serving_summary(self) -> str:
        """Markdown table of the configured sources and how each family is served."""
        rows = ["| Family | Base | Adapter | Merged | Serving |", "|---|---|---|---|---|"]
        for name, source in self.registry.families.items():
            cells = [source.label, public_ref(source.base) or "(from adapter)", public_ref(source.adapter) or "—",
                     public_ref(source.merged) or "—",
                     source.serving_mode + (" (loaded)" if self.registry.is_loaded(name) else "")]
            rows.append("| " + " | ".join(md_text(c) for c in cells) + " |")
        return "\n".join(rows)
