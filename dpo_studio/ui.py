"""The comparison app: base vs DPO side by side (Gradio Blocks), blind A/B votes, implicit-reward scoring.

Layout and callbacks only: generation, log-ratios and scoring come from `dpo_studio.generation`, model sources and
loading from `dpo_studio.app_config`, vote storage and export from `dpo_studio.votes`.

API (all `gr.api` endpoints, typed from the Python signatures, so out-of-range numbers are capped/validated here
instead of being rejected by a slider's bounds, and family names or labels both work):
* `/compare` (prompt, family, max_new_tokens, temperature, top_p, seed) -> (base output, DPO output);
* `/compare_stream`, the same inputs: `Client.submit(...)` iterates (base so far, DPO so far), the last = `/compare`;
* `/blind` (prompt, family, settings) -> (round_id, reply A, reply B); `/vote` (round_id, "A" | "B" | "tie" |
  "both_bad") -> the reveal; `/scoreboard` -> per family votes, wins, ties, both-bad, DPO win rate and 95 % CI;
* `/score` -> implicit rewards of two replies.
"""

# No `from __future__ import annotations`: gr.api reads the return annotation (`tuple[str, str]` = two outputs)
# without evaluating strings.

import argparse
import html
import logging
import math
import os
import random
import re
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import gradio as gr
import pandas as pd

from dpo_studio.app_config import (
    AppConfigError,
    ModelLoadError,
    ModelRegistry,
    one_line,
    resolve_sources,
)
from dpo_studio.generation import (
    ContextTooLong,
    GenerationResult,
    LoadedPair,
    context_limit,
    generate_pair_results,
    generated_token_log_ratios,
    score_pair,
    stream_pair_results,
)
from dpo_studio.logs import LEVELS, setup_logging
from dpo_studio.public_refs import public_ref
from dpo_studio.votes import (
    CHOICES,
    DEFAULT_VOTES_FILE,
    RoundError,
    RoundStore,
    VoteStore,
    blind_order,
    export_votes,
    make_vote,
    scoreboard,
)

logger = logging.getLogger(__name__)

MAX_NEW_TOKENS_CAP = 256  # server-side cap, whatever a client sends
MAX_PROMPT_CHARS = 2000
DEFAULT_MAX_NEW_TOKENS = 64
DEFAULT_TEMPERATURE = 0.7
DEFAULT_TOP_P = 0.9
DEFAULT_SEED = 0
ALL_FAMILIES = "both"
DEFAULT_MAX_QUEUE = 256  # requests waiting beyond this are refused ("Queue is full"); --max-queue-size / env
MAX_QUEUE_ENV = "DPO_STUDIO_MAX_QUEUE"
CHOICE_LABELS = {"A": "A is better", "B": "B is better", "tie": "Tie", "both_bad": "Both are bad"}
SCOREBOARD_HEADERS = ["Family", "Votes", "DPO wins", "Base wins", "Ties", "Both bad", "DPO win rate",
                      "95% interval (Wilson)"]
PROMPTS_FILE = Path("examples") / "prompts.txt"
PACKAGE_PROMPTS_FILE = Path(__file__).resolve().parent.parent / PROMPTS_FILE
# Gradio 6 takes theme/css at launch. Soft uses fonts served by Gradio itself (no Google Fonts on a closed network).
THEME = gr.themes.Soft()
CSS = ".reply textarea {font-size: 0.95rem}"


def md_text(text: str) -> str:
    """Model or user text made inert inside Markdown/HTML: HTML-escaped, Markdown syntax as entities."""
    escaped = re.sub(r"[\\`*_{}\[\]()#+\-.!|~<>]", lambda m: f"&#{ord(m.group())};", html.escape(text, quote=False))
    # Quotes as decimal entities, added last: Gradio's Markdown shows `&#x27;` literally inside <code>.
    return escaped.replace('"', "&#34;").replace("'", "&#39;")


def load_example_prompts() -> list[str]:
    """Example prompts from ./examples/prompts.txt (a Space) or the repository's copy; none if neither exists."""
    for path in (Path.cwd() / PROMPTS_FILE, PACKAGE_PROMPTS_FILE):
        if path.is_file():
            return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return []


def _user_error(message: str) -> gr.Error:
    # Input problems are not server faults: no traceback in the log.
    return gr.Error(message, print_exception=False)


