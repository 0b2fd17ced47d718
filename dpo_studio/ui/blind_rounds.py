"""The Studio's blind A/B rounds (/blind, /vote and the Blind A/B tab): rounds held server-side in
`votes.RoundStore` until their one vote, votes appended through `votes.VoteStore`."""

import random
from collections.abc import Iterator
from typing import Any

import gradio as gr

from dpo_studio.arena.visitor_limits import VisitorLimits
from dpo_studio.arena.votes import RoundError, RoundStore, VotesClosed, draw_sides, make_vote, mark_duplicate
from dpo_studio.inference.generation import GenerationResult
from dpo_studio.inference.model_sources import BASE, FIRST_ROUND
from dpo_studio.public_refs import public_ref
from dpo_studio.ui.engine import Engine
from dpo_studio.ui.input_checks import (
    DEFAULT_MAX_NEW_TOKENS,
    DEFAULT_SEED,
    DEFAULT_TEMPERATURE,
    DEFAULT_TOP_P,
    InputChecks,
    check_choice,
    check_text,
    user_error,
)
from dpo_studio.ui.render import html_text, md_text
from dpo_studio.ui.tally import VoteRecords

CHOICE_LABELS = {"A": "A is better", "B": "B is better", "tie": "Tie", "both_bad": "Both are bad"}
MODEL_NAMES = {BASE: "base", FIRST_ROUND: "DPO"}  # later rounds show their own names ("round2")
VOTES_CLOSED = "The server is restarting and takes no votes now; vote again in a minute."
BlindStep = tuple[str, str, str | None, str]  # (reply A, reply B, round id once complete else None, status)


def model_title(name: str) -> str:
    """How the reveal names a model: "base", "DPO", or a later round's name."""
    return MODEL_NAMES.get(name, name)


