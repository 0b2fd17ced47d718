"""`Studio`: what the app does, behind the Gradio callbacks and API endpoints (also called directly by tests).

Assembled from one part per job: input checks (`input_checks`), model access (`engine`), compare and What DPO changed
(`comparing`), scoring (`scoring`), blind rounds and votes (`blind_rounds`), the votes file's tallies and export (`tally`).
"""

import random

from dpo_studio.app_config import ModelRegistry
from dpo_studio.ui.blind_rounds import BlindRounds
from dpo_studio.ui.comparing import Comparing
from dpo_studio.ui.engine import Engine, on_gpu
from dpo_studio.ui.input_checks import (
    MAX_NEW_TOKENS_CAP,
    MAX_PROMPT_CHARS,
    RequestChecks,
)
from dpo_studio.ui.owner import OwnerPolicy
from dpo_studio.ui.scoring import Scoring
from dpo_studio.ui.tally import VoteRecords
from dpo_studio.votes import RoundStore, VoteStore


class Studio(RequestChecks, Engine, Comparing, Scoring, BlindRounds, VoteRecords):
    """The app's services over one model registry and one votes file."""

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
    ) -> None:
        super().__init__(registry.families, max_new_tokens_cap=max_new_tokens_cap, max_prompt_chars=max_prompt_chars)
        self.registry = registry
        self.votes = votes
        self.rng = rng or random.SystemRandom()  # blind order must not be guessable from the seed
        self.owner = owner or OwnerPolicy()  # owner-only actions: all off unless the server enabled them
        self.export_repo = export_repo  # where an owner's export writes: server configuration only
        self.rounds = RoundStore()  # open blind rounds: which side is which never leaves the server before the vote
        # Wrapped here, before launch: ZeroGPU looks for its GPU functions when the app starts.
        self._decode_on_device = on_gpu(self._decode)