class Studio:
    """What the app does, behind the Gradio callbacks (also called directly by tests)."""

    def __init__(
        self,
        registry: ModelRegistry,
        votes: VoteStore,
        *,
        max_new_tokens_cap: int = MAX_NEW_TOKENS_CAP,
        max_prompt_chars: int = MAX_PROMPT_CHARS,
        rng: random.Random | None = None,
    ) -> None:
        self.registry = registry
        self.votes = votes
        self.max_new_tokens_cap = max_new_tokens_cap
        self.max_prompt_chars = max_prompt_chars
        self.rng = rng or random.SystemRandom()  # blind order must not be guessable from the seed
        self.rounds = RoundStore()  # open blind rounds: which side is which never leaves the server before the vote
        self._aliases: dict[str, list[str]] = {}
        for name, source in registry.families.items():
            for alias in (name, source.label):
                self._aliases[alias.lower()] = [name]
                self._aliases[re.sub(r"[^a-z0-9]", "", alias.lower())] = [name]
        if len(registry.families) > 1:
            for alias in (ALL_FAMILIES, "all"):
                self._aliases[alias] = list(registry.families)

    # -------------------------------------------------------------------------------------------- input checks
    @property
    def family_choices(self) -> list[tuple[str, str]]:
        choices = [(s.label, name) for name, s in self.registry.families.items()]
        if len(choices) > 1:
            choices.append(("Both" if len(choices) == 2 else "All", ALL_FAMILIES))
        return choices

    def families_for(self, family: str | None) -> list[str]:
        """Family names for a selector value: a name ("gpt2"), a label ("GPT-2") or "both"."""
        key = str(family or "").strip().lower()
        names = self._aliases.get(key) or self._aliases.get(re.sub(r"[^a-z0-9]", "", key))
        if not names:
            options = ", ".join(value for _, value in self.family_choices)
            shown = html.escape(repr(family), quote=False)
            raise _user_error(f"Unknown model family {shown}; choose one of: {options}.")
        return names

    def check_prompt(self, prompt: str | None, what: str = "prompt") -> str:
        if prompt is not None and not isinstance(prompt, str):
            raise _user_error(f"The {what} must be text, got {type(prompt).__name__}.")
        text = (prompt or "").strip()
        if not text:
            raise _user_error(f"Please enter a {what}: it is empty.")
        if len(text) > self.max_prompt_chars:
            raise _user_error(f"The {what} is {len(text)} characters long; the limit is {self.max_prompt_chars}.")
        return text

    def settings(self, max_new_tokens: Any, temperature: Any, top_p: Any, seed: Any) -> dict[str, Any]:
        """Validated generation settings; max_new_tokens is capped server-side."""
        try:
            max_new = int(DEFAULT_MAX_NEW_TOKENS if max_new_tokens is None else max_new_tokens)
            temp = float(DEFAULT_TEMPERATURE if temperature is None else temperature)
            top = float(DEFAULT_TOP_P if top_p is None else top_p)
            seed_value = int(DEFAULT_SEED if seed is None else seed)
        except (TypeError, ValueError, OverflowError):
            raise _user_error("Generation settings must be numbers (max_new_tokens, temperature, top_p, seed).")
        if max_new < 1:
            raise _user_error(f"max_new_tokens must be at least 1, got {max_new}.")
        if not (math.isfinite(temp) and math.isfinite(top)):
            raise _user_error("temperature and top_p must be finite numbers.")
        if temp < 0:
            raise _user_error(f"temperature must be >= 0 (0 = greedy), got {temp}.")
        if not 0 < top <= 1:
            raise _user_error(f"top_p must be in (0, 1], got {top}.")
        if not 0 <= seed_value < 2**63:  # what torch.manual_seed accepts
            raise _user_error(f"seed must be in [0, 2^63), got {seed_value}.")
        return {"max_new_tokens": min(max_new, self.max_new_tokens_cap), "temperature": temp, "top_p": top,
                "seed": seed_value}

    # ---------------------------------------------------------------------------------------------- generation
    def pair(self, family: str) -> LoadedPair:
        try:
            return self.registry.get(family)
        except ModelLoadError as exc:
            raise gr.Error(html.escape(str(exc), quote=False)) from None

    def _fit_context(self, pair: LoadedPair, prompt: str, settings: dict[str, Any], label: str) -> dict[str, Any]:
        """Shrink max_new_tokens to the model's context window (GPT-2's positions are finite; T5's are not)."""
        limit = context_limit(pair)
        if limit is None:
            return settings
        n_prompt = len(pair.tokenizer(pair.prompt_format.prompt_from_text(prompt))["input_ids"])
        room = limit - n_prompt
        if room < 1:
            raise _user_error(f"The prompt is {n_prompt} tokens; {label} reads at most {limit} tokens.")
        return {**settings, "max_new_tokens": min(settings["max_new_tokens"], room)}

    def _generation_failed(self, label: str, exc: Exception) -> gr.Error:
        # A model fault, not the user's: log it, show one line.
        logger.exception("Generation with %s failed", label)
        return gr.Error(f"{label}: generation failed: {html.escape(one_line(exc), quote=False)}")

    def generate(self, family: str, prompt: str, settings: dict[str, Any]) -> tuple[GenerationResult, GenerationResult]:
        """Base and DPO results for one prompt, same seed and settings, through the shared engine."""
        pair = self.pair(family)
        label = self.registry.source(family).label
        settings = self._fit_context(pair, prompt, settings, label)
        try:
            [(base, dpo)] = generate_pair_results(pair, [prompt], **settings)
        except Exception as exc:
            raise self._generation_failed(label, exc) from None
        return base, dpo

    def stream(self, family: str, prompt: str, settings: dict[str, Any]
               ) -> Iterator[tuple[GenerationResult, GenerationResult]]:
        """(base so far, DPO so far) per decoding step; the last item equals `generate`'s result."""
        pair = self.pair(family)
        label = self.registry.source(family).label
        settings = self._fit_context(pair, prompt, settings, label)
        try:
            yield from stream_pair_results(pair, prompt, **settings)
        except Exception as exc:
            raise self._generation_failed(label, exc) from None

    @staticmethod
    def _run(name: str, label: str, prompt: str, base: GenerationResult, dpo: GenerationResult,
             settings: dict[str, Any]) -> dict[str, Any]:
        # The sampled DPO token ids travel with the run: the "What DPO changed" view scores exactly those.
        return {"family": name, "label": label, "prompt": prompt, "base": base.text, "dpo": dpo.text,
                "dpo_ids": list(dpo.token_ids), "dpo_ended": dpo.ended_with_eos, "settings": settings}

    @staticmethod
    def _present(runs: list[dict[str, Any]], sections: bool) -> tuple[str, str, list[dict[str, Any]]]:
        """(base column, DPO column, runs): the texts, or one "[Label]" section per family."""
        if not sections:
            return runs[0]["base"], runs[0]["dpo"], runs

        def section(run: dict[str, Any], side: str) -> str:
            body = run.get(side, f"⚠ {run.get('error', '')}")
            return f"[{run['label']}]\n{body}"

        return ("\n\n".join(section(r, "base") for r in runs), "\n\n".join(section(r, "dpo") for r in runs), runs)

    def _request(self, prompt: Any, family: Any, max_new_tokens: Any, temperature: Any, top_p: Any,
                 seed: Any) -> tuple[str, list[str], dict[str, Any]]:
        return (self.check_prompt(prompt), self.families_for(family),
                self.settings(max_new_tokens, temperature, top_p, seed))

    def compare(self, prompt: str, family: str, max_new_tokens: Any = DEFAULT_MAX_NEW_TOKENS,
                temperature: Any = DEFAULT_TEMPERATURE, top_p: Any = DEFAULT_TOP_P, seed: Any = DEFAULT_SEED,
                progress: Any = None) -> tuple[str, str, list[dict[str, Any]]]:
        """(base text, DPO text, runs) for one family, or every family with a "[Label]" header per section.

        `runs` (one dict per family) feeds the "What DPO changed" view. With several families a family that fails
        to load shows its message in its section; a single family's failure is raised as gr.Error.
        """
        result: tuple[str, str, list[dict[str, Any]]] | None = None
        for result in self._compare_steps(prompt, family, max_new_tokens, temperature, top_p, seed, progress,
                                          stream=False):
            pass
        assert result is not None
        return result

    def compare_stream(self, prompt: str, family: str, max_new_tokens: Any = DEFAULT_MAX_NEW_TOKENS,
                       temperature: Any = DEFAULT_TEMPERATURE, top_p: Any = DEFAULT_TOP_P, seed: Any = DEFAULT_SEED,
                       progress: Any = None) -> Iterator[tuple[str, str, list[dict[str, Any]]]]:
        """`compare` as it grows: one (base column, DPO column, runs) per decoding step, the last = `compare`'s."""
        yield from self._compare_steps(prompt, family, max_new_tokens, temperature, top_p, seed, progress,
                                       stream=True)

    def _compare_steps(self, prompt: Any, family: Any, max_new_tokens: Any, temperature: Any, top_p: Any,
                       seed: Any, progress: Any, *, stream: bool) -> Iterator[tuple[str, str, list[dict[str, Any]]]]:
        text, names, settings = self._request(prompt, family, max_new_tokens, temperature, top_p, seed)
        sections = len(names) > 1
        runs: list[dict[str, Any]] = []
        for i, name in enumerate(names):
            label = self.registry.source(name).label
            if progress is not None:
                loading = "loading the models (first request), then generating" if not self.registry.is_loaded(
                    name) else "generating"
                progress(i / len(names), desc=f"{label}: {loading}")
            try:
                if stream:
                    run = None
                    for base, dpo in self.stream(name, text, settings):
                        run = self._run(name, label, text, base, dpo, settings)
                        yield self._present([*runs, run], sections)
                else:
                    run = self._run(name, label, text, *self.generate(name, text, settings), settings)
            except gr.Error as exc:
                if not sections:
                    raise
                run = {"family": name, "label": label, "error": exc.message}
            runs.append(run)
        if all("error" in run for run in runs):
            raise gr.Error(" / ".join(run["error"] for run in runs))
        yield self._present(runs, sections)

    def changes(self, runs: list[dict[str, Any]] | None) -> tuple[dict[str, list[tuple[str, float]]], str]:
        """Per-token log pi_dpo - log pi_base of each DPO reply, as HighlightedText data per family, and a summary.

        Scores are scaled per reply into [-1, 1] (what Gradio colours), so the largest change is fully coloured;
        the summary gives the scale and the raw sums.
        """
        highlights: dict[str, list[tuple[str, float]]] = {}
        lines: list[str] = []
        for run in runs or []:
            source = self.registry.source(run["family"])
            if "error" in run:
                lines.append(f"**{md_text(source.label)}**: {md_text(run['error'])}")
                continue
            pair = self.registry.get(run["family"])
            # The tokens generation sampled (re-encoding the decoded text could split it differently); the EOS
            # only when the model emitted it.
            sampled = GenerationResult(text=run["dpo"], token_ids=run["dpo_ids"], ended_with_eos=run["dpo_ended"])
            ratios = generated_token_log_ratios(pair, run["prompt"], sampled)
            scale = max((abs(r) for _, r in ratios), default=0.0) or 1.0
            highlights[run["family"]] = [(token, max(-1.0, min(1.0, r / scale))) for token, r in ratios]
            total = sum(r for _, r in ratios)
            mode = ("one base model + LoRA adapter (mixed-adapter batch)" if pair.shares_weights
                    else "serving two models: no adapter published")
            line = (f"**{md_text(source.label)}**: Σ log-ratio over {len(ratios)} tokens = {total:+.3f} nats "
                    f"(implicit reward β·Σ = {pair.beta * total:+.4f}, β = {pair.beta:g}); colour scale ±{scale:.3f}")
            if ratios:
                up = max(ratios, key=lambda t: t[1])
                down = min(ratios, key=lambda t: t[1])
                line += (f"; most boosted <code>{md_text(up[0])}</code> ({up[1]:+.3f}), most suppressed "
                         f"<code>{md_text(down[0])}</code> ({down[1]:+.3f})")
            lines.append(f"{line}. Serving: {mode}.")
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

    # -------------------------------------------------------------------------------------------------- scoring
    def score_one(self, family: str, prompt: str, reply_a: str, reply_b: str) -> dict[str, Any]:
        """`score_pair` for one family; an input longer than the model reads is a one-line refusal."""
        label = self.registry.source(family).label
        try:
            return score_pair(self.pair(family), prompt, reply_a, reply_b)
        except ContextTooLong as exc:
            message = str(exc)
            raise _user_error(f"{label}: {message[0].upper()}{message[1:]}.") from None

    def score(self, prompt: str, reply_a: str, reply_b: str, family: str) -> tuple[list[list[Any]], str]:
        """Implicit rewards of two replies under each selected family: table rows and a verdict line per family."""
        text = self.check_prompt(prompt)
        replies = {"A": self.check_prompt(reply_a, "reply A"), "B": self.check_prompt(reply_b, "reply B")}
        rows: list[list[Any]] = []
        verdicts: list[str] = []
        for name in self.families_for(family):
            label = self.registry.source(name).label
            result = self.score_one(name, text, replies["A"], replies["B"])
            for side in ("a", "b"):
                rows.append([label, side.upper(), round(result[f"logp_base_{side}"], 4),
                             round(result[f"logp_dpo_{side}"], 4), round(result[f"reward_{side}"], 5)])
            preferred = result["preferred"]
            choice = "neither (tie)" if preferred == "tie" else f"reply {preferred.upper()}"
            verdicts.append(f"**{md_text(label)}**: DPO prefers {choice} (reward margin A − B = "
                            f"{result['margin']:+.5f}, β = {result['beta']:g}).")
        return rows, "\n\n".join(verdicts)

    # ------------------------------------------------------------------------------------------------ blind A/B
    def votes_status(self) -> str:
        # The file's name only: the server's directories are nobody else's business.
        return f"Votes collected: **{self.votes.count}** (saved on the server as <code>{md_text(self.votes.path.name)}</code>)."

    def _blind_setup(self, prompt: Any, family: Any, max_new_tokens: Any, temperature: Any, top_p: Any,
                     seed: Any) -> tuple[str, str, dict[str, Any], dict[str, str]]:
        text, names, settings = self._request(prompt, family, max_new_tokens, temperature, top_p, seed)
        name = names[0] if len(names) == 1 else self.rng.choice(names)  # "both": the family stays blind too
        return text, name, settings, blind_order(self.rng)

    def _open_round(self, text: str, name: str, settings: dict[str, Any], sides: dict[str, str],
                    base: GenerationResult, dpo: GenerationResult):
        source = self.registry.source(name)
        return self.rounds.open(prompt=text, family=name, texts={"base": base.text, "dpo": dpo.text}, sides=sides,
                                settings=settings,
                                models={"base": public_ref(source.base) or "",
                                        "dpo": public_ref(source.adapter or source.merged) or ""})

    def blind(self, prompt: str, family: str, max_new_tokens: Any = DEFAULT_MAX_NEW_TOKENS,
              temperature: Any = DEFAULT_TEMPERATURE, top_p: Any = DEFAULT_TOP_P,
              seed: Any = DEFAULT_SEED) -> tuple[str, str, str]:
        """A new blind round: (round id, reply A, reply B). Which model wrote which stays on the server."""
        text, name, settings, sides = self._blind_setup(prompt, family, max_new_tokens, temperature, top_p, seed)
        round_ = self._open_round(text, name, settings, sides, *self.generate(name, text, settings))
        return round_.round_id, round_.replies["A"], round_.replies["B"]

    def blind_stream(self, prompt: str, family: str, max_new_tokens: Any, temperature: Any, top_p: Any,
                     seed: Any) -> Iterator[tuple[str, str, str | None, str]]:
        """A new blind round as it grows: (reply A, reply B, round id once complete else None, status)."""
        text, name, settings, sides = self._blind_setup(prompt, family, max_new_tokens, temperature, top_p, seed)
        # Two plain models stream one after the other, which would give the order away: those show the final only.
        shares = self.pair(name).shares_weights
        base = dpo = None
        for base, dpo in self.stream(name, text, settings):
            if shares:
                texts = {"base": base.text, "dpo": dpo.text}
                yield texts[sides["A"]], texts[sides["B"]], None, "Generating both replies…"
        round_ = self._open_round(text, name, settings, sides, base, dpo)  # type: ignore[arg-type]
        yield (round_.replies["A"], round_.replies["B"], round_.round_id,
               f"Which reply is better? Vote below (seed {settings['seed']}). " + self.votes_status())

    def regenerate(self, round_id: str | None, prompt: str, family: str, max_new_tokens: Any, temperature: Any,
                   top_p: Any) -> Iterator[tuple[str, str, str | None, str]]:
        """Drop the open round (no vote) and draw a new one with a fresh random seed."""
        self.rounds.discard(round_id)
        yield from self.blind_stream(prompt, family, max_new_tokens, temperature, top_p, self.rng.randrange(2**31))

    def vote(self, round_id: str, choice: str) -> dict[str, Any]:
        """Record the one vote of a round and reveal it: which model wrote A and B, and who won.

        `choice`: "A", "B", "tie" or "both_bad". An unknown or already-voted round id is a gr.Error.
        """
        key = re.sub(r"[\s-]+", "_", str(choice or "").strip().lower())
        choice = {"a": "A", "b": "B"}.get(key, key)
        if choice not in CHOICES:
            shown = html.escape(repr(choice), quote=False)
            raise _user_error(f"Unknown vote {shown}; choose one of: {', '.join(CHOICES)}.")
        try:
            round_ = self.rounds.close(round_id)
        except RoundError as exc:
            raise _user_error(html.escape(str(exc), quote=False)) from None
        record = make_vote(prompt=round_.prompt, replies=round_.replies, sides=round_.sides, choice=choice,
                           family=round_.family, settings=round_.settings, models=round_.models)
        count = self.votes.append(record)
        return {"round_id": round_.round_id, "vote": record["vote"], "outcome": record["outcome"],
                "family": round_.family, "A": round_.sides["A"], "B": round_.sides["B"],
                "preference_pair": record["chosen"] is not None, "votes": count}

    def vote_message(self, round_id: str | None, choice: str) -> tuple[str, None]:
        """The UI's vote: (reveal message, cleared round id)."""
        if not round_id:
            return "Generate a pair of replies first. " + self.votes_status(), None
        try:
            reveal = self.vote(round_id, choice)
        except gr.Error as exc:
            return f"{exc.message} " + self.votes_status(), None
        names = {"base": "base", "dpo": "DPO"}
        label = self.registry.source(reveal["family"]).label
        shown = f"Reply A was the **{names[reveal['A']]}** model, reply B the **{names[reveal['B']]}** model " \
                f"({md_text(label)})."
        if reveal["vote"] in ("A", "B") and reveal["vote"] == choice:
            head = f"Saved: you preferred reply {choice}."
        elif reveal["vote"] == "tie" and choice in ("A", "B"):
            head = "Both replies are identical: saved as a tie (no preference pair)."
        else:
            head = f"Saved: {CHOICE_LABELS[reveal['vote']].lower()} (counted on the scoreboard, not a training pair)."
        return f"{head} {shown} " + self.votes_status(), None

    def scoreboard(self) -> dict[str, dict[str, Any]]:
        """Per family tallies of the votes file (the source of truth), DPO win rate with its 95 % Wilson interval."""
        return scoreboard(self.votes.records(), families=self.registry.families)

    def scoreboard_view(self) -> tuple[list[list[Any]], pd.DataFrame]:
        """The Scoreboard tab: table rows, and the outcome counts per family for the bar chart."""
        rows, bars = [], []
        for family, entry in self.scoreboard().items():
            label = self.registry.source(family).label if family in self.registry.families else family
            rate = "—" if entry["dpo_win_rate"] is None else f"{entry['dpo_win_rate']:.1%}"
            interval = "—" if entry["ci_low"] is None else f"{entry['ci_low']:.1%} – {entry['ci_high']:.1%}"
            rows.append([label, entry["votes"], entry["dpo_wins"], entry["base_wins"], entry["ties"],
                         entry["both_bad"], rate, interval])
            for outcome, key in (("DPO wins", "dpo_wins"), ("Base wins", "base_wins"), ("Tie", "ties"),
                                 ("Both bad", "both_bad")):
                bars.append({"family": label, "outcome": outcome, "votes": entry[key]})
        return rows, pd.DataFrame(bars, columns=["family", "outcome", "votes"])

    def export(self, repo_id: str, private: bool, token: str | None) -> str:
        """Push the votes file to a Hub dataset repo; the message (never the token) is shown in the UI."""
        try:
            url = export_votes(self.votes, repo_id or "", token=(token or "").strip() or None, private=bool(private))
        except Exception as exc:  # network, auth, bad repo id: shown as one line, the server keeps running
            logger.warning("Export of votes failed: %s", one_line(exc))
            return f"Export failed: {md_text(one_line(exc))}"
        return f"Exported {self.votes.count} votes to {md_text(url)} (file `data/train.jsonl`)."


