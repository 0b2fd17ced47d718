"""`Studio`: what the app does, behind the Gradio callbacks and API endpoints (also called directly by tests).

Composed of one service per job, each handed the services it needs: input checks (`input_checks.InputChecks`),
model access (`engine.Engine`), compare and What DPO changed (`comparing.Comparing`), scoring (`scoring.Scoring`),
the votes' tallies and export (`tally.VoteRecords`), blind rounds and their votes (`blind_rounds.BlindRounds`).
The methods below are the app's surface; each hands the call to the service that owns it.
"""

import random
from collections.abc import Iterator
from typing import Any

import pandas as pd

from dpo_studio.arena.visitor_limits import RateLimited, VisitorLimits
from dpo_studio.arena.votes import RoundStore, VoteStore
from dpo_studio.inference.model_sources import ModelRegistry
from dpo_studio.ui.blind_rounds import BlindRounds, BlindStep
from dpo_studio.ui.comparing import Columns, Comparing
from dpo_studio.ui.engine import Engine
from dpo_studio.ui.input_checks import (
    DEFAULT_MAX_NEW_TOKENS,
    DEFAULT_SEED,
    DEFAULT_TEMPERATURE,
    DEFAULT_TOP_P,
    MAX_NEW_TOKENS_CAP,
    MAX_PROMPT_CHARS,
    InputChecks,
    user_error,
)
from dpo_studio.ui.limits import visitor_of
from dpo_studio.ui.owner import OwnerPolicy
from dpo_studio.ui.round_training import RoundTraining
from dpo_studio.ui.scoring import Scoring
from dpo_studio.ui.tally import VoteRecords