class BlindRounds:
    """Blind rounds and their votes, over the checks, the engine and the vote records it is given; `rng` draws the
    models and their order, `rounds` holds open rounds until their one vote."""

    def __init__(self, checks: InputChecks, engine: Engine, records: VoteRecords, rng: random.Random,
                 rounds: RoundStore, visitors: VisitorLimits | None = None) -> None:
        self.checks = checks
        self.engine = engine
        self.records = records
        self.registry = engine.registry
        self.rng = rng
        self.rounds = rounds
        self.visitors = visitors

    def _blind_setup(self, prompt: Any, family: Any, max_new_tokens: Any, temperature: Any, top_p: Any,
                     seed: Any) -> tuple[str, str, dict[str, Any], dict[str, str]]:
        text, names, settings = self.checks.request(prompt, family, max_new_tokens, temperature, top_p, seed)
        name = names[0] if len(names) == 1 else self.rng.choice(names)  # "both": the family stays blind too
        return text, name, settings, self._draw_sides(name)

    def _draw_sides(self, family: str) -> dict[str, str]:
        """Two of the family's servable models at random (base vs dpo when that is all), in random order."""
        return draw_sides(self.registry.source(family).arena_pairs(), self.rng)

    def _public_model_ref(self, family: str, name: str) -> str:
        source = self.registry.source(family)
        if name == BASE:
            return public_ref(source.base) or ""
        round_ = source.dpo_round(name)
        return public_ref(round_.adapter or round_.merged) or ""

    def _open_round(self, text: str, name: str, settings: dict[str, Any], sides: dict[str, str],
                    results: dict[str, GenerationResult]):
        return self.rounds.open(prompt=text, family=name, texts={m: r.text for m, r in results.items()},
                                sides=sides, settings=settings,
                                models={m: self._public_model_ref(name, m) for m in sides.values()})

    def blind(self, prompt: str, family: str, max_new_tokens: Any = DEFAULT_MAX_NEW_TOKENS,
              temperature: Any = DEFAULT_TEMPERATURE, top_p: Any = DEFAULT_TOP_P,
              seed: Any = DEFAULT_SEED) -> tuple[str, str, str]:
        """A new blind round: (round id, reply A, reply B). Which model wrote which stays on the server."""
        text, name, settings, sides = self._blind_setup(prompt, family, max_new_tokens, temperature, top_p, seed)
        models = (sides["A"], sides["B"])
        round_ = self._open_round(text, name, settings, sides, self.engine.generate_models(name, models, text, settings))
        return round_.round_id, round_.replies["A"], round_.replies["B"]

    def blind_stream(self, prompt: str, family: str, max_new_tokens: Any, temperature: Any, top_p: Any,
                     seed: Any) -> Iterator[BlindStep]:
        """A new blind round as it grows: (reply A, reply B, round id once complete else None, status)."""
        text, name, settings, sides = self._blind_setup(prompt, family, max_new_tokens, temperature, top_p, seed)
        # Two plain models stream one after the other, which would give the order away: those show the final only.
        models = (sides["A"], sides["B"])
        shares = self.engine.models_pair(name, *models)[0].shares_weights
        results: dict[str, GenerationResult] = {}
        for results in self.engine.stream_models(name, models, text, settings):
            if shares:
                yield results[sides["A"]].text, results[sides["B"]].text, None, "Generating both replies…"
        round_ = self._open_round(text, name, settings, sides, results)
        yield (round_.replies["A"], round_.replies["B"], round_.round_id,
               f"Which reply is better? Vote below (seed {settings['seed']}). " + self.records.votes_status())

    def regenerate(self, round_id: str | None, prompt: str, family: str, max_new_tokens: Any, temperature: Any,
                   top_p: Any) -> Iterator[BlindStep]:
        """Drop the open round (no vote) and draw a new one with a fresh random seed."""
        self.rounds.discard(round_id)
        yield from self.blind_stream(prompt, family, max_new_tokens, temperature, top_p, self.rng.randrange(2**31))

    def vote(self, round_id: str, choice: str, visitor: tuple[str, ...] = ()) -> dict[str, Any]:
        """Record the one vote of a round and reveal it: which model wrote A and B, and who won.

        `choice`: "A", "B", "tie" or "both_bad". An unknown or already-voted round id is a gr.Error. `visitor`: the
        voter's keys (`ui.limits.visitor_of`); a second vote of theirs on the same prompt and pair is kept but flagged
        as a duplicate (`votes.mark_duplicate`).
        """
        choice = check_choice(choice)
        round_id = check_text(round_id if round_id is None or isinstance(round_id, str) else str(round_id),
                              "round id")
        if not self.records.votes.accepting:  # shutting down: the round stays open for nobody, but is not spent
            raise user_error(VOTES_CLOSED)
        try:
            round_ = self.rounds.close(round_id)
        except RoundError as exc:
            raise user_error(html_text(str(exc))) from None
        record = make_vote(prompt=round_.prompt, replies=round_.replies, sides=round_.sides, choice=choice,
                           family=round_.family, settings=round_.settings, models=round_.models)
        if self.visitors is not None and visitor and self.visitors.is_duplicate(
                visitor, round_.family, round_.prompt, round_.sides.values()):
            mark_duplicate(record)
        try:
            count = self.records.votes.append(record)
        except VotesClosed:
            raise user_error(VOTES_CLOSED) from None
        return {"round_id": round_.round_id, "vote": record["vote"], "outcome": record["outcome"],
                "family": round_.family, "A": round_.sides["A"], "B": round_.sides["B"],
                "preference_pair": record["chosen"] is not None, "duplicate": bool(record.get("duplicate")),
                "votes": count}

    def vote_message(self, round_id: str | None, choice: str, visitor: tuple[str, ...] = ()) -> tuple[str, None]:
        """The UI's vote: (reveal message, cleared round id)."""
        if not round_id:
            return "Generate a pair of replies first. " + self.records.votes_status(), None
        try:
            reveal = self.vote(round_id, choice, visitor)
        except gr.Error as exc:
            return f"{exc.message} " + self.records.votes_status(), None
        shown = (f"Reply A was the **{md_text(model_title(reveal['A']))}** model, reply B the "
                 f"**{md_text(model_title(reveal['B']))}** model ({md_text(self.engine.label(reveal['family']))}).")
        if reveal["duplicate"]:
            head = "Saved, but not counted: you voted on this prompt and these two models before."
        elif reveal["vote"] in ("A", "B") and reveal["vote"] == choice:
            head = f"Saved: you preferred reply {choice}."
        elif reveal["vote"] == "tie" and choice in ("A", "B"):
            head = "Both replies are identical: saved as a tie (no preference pair)."
        else:
            head = f"Saved: {CHOICE_LABELS[reveal['vote']].lower()} (counted on the scoreboard, not a training pair)."
        return f"{head} {shown} " + self.records.votes_status(), None