def max_queue_from_env(environ: dict[str, str] | None = None) -> int:
    """The queue cap: $DPO_STUDIO_MAX_QUEUE, else DEFAULT_MAX_QUEUE."""
    value = (os.environ if environ is None else environ).get(MAX_QUEUE_ENV, "").strip()
    if not value:
        return DEFAULT_MAX_QUEUE
    try:
        size = int(value)
    except ValueError:
        raise AppConfigError(f"{MAX_QUEUE_ENV}={value!r} is not a whole number") from None
    if size < 1:
        raise AppConfigError(f"{MAX_QUEUE_ENV}={value!r}: the queue must hold at least 1 request")
    return size


def build_app(
    registry: ModelRegistry | None = None,
    *,
    config: str | Path | None = None,
    models_dir: str | Path | None = None,
    votes_file: str | Path = DEFAULT_VOTES_FILE,
    max_new_tokens_cap: int = MAX_NEW_TOKENS_CAP,
    max_prompt_chars: int = MAX_PROMPT_CHARS,
    example_prompts: Sequence[str] | None = None,
    concurrency_limit: int = 1,
    max_queue_size: int | None = None,
    rng: random.Random | None = None,
) -> gr.Blocks:
    """The Gradio app. Models come from `registry`, else `models_dir`, else the config (see app_config).

    `max_queue_size` (None: $DPO_STUDIO_MAX_QUEUE or DEFAULT_MAX_QUEUE) is how many requests may wait; waiting
    visitors see their position. The Studio behind the callbacks is `demo.studio` (tests inspect it).
    """
    if registry is None:
        registry = ModelRegistry(resolve_sources(config=config, models_dir=models_dir))
    if max_queue_size is None:
        max_queue_size = max_queue_from_env()
    studio = Studio(registry, VoteStore(votes_file), max_new_tokens_cap=max_new_tokens_cap,
                    max_prompt_chars=max_prompt_chars, rng=rng)
    prompts = list(load_example_prompts() if example_prompts is None else example_prompts)
    first_family = next(iter(registry.families))
    # All model work shares one concurrency group: the engine seeds torch's global RNG per call, so running two
    # generations at once would make seeded sampling irreproducible; the queue shows waiting users their position.
    # Everything that does not touch a model (votes, scoreboard, export, the Models tab) has its own group, so it
    # never waits behind a long generation.
    model_events = {"concurrency_id": "models", "concurrency_limit": concurrency_limit}
    vote_events = {"concurrency_id": "votes", "concurrency_limit": 1}  # one vote at a time: a round takes one
    light_events = {"concurrency_id": "light", "concurrency_limit": 4}

    with gr.Blocks(title="DPO Studio: base vs DPO") as demo:
        gr.Markdown("# DPO Studio: base vs DPO\nThe same prompt, seed and sampling settings go to the base model "
                    "and its DPO-tuned version. Temperature 0 means greedy decoding.")
        with gr.Row():
            family = gr.Radio(studio.family_choices, value=first_family, label="Model family", scale=1)
            with gr.Accordion("Generation settings", open=False):
                with gr.Row():
                    max_new = gr.Slider(1, max_new_tokens_cap, value=min(DEFAULT_MAX_NEW_TOKENS, max_new_tokens_cap),
                                        step=1, label="Max new tokens")
                    temperature = gr.Slider(0.0, 2.0, value=DEFAULT_TEMPERATURE, step=0.05, label="Temperature")
                    top_p = gr.Slider(0.05, 1.0, value=DEFAULT_TOP_P, step=0.05, label="Top-p")
                    seed = gr.Number(value=DEFAULT_SEED, precision=0, label="Seed")
        settings_inputs = [max_new, temperature, top_p, seed]

        with gr.Tabs():
            with gr.Tab("Compare", id="compare"):
                prompt = gr.Textbox(label="Prompt", lines=2, max_length=max_prompt_chars, elem_id="prompt",
                                    placeholder="Ask something, e.g. How was your weekend?")
                if prompts:
                    gr.Examples([[p] for p in prompts], inputs=[prompt], label="Example prompts")
                compare_btn = gr.Button("Compare", variant="primary", elem_id="compare-btn")
                with gr.Row():
                    base_out = gr.Textbox(label="Base model", lines=6, interactive=False, elem_id="base-out",
                                          elem_classes="reply")
                    dpo_out = gr.Textbox(label="DPO model", lines=6, interactive=False, elem_id="dpo-out",
                                         elem_classes="reply")
                gr.Markdown("**What DPO changed**: log π_DPO − log π_base for each token of the DPO reply "
                            "(red: DPO made the token more likely, purple: less likely).")
                changes = {name: gr.HighlightedText(label=source.label, visible=False, elem_id=f"changes-{name}")
                           for name, source in registry.families.items()}
                changes_md = gr.Markdown()
                runs = gr.State([])

            with gr.Tab("Blind A/B", id="blind"):
                gr.Markdown("Two replies, one from each model, in random order. Pick the better one: each vote "
                            "is saved (A/B votes as preference pairs: prompt, chosen, rejected) and counted on the "
                            "Scoreboard. Which model wrote which is revealed after your vote.")
                blind_prompt = gr.Textbox(label="Prompt", lines=2, max_length=max_prompt_chars, elem_id="blind-prompt")
                if prompts:
                    gr.Examples([[p] for p in prompts], inputs=[blind_prompt], label="Example prompts")
                with gr.Row():
                    blind_btn = gr.Button("Generate two replies", variant="primary", elem_id="blind-btn")
                    regenerate_btn = gr.Button("🔄 Regenerate (new seed)", elem_id="regenerate-btn")
                with gr.Row():
                    reply_a = gr.Textbox(label="Reply A", lines=6, interactive=False, elem_id="reply-a",
                                         elem_classes="reply")
                    reply_b = gr.Textbox(label="Reply B", lines=6, interactive=False, elem_id="reply-b",
                                         elem_classes="reply")
                with gr.Row():
                    # Enabled only while a complete round waits for its vote (not mid-stream, not after voting).
                    vote_buttons = {choice: gr.Button(text, elem_id=f"vote-{choice.lower().replace('_', '-')}",
                                                      interactive=False)
                                    for choice, text in CHOICE_LABELS.items()}
                blind_status = gr.Markdown(studio.votes_status(), elem_id="blind-status")
                blind_round = gr.State(None)  # the open round's id only; its sides stay in studio.rounds
                with gr.Accordion("Export votes to the Hub (dataset repo)", open=False):
                    export_repo = gr.Textbox(label="Dataset repo id", placeholder="your-name/dpo-studio-votes")
                    export_private = gr.Checkbox(label="Private", value=True)
                    export_token = gr.Textbox(label="Hub token (write access; empty = this server's login)",
                                              type="password")
                    export_btn = gr.Button("Push votes")
                    export_msg = gr.Markdown()

            with gr.Tab("Scoreboard", id="scoreboard"):
                gr.Markdown("Blind A/B votes per family, from the votes file. DPO win rate = DPO wins / (DPO wins + "
                            "base wins); ties and both-bad votes are counted but not in the rate. The interval is "
                            "the 95 % Wilson score interval.")
                board_rows, board_bars = studio.scoreboard_view()
                board_table = gr.Dataframe(value=board_rows, headers=SCOREBOARD_HEADERS, interactive=False,
                                           elem_id="scoreboard-table")
                board_plot = gr.BarPlot(board_bars, x="family", y="votes", color="outcome", title="Votes by outcome",
                                        elem_id="scoreboard-plot")
                board_refresh = gr.Button("Refresh")

            with gr.Tab("Score a pair", id="score"):
                gr.Markdown("DPO's implicit reward of a reply is β · (log π_DPO(reply | prompt) − "
                            "log π_base(reply | prompt)), with the β it was trained with. The higher reward is the "
                            "reply DPO prefers.")
                score_prompt = gr.Textbox(label="Prompt", lines=2, max_length=max_prompt_chars)
                with gr.Row():
                    score_a = gr.Textbox(label="Reply A", lines=4, max_length=max_prompt_chars)
                    score_b = gr.Textbox(label="Reply B", lines=4, max_length=max_prompt_chars)
                score_btn = gr.Button("Score", variant="primary")
                score_table = gr.Dataframe(
                    headers=["Model", "Reply", "log p base", "log p DPO", "implicit reward"], interactive=False
                )
                score_verdict = gr.Markdown()

            with gr.Tab("Models", id="models"):
                models_md = gr.Markdown(studio.serving_summary())
                refresh_btn = gr.Button("Refresh")

        # ---------------------------------------------------------------------------------------------- events
        # UI events are private and named ui_*, so the public names (/compare, /blind, ...) stay free for gr.api.
        def ui_compare(prompt_text, family_value, max_new_value, temp_value, top_p_value, seed_value,
                       progress=gr.Progress()):
            yield from studio.compare_stream(prompt_text, family_value, max_new_value, temp_value, top_p_value,
                                             seed_value, progress=progress)

        def ui_changes(runs_value):
            highlights, summary = studio.changes(runs_value)
            views = [gr.update(value=highlights.get(name), visible=name in highlights) for name in changes]
            return *views, summary

        def ui_scoreboard():
            return studio.scoreboard_view()

        gr.on([compare_btn.click, prompt.submit], ui_compare, [prompt, family, *settings_inputs],
              [base_out, dpo_out, runs], api_name="ui_compare", api_visibility="private", **model_events).success(
            ui_changes, [runs], [*changes.values(), changes_md], api_name="ui_changes", api_visibility="private",
            **model_events)

        def with_vote_buttons(steps):
            for text_a, text_b, round_id, status in steps:
                yield text_a, text_b, round_id, status, *[gr.update(interactive=round_id is not None)] * len(
                    vote_buttons)

        def ui_blind(prompt_text, family_value, max_new_value, temp_value, top_p_value, seed_value):
            yield from with_vote_buttons(studio.blind_stream(prompt_text, family_value, max_new_value, temp_value,
                                                             top_p_value, seed_value))

        def ui_regenerate(round_id, prompt_text, family_value, max_new_value, temp_value, top_p_value):
            yield from with_vote_buttons(studio.regenerate(round_id, prompt_text, family_value, max_new_value,
                                                           temp_value, top_p_value))

        def ui_vote(round_id, choice):
            return *studio.vote_message(round_id, choice), *[gr.update(interactive=False)] * len(vote_buttons)

        blind_outputs = [reply_a, reply_b, blind_round, blind_status, *vote_buttons.values()]
        gr.on([blind_btn.click, blind_prompt.submit], ui_blind, [blind_prompt, family, *settings_inputs],
              blind_outputs, api_name="ui_blind", api_visibility="private", **model_events)
        regenerate_btn.click(ui_regenerate, [blind_round, blind_prompt, family, max_new, temperature, top_p],
                             blind_outputs, api_name="ui_regenerate", api_visibility="private", **model_events)
        for choice, button in vote_buttons.items():
            button.click(lambda round_id, c=choice: ui_vote(round_id, c), [blind_round],
                         [blind_status, blind_round, *vote_buttons.values()], api_name=f"ui_vote_{choice}",
                         api_visibility="private", **vote_events).then(ui_scoreboard, None, [board_table, board_plot],
                                             api_name=f"ui_scoreboard_{choice}", api_visibility="private",
                                             **light_events)
        board_refresh.click(ui_scoreboard, None, [board_table, board_plot], api_name="ui_scoreboard",
                            api_visibility="private", **light_events)
        export_btn.click(studio.export, [export_repo, export_private, export_token], [export_msg],
                         api_name="ui_export", api_visibility="private", concurrency_id="export",
                         concurrency_limit=1)
        score_btn.click(studio.score, [score_prompt, score_a, score_b, family], [score_table, score_verdict],
                        api_name="ui_score", api_visibility="private", **model_events)
        refresh_btn.click(studio.serving_summary, None, [models_md], api_name="ui_models", api_visibility="private",
                          **light_events)
        demo.load(lambda: (studio.votes_status(), *studio.scoreboard_view()), None,
                  [blind_status, board_table, board_plot], api_name="ui_votes", api_visibility="private",
                  **light_events)

        # -------------------------------------------------------------------------------------- API endpoints
        def compare(prompt: str, family: str = first_family, max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
                    temperature: float = DEFAULT_TEMPERATURE, top_p: float = DEFAULT_TOP_P,
                    seed: int = DEFAULT_SEED) -> tuple[str, str]:
            """Base and DPO outputs for a prompt (family: a name such as "gpt2", a label, or "both").

            Same seed and settings for both sides; temperature 0 = greedy; max_new_tokens is capped server-side.
            """
            base_text, dpo_text, _ = studio.compare(prompt, family, max_new_tokens, temperature, top_p, seed)
            return base_text, dpo_text

        # A generator: Gradio streams each yield. The annotation names one update's two outputs (what gr.api
        # reads to type the endpoint), not the generator.
        def compare_stream(prompt: str, family: str = first_family, max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
                           temperature: float = DEFAULT_TEMPERATURE, top_p: float = DEFAULT_TOP_P,
                           seed: int = DEFAULT_SEED) -> tuple[str, str]:
            """/compare, streamed: (base so far, DPO so far) after every generated token; the last update equals
            /compare's answer for the same inputs. Iterate with `Client.submit(...)`."""
            for base_text, dpo_text, _ in studio.compare_stream(prompt, family, max_new_tokens, temperature, top_p,
                                                                seed):
                yield base_text, dpo_text

        def blind(prompt: str, family: str = first_family, max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
                  temperature: float = DEFAULT_TEMPERATURE, top_p: float = DEFAULT_TOP_P,
                  seed: int = DEFAULT_SEED) -> tuple[str, str, str]:
            """A blind round: (round_id, reply A, reply B) in random order; vote with /vote to see which is which."""
            return studio.blind(prompt, family, max_new_tokens, temperature, top_p, seed)

        def vote(round_id: str, choice: str) -> dict:
            """The one vote of a blind round ("A", "B", "tie" or "both_bad") and the reveal: which model wrote A
            and B, the outcome, the family. Unknown or already-voted round ids are refused."""
            return studio.vote(round_id, choice)

        def scoreboard_api() -> dict:
            """Per family: votes, dpo_wins, base_wins, ties, both_bad, dpo_win_rate (over DPO + base wins) and its
            95 % Wilson interval ci_low / ci_high (None before any decisive vote)."""
            return studio.scoreboard()

        def score(prompt: str, reply_a: str, reply_b: str, family: str = first_family) -> dict:
            """DPO's implicit rewards of two replies and which one it prefers (per family)."""
            text = studio.check_prompt(prompt)
            replies = (studio.check_prompt(reply_a, "reply A"), studio.check_prompt(reply_b, "reply B"))
            return {name: studio.score_one(name, text, *replies) for name in studio.families_for(family)}

        gr.api(compare, api_name="compare", **model_events)
        gr.api(compare_stream, api_name="compare_stream", **model_events)
        gr.api(blind, api_name="blind", **model_events)
        gr.api(vote, api_name="vote", **vote_events)
        gr.api(scoreboard_api, api_name="scoreboard", **light_events)
        gr.api(score, api_name="score", **model_events)

    demo.queue(default_concurrency_limit=2, max_size=max_queue_size)
    demo.studio = studio  # type: ignore[attr-defined]
    return demo


