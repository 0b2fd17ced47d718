"""The concurrency groups every event and endpoint of the app runs in."""

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Events:
    """Concurrency groups of the app's events.

    All model work shares one group: the engine seeds torch's global RNG per call, so running two generations at
    once would make seeded sampling irreproducible; the queue shows waiting users their position. Everything that
    does not touch a model (votes, scoreboard, export, the Models tab) has its own group, so it never waits behind a
    long generation.
    """

    concurrency_limit: int = 1
    model: dict[str, Any] = field(init=False)
    vote: dict[str, Any] = field(init=False)
    light: dict[str, Any] = field(init=False)

    def __post_init__(self) -> None:
        self.model = {"concurrency_id": "models", "concurrency_limit": self.concurrency_limit}
        self.vote = {"concurrency_id": "votes", "concurrency_limit": 1}  # one vote at a time: a round takes one
        self.light = {"concurrency_id": "light", "concurrency_limit": 4}