class Studio:
    """The app's services over one model registry and one votes store."""

    def __init__(
        self,
        registry: ModelRegistry,
        votes: VoteStore,
        *,
        max_new_tokens_cap: int = MAX_NEW_TOKENS_CAP,
        max_prompt_chars: int = MAX_PROMPT_CHARS,
        rng: random.Random | None = None,
        owner: OwnerPolicy | None = None,
        export_repo: str | None = None,
        training: RoundTraining | None = None,
        visitors: VisitorLimits | None = None,
    ) -> None:
        """Args:
            registry: the families and their models (loaded on first use).
            votes: where votes are appended (a file, or a Hub-backed store).
            max_new_tokens_cap, max_prompt_chars: server-side limits, whatever a client sends.
            rng: draws blind pairs and their order (default: the OS's randomness, so no seed can predict them).
            owner: which owner-only actions are on (default: none).
            export_repo: where an owner's export writes, from the server's configuration only.
            training: the Train tab's service (default: one over this registry and votes, writing to
                `round_training.DEFAULT_OUTPUT_DIR`; it acts only when the owner policy enables "train").
            visitors: per-visitor limits and duplicate-vote memory (None: no limits, e.g. a local session).
        """
        self.registry = registry
        self.checks = InputChecks(registry.families, max_new_tokens_cap=max_new_tokens_cap,
                                  max_prompt_chars=max_prompt_chars)
        self.engine = Engine(registry)
        self.comparing = Comparing(self.checks, self.engine)
        self.scoring = Scoring(self.checks, self.engine)
        owner = owner or OwnerPolicy()
        self.records = VoteRecords(votes, registry, owner, export_repo)
        self.training = training or RoundTraining(registry, votes, owner)
        # Open blind rounds: which side is which never leaves the server before the vote.
        self.visitors = visitors
        self.blind_rounds = BlindRounds(self.checks, self.engine, self.records, rng or random.SystemRandom(),
                                        RoundStore(), visitors)

    # -- per-visitor limits
    def admit(self, kind: str, request: Any) -> tuple[str, ...]:
        """Count a "generation" or "vote" of the visitor behind `request` (a gr.Request) against its limits; the
        visitor's keys, or a one-line gr.Error saying when to retry."""
        keys = visitor_of(request)
        if self.visitors is not None:
            try:
                self.visitors.check(kind, keys)
            except RateLimited as exc:
                raise user_error(str(exc)) from None
        return keys

    # -- what the records hold
    @property
    def votes(self) -> VoteStore:
        return self.records.votes

    @property
    def owner(self) -> OwnerPolicy:
        return self.records.owner

    @property
    def max_new_tokens_cap(self) -> int:
        return self.checks.max_new_tokens_cap

    @property
    def max_prompt_chars(self) -> int:
        return self.checks.max_prompt_chars

    @property
    def family_choices(self) -> list[tuple[str, str]]:
        return self.checks.family_choices

    # -- compare, What DPO changed, the Models tab (streams are generator functions: Gradio streams only those)
    def compare(self, prompt: str, family: str, max_new_tokens: Any = DEFAULT_MAX_NEW_TOKENS,
                temperature: Any = DEFAULT_TEMPERATURE, top_p: Any = DEFAULT_TOP_P, seed: Any = DEFAULT_SEED,
                progress: Any = None) -> Columns:
        return self.comparing.compare(prompt, family, max_new_tokens, temperature, top_p, seed, progress)

    def compare_stream(self, prompt: str, family: str, max_new_tokens: Any = DEFAULT_MAX_NEW_TOKENS,
                       temperature: Any = DEFAULT_TEMPERATURE, top_p: Any = DEFAULT_TOP_P, seed: Any = DEFAULT_SEED,
                       progress: Any = None) -> Iterator[Columns]:
        yield from self.comparing.compare_stream(prompt, family, max_new_tokens, temperature, top_p, seed, progress)

    def changes(self, runs: list[dict[str, Any]] | None) -> tuple[dict[str, list[tuple[str, float]]], str]:
        return self.comparing.changes(runs)

    def serving_summary(self) -> str:
        return self.comparing.serving_summary()

    # -- scoring
    def score(self, prompt: str, reply_a: str, reply_b: str, family: str) -> tuple[list[list[Any]], str]:
        return self.scoring.score(prompt, reply_a, reply_b, family)

    def score_all(self, prompt: Any, reply_a: Any, reply_b: Any, family: Any) -> dict[str, dict[str, Any]]:
        return self.scoring.score_all(prompt, reply_a, reply_b, family)

    # -- blind rounds and votes
    def blind(self, prompt: str, family: str, max_new_tokens: Any = DEFAULT_MAX_NEW_TOKENS,
              temperature: Any = DEFAULT_TEMPERATURE, top_p: Any = DEFAULT_TOP_P,
              seed: Any = DEFAULT_SEED) -> tuple[str, str, str]:
        return self.blind_rounds.blind(prompt, family, max_new_tokens, temperature, top_p, seed)

    def blind_stream(self, prompt: str, family: str, max_new_tokens: Any, temperature: Any, top_p: Any,
                     seed: Any) -> Iterator[BlindStep]:
        yield from self.blind_rounds.blind_stream(prompt, family, max_new_tokens, temperature, top_p, seed)

    def regenerate(self, round_id: str | None, prompt: str, family: str, max_new_tokens: Any, temperature: Any,
                   top_p: Any) -> Iterator[BlindStep]:
        yield from self.blind_rounds.regenerate(round_id, prompt, family, max_new_tokens, temperature, top_p)

    def vote(self, round_id: str, choice: str, visitor: tuple[str, ...] = ()) -> dict[str, Any]:
        return self.blind_rounds.vote(round_id, choice, visitor)

    def vote_message(self, round_id: str | None, choice: str, visitor: tuple[str, ...] = ()) -> tuple[str, None]:
        return self.blind_rounds.vote_message(round_id, choice, visitor)

    # -- tallies and export
    def votes_status(self) -> str:
        return self.records.votes_status()

    def scoreboard(self) -> dict[str, dict[str, Any]]:
        return self.records.scoreboard()

    def scoreboard_view(self) -> tuple[list[list[Any]], pd.DataFrame]:
        return self.records.scoreboard_view()

    def leaderboard(self) -> dict[str, dict[str, Any]]:
        return self.records.leaderboard()

    def leaderboard_view(self) -> tuple[list[list[Any]], list[list[Any]]]:
        return self.records.leaderboard_view()

    def export(self, owner_secret: str | None = None) -> str:
        return self.records.export(owner_secret)