def launch(demo: gr.Blocks, *, server_name: str | None = None, server_port: int | None = None,
           prevent_thread_lock: bool = False, quiet: bool = False) -> None:
    """`demo.launch` with the app's theme and CSS (Gradio 6 takes them at launch)."""
    demo.launch(server_name=server_name, server_port=server_port, prevent_thread_lock=prevent_thread_lock,
                quiet=quiet, theme=THEME, css=CSS)


def _port_from_env() -> int:
    value = os.environ.get("GRADIO_SERVER_PORT", "7860")
    try:
        port = int(value)
    except ValueError:
        raise AppConfigError(f"GRADIO_SERVER_PORT={value!r} is not a port number") from None
    return port


def main(argv: Sequence[str] | None = None) -> None:
    """`python app.py [--models-dir DIR] [--config FILE] [--port N] [--votes-file F]`."""
    parser = argparse.ArgumentParser(
        prog="app.py", description="Serve the DPO Studio comparison app (base vs DPO, blind A/B votes).")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--models-dir", help="use what train_dpo.py wrote into DIR (DIR/<family>/adapter|merged)")
    source.add_argument("--config", help="YAML file with Hub repo ids per family (default: $DPO_STUDIO_CONFIG, "
                                         "./app_config.yaml, else examples/app_config.yaml)")
    parser.add_argument("--port", type=int, default=None,
                        help="port (default: $GRADIO_SERVER_PORT or 7860); host: $GRADIO_SERVER_NAME or 127.0.0.1")
    parser.add_argument("--votes-file", default=str(DEFAULT_VOTES_FILE),
                        help=f"JSONL file the blind A/B votes are appended to (default: {DEFAULT_VOTES_FILE})")
    parser.add_argument("--max-new-tokens-cap", type=int, default=MAX_NEW_TOKENS_CAP,
                        help=f"server-side cap on max new tokens (default: {MAX_NEW_TOKENS_CAP})")
    parser.add_argument("--max-queue-size", type=int, default=None,
                        help=f"requests that may wait in the queue before new ones are refused (default: "
                             f"${MAX_QUEUE_ENV} or {DEFAULT_MAX_QUEUE}); waiting visitors see their position")
    parser.add_argument("--log-level", default=None, choices=sorted(LEVELS),
                        help="log level (default: $LOG_LEVEL or info); debug also shows HTTP requests and "
                             "library deprecation warnings")
    args = parser.parse_args(argv)
    if args.max_queue_size is not None and args.max_queue_size < 1:
        parser.error("--max-queue-size must be at least 1")
    setup_logging(args.log_level)
    try:
        port = args.port if args.port is not None else _port_from_env()
        demo = build_app(config=args.config, models_dir=args.models_dir, votes_file=args.votes_file,
                         max_new_tokens_cap=args.max_new_tokens_cap, max_queue_size=args.max_queue_size)
    except AppConfigError as exc:
        parser.exit(2, f"app.py: error: {exc}\n")
    launch(demo, server_name=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"), server_port=port)


if __name__ == "__main__":  # pragma: no cover
    main(sys.argv[1:])
