"""`build_app`: the Gradio Blocks assembled from the Studio, the round training service, the tabs (`ui.tabs`) and
the API (`ui.api`)."""

import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import gradio as gr

from dpo_studio.arena.hub_store import DEFAULT_EVERY_MINUTES, DEFAULT_VOTES_FOLDER, HubVoteStore
from dpo_studio.arena.visitor_limits import RateLimits, VisitorLimits
from dpo_studio.arena.votes import DEFAULT_VOTES_FILE, VoteStore
from dpo_studio.inference.model_sources import ModelRegistry, resolve_sources
from dpo_studio.ui.api import register as register_api
from dpo_studio.ui.events import Events
from dpo_studio.ui.input_checks import MAX_NEW_TOKENS_CAP, MAX_PROMPT_CHARS
from dpo_studio.ui.owner import OwnerPolicy
from dpo_studio.ui.queueing import max_queue_from_env
from dpo_studio.ui.round_training import (
    DEFAULT_OUTPUT_DIR,
    RoundTraining,
    TrainSettings,
)
from dpo_studio.ui.studio import Studio
from dpo_studio.ui.tabs import (
    blind,
    compare,
    controls,
    leaderboard,
    models,
    score,
    scoreboard,
    train,
)

PROMPTS_FILE = Path("examples") / "prompts.txt"
PACKAGE_PROMPTS_FILE = Path(__file__).resolve().parents[1] / PROMPTS_FILE  # package data (dpo_studio/examples)


def load_example_prompts() -> list[str]:
    """Example prompts from ./examples/prompts.txt (a Space) or the repository's copy; none if neither exists."""
    for path in (Path.cwd() / PROMPTS_FILE, PACKAGE_PROMPTS_FILE):
        if path.is_file():
            return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return []


def _blocks(studio: Studio, prompts: list[str], events: Events) -> gr.Blocks:
    """Every tab laid out, then their events wired (votes refresh the Scoreboard, so all tabs exist first)."""
    first_family = next(iter(studio.registry.families))
    with gr.Blocks(title="DPO Studio: base vs DPO") as demo:
        shared = controls.layout(studio, first_family)
        with gr.Tabs():
            compare_tab = compare.layout(studio, prompts)
            blind_tab = blind.layout(studio, prompts)
            board_tab = scoreboard.layout(studio)
            ranks_tab = leaderboard.layout(studio)
            score_tab = score.layout(studio)
            models_tab = models.layout(studio)
            train_tab = train.layout(studio, studio.training)  # None unless the server enabled "train"
        compare.wire(compare_tab, shared, studio, events)
        blind.wire(blind_tab, shared, board_tab, studio, events)
        scoreboard.wire(board_tab, studio, events)
        leaderboard.wire(ranks_tab, studio, events)
        score.wire(score_tab, shared, studio, events)
        models.wire(models_tab, studio, events)
        train.wire(train_tab, studio.training, events)
        demo.load(lambda: (studio.votes_status(), *studio.scoreboard_view(), *studio.leaderboard_view()), None,
                  [blind_tab.status, *board_tab.outputs, *ranks_tab.outputs], api_name="ui_votes", api_visibility="private",
                  **events.light)
        register_api(studio, first_family, events)
    return demo


def build_studio(
    registry: ModelRegistry | None = None,
    *,
    config: str | Path | None = None,
    models_dir: str | Path | None = None,
    votes_file: str | Path = DEFAULT_VOTES_FILE,
    max_new_tokens_cap: int = MAX_NEW_TOKENS_CAP,
    max_prompt_chars: int = MAX_PROMPT_CHARS,
    rng: random.Random | None = None,
    votes_repo: str | None = None,
    votes_folder: str | Path = DEFAULT_VOTES_FOLDER,
    votes_every: float = DEFAULT_EVERY_MINUTES,
    owner_actions: str | Sequence[str] | None = None,
    export_repo: str | None = None,
    train_output_dir: str | Path = DEFAULT_OUTPUT_DIR,
    train_hub_namespace: str | None = None,
    train_settings: TrainSettings | None = None,
    rate_limits: RateLimits | None = None,
) -> Studio:
    """The Studio behind the app. Models come from `registry`, else `models_dir`, else the config (see app_config).

    Args:
        votes_repo: keep the votes in this Hub dataset (committed from `votes_folder` every `votes_every` minutes)
            instead of `votes_file`.
        owner_actions: owner-only actions to enable (None: $DPO_STUDIO_OWNER_ACTIONS); they need
            $DPO_STUDIO_OWNER_SECRET when it is set.
        export_repo: where an owner's export writes without a votes repo.
        train_output_dir, train_hub_namespace, train_settings: with "train" enabled, the Train tab trains the next
            round into `train_output_dir` with these training flags and, with "push", pushes it under
            `train_hub_namespace` (`ui.round_training`).
        rate_limits: generations per minute and votes per day per visitor, and duplicate votes flagged
            (`visitor_limits`); None: no per-visitor limits (`app.py` turns them on by default).
    """
    if registry is None:
        registry = ModelRegistry(resolve_sources(config=config, models_dir=models_dir))
    votes = (HubVoteStore(votes_repo, votes_folder, every=votes_every) if votes_repo else VoteStore(votes_file))
    owner = OwnerPolicy.from_env(owner_actions)
    training = RoundTraining(registry, votes, owner, output_dir=train_output_dir, hub_namespace=train_hub_namespace,
                             settings=train_settings)
    return Studio(registry, votes, max_new_tokens_cap=max_new_tokens_cap, max_prompt_chars=max_prompt_chars,
                  rng=rng, owner=owner, export_repo=export_repo, training=training,
                  visitors=VisitorLimits(rate_limits) if rate_limits is not None else None)


def build_app(
    registry: ModelRegistry | None = None,
    *,
    studio: Studio | None = None,
    example_prompts: Sequence[str] | None = None,
    concurrency_limit: int = 1,
    max_queue_size: int | None = None,
    **studio_options: Any,
) -> gr.Blocks:
    """The Gradio app over `studio`, else over `build_studio(registry, **studio_options)`.

    `max_queue_size` (None: $DPO_STUDIO_MAX_QUEUE or DEFAULT_MAX_QUEUE) is how many requests may wait; waiting
    visitors see their position.
    """
    if studio is None:
        studio = build_studio(registry, **studio_options)
    elif registry is not None or studio_options:
        raise TypeError(f"build_app: pass a Studio or what builds one, not both ({sorted(studio_options)})")
    if max_queue_size is None:
        max_queue_size = max_queue_from_env()
    prompts = list(load_example_prompts() if example_prompts is None else example_prompts)
    demo = _blocks(studio, prompts, Events(concurrency_limit))
    demo.queue(default_concurrency_limit=2, max_size=max_queue_size)
    return demo
