"""The public API: `gr.api` endpoints typed from these Python signatures (`Client.predict(..., api_name=...)`).

* `/compare` (prompt, family, max_new_tokens, temperature, top_p, seed) -> (base output, DPO output);
* `/compare_stream`, the same inputs: `Client.submit(...)` iterates (base so far, DPO so far), the last = `/compare`;
* `/blind` (prompt, family, settings) -> (round_id, reply A, reply B); `/vote` (round_id, "A" | "B" | "tie" |
  "both_bad") -> the reveal; `/scoreboard` -> per family votes, wins, ties, both-bad, DPO win rate and 95 % CI;
* `/leaderboard` -> per family Bradley–Terry ratings of base and every DPO round (95 % bootstrap intervals, rank)
  and each pair's head-to-head counts;
* `/score` -> implicit rewards of two replies.

No type is enforced by a slider here: out-of-range numbers are capped or refused by `input_checks.InputChecks`.
"""

# No `from __future__ import annotations`: gr.api reads the return annotation (`tuple[str, str]` = two outputs)
# without evaluating strings.

import gradio as gr

from dpo_studio.ui.events import Events
from dpo_studio.ui.input_checks import (
    DEFAULT_MAX_NEW_TOKENS,
    DEFAULT_SEED,
    DEFAULT_TEMPERATURE,
    DEFAULT_TOP_P,
)
from dpo_studio.ui.studio import Studio


def _generation_endpoints(studio: Studio, first_family: str, events: Events) -> None:
    def compare(prompt: str, family: str = first_family, max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
                temperature: float = DEFAULT_TEMPERATURE, top_p: float = DEFAULT_TOP_P,
                seed: int = DEFAULT_SEED, request: gr.Request = None) -> tuple[str, str]:
        """Base and DPO outputs for a prompt (family: a name such as "gpt2", a label, or "both").

        Same seed and settings for both sides; temperature 0 = greedy; max_new_tokens is capped server-side.
        """
        studio.admit("generation", request)
        base_text, dpo_text, _ = studio.compare(prompt, family, max_new_tokens, temperature, top_p, seed)
        return base_text, dpo_text

    # A generator: Gradio streams each yield. The annotation names one update's two outputs (what gr.api
    # reads to type the endpoint), not the generator.
    def compare_stream(prompt: str, family: str = first_family, max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
                       temperature: float = DEFAULT_TEMPERATURE, top_p: float = DEFAULT_TOP_P,
                       seed: int = DEFAULT_SEED, request: gr.Request = None) -> tuple[str, str]:
        """/compare, streamed: (base so far, DPO so far) after every generated token; the last update equals
        /compare's answer for the same inputs. Iterate with `Client.submit(...)`."""
        studio.admit("generation", request)
        for base_text, dpo_text, _ in studio.compare_stream(prompt, family, max_new_tokens, temperature, top_p,
                                                            seed):
            yield base_text, dpo_text

    gr.api(compare, api_name="compare", **events.model)
    gr.api(compare_stream, api_name="compare_stream", **events.model)


def _vote_endpoints(studio: Studio, first_family: str, events: Events) -> None:
    def blind(prompt: str, family: str = first_family, max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
              temperature: float = DEFAULT_TEMPERATURE, top_p: float = DEFAULT_TOP_P,
              seed: int = DEFAULT_SEED, request: gr.Request = None) -> tuple[str, str, str]:
        """A blind round: (round_id, reply A, reply B) in random order; vote with /vote to see which is which."""
        studio.admit("generation", request)
        return studio.blind(prompt, family, max_new_tokens, temperature, top_p, seed)

    def vote(round_id: str, choice: str, request: gr.Request = None) -> dict:
        """The one vote of a blind round ("A", "B", "tie" or "both_bad") and the reveal: which model wrote A
        and B, the outcome, the family, and whether it was flagged as a duplicate (the same visitor, prompt and
        pair: kept, not counted). Unknown or already-voted round ids are refused."""
        return studio.vote(round_id, choice, studio.admit("vote", request))

    def scoreboard_api() -> dict:
        """Per family: votes, dpo_wins, base_wins, ties, both_bad, dpo_win_rate (over DPO + base wins) and its
        95 % Wilson interval ci_low / ci_high (None before any decisive vote); beside them dpo_win_rate_lc (at
        equal reply length), lc_ci_low / lc_ci_high (bootstrap), lc_votes, mean_length_base / mean_length_dpo
        (characters)."""
        return studio.scoreboard()

    def leaderboard_api() -> dict:
        """Per family: {"votes", "models": [{model, rating, ci_low, ci_high, rank, votes}], "pairs": [{a, b,
        a_wins, b_wins, ties, p_b_beats_a, ci_low, ci_high}]}; Bradley–Terry ratings (Elo scale, base = 1000)
        with 95 % bootstrap intervals, ties as half a win; None for a model without votes. "length_controlled": the
        same at equal reply length ({"votes", "length_coef", "models", "pairs"}); "mean_length": characters per
        model."""
        return studio.leaderboard()

    gr.api(blind, api_name="blind", **events.model)
    gr.api(leaderboard_api, api_name="leaderboard", **events.light)
    gr.api(vote, api_name="vote", **events.vote)
    gr.api(scoreboard_api, api_name="scoreboard", **events.light)


def _score_endpoint(studio: Studio, first_family: str, events: Events) -> None:
    def score(prompt: str, reply_a: str, reply_b: str, family: str = first_family,
              request: gr.Request = None) -> dict:
        """DPO's implicit rewards of two replies and which one it prefers (per family)."""
        studio.admit("generation", request)
        return studio.score_all(prompt, reply_a, reply_b, family)

    gr.api(score, api_name="score", **events.model)


def register(studio: Studio, first_family: str, events: Events) -> None:
    """Add every public endpoint to the Blocks being built (call inside `with gr.Blocks()`)."""
    _generation_endpoints(studio, first_family, events)
    _vote_endpoints(studio, first_family, events)
    _score_endpoint(studio, first_family, events)
