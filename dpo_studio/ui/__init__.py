"""The comparison app: base vs DPO side by side (Gradio Blocks), blind A/B votes, implicit-reward scoring.

Layout and callbacks only: generation, log-ratios and scoring come from `dpo_studio.inference.generation`, model sources and
loading from `dpo_studio.inference.model_sources`, rounds, vote storage, tallies and export from `dpo_studio.arena.votes`.

    studio.py    Studio: the services behind the callbacks, one part per job:
      input_checks.py  input checks of every value a client sends
      engine.py    loaded pairs, context window, generate/stream with one-line errors
      comparing.py compare (streamed), What DPO changed, the serving summary
      scoring.py   implicit rewards of two replies
      blind_rounds.py  blind rounds and their one vote, the reveal
      tally.py     the votes file: count, scoreboard, Hub export
    round_training.py  RoundTraining: the Train tab's service (the CLI in a subprocess on the votes, its
                 progress log, cancel, the finished round added to the registry); built next to the Studio
    render.py    Markdown/HTML escaping, side-by-side columns
    tabs/        one module per tab (layout + events), controls.py the shared family/settings controls
    api.py       the public gr.api endpoints (/compare, /compare_stream, /blind, /vote, /scoreboard, /leaderboard,
                 /score)
    events.py    concurrency groups; queueing.py the queue cap
    app.py       build_studio, build_app; server.py launch and `python app.py`'s command line
"""

from dpo_studio.ui.app import build_app, build_studio, load_example_prompts
from dpo_studio.ui.input_checks import (
    DEFAULT_MAX_NEW_TOKENS,
    DEFAULT_SEED,
    DEFAULT_TEMPERATURE,
    DEFAULT_TOP_P,
    MAX_NEW_TOKENS_CAP,
    MAX_PROMPT_CHARS,
)
from dpo_studio.ui.queueing import DEFAULT_MAX_QUEUE, MAX_QUEUE_ENV, max_queue_from_env
from dpo_studio.ui.render import md_text
from dpo_studio.ui.server import launch, main
from dpo_studio.ui.studio import Studio

__all__ = ["DEFAULT_MAX_NEW_TOKENS", "DEFAULT_MAX_QUEUE", "DEFAULT_SEED", "DEFAULT_TEMPERATURE",
           "DEFAULT_TOP_P", "MAX_NEW_TOKENS_CAP", "MAX_PROMPT_CHARS", "MAX_QUEUE_ENV",
           "Studio", "build_app", "build_studio", "launch", "load_example_prompts", "main", "max_queue_from_env", "md_text"]
