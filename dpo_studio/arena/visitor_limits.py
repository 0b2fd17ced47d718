"""Limits per visitor, as Chatbot Arena keeps them: generations per minute, votes per day, duplicate votes flagged.

A visitor is known by two keys: its Gradio session and its client address (on a Space, the address the Space's proxy
put last in `X-Forwarded-For`; see `ui.limits.visitor_of`). A request counts against both keys and is refused when
either is over its limit, so neither a new session nor a new address alone gets around it. A refusal is one line
that says when to retry. Windows are sliding (the last 60 s, the last 24 h); memory is bounded: at most `max_keys`
visitors are remembered (the least recently seen are forgotten) and each keeps at most its limit's timestamps.

A duplicate vote (the same visitor, the same prompt, the same two models of the same family) is kept but flagged
(`votes.mark_duplicate`): it counts for no rating, no export and no training pair; the owner sees the counts.
Duplicates are remembered in memory (bounded as above), so a restart forgets which prompts a visitor voted on.
"""

from __future__ import annotations

import math
import os
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, MutableMapping
from dataclasses import dataclass

GENERATIONS_ENV = "DPO_STUDIO_RATE_LIMIT_GENERATIONS_PER_MINUTE"
VOTES_ENV = "DPO_STUDIO_RATE_LIMIT_VOTES_PER_DAY"
DEFAULT_GENERATIONS_PER_MINUTE = 20
DEFAULT_VOTES_PER_DAY = 500
MAX_KEYS = 100_000
WINDOWS = {"generation": 60.0, "vote": 86_400.0}


class RateLimited(Exception):
    """A visitor is over a limit; the message is one line saying when to retry."""


def _env_int(environ: MutableMapping[str, str], name: str, default: int) -> int:
    value = environ.get(name, "").strip()
    if not value:
        return default
    if not value.isdigit():
        raise ValueError(f"{name}={value[:40]!r} is not a whole number (0 turns the limit off)")
    return int(value)


@dataclass(frozen=True)
class RateLimits:
    """Generations per minute and votes per day per visitor; 0 turns a limit off."""

    generations_per_minute: int = DEFAULT_GENERATIONS_PER_MINUTE
    votes_per_day: int = DEFAULT_VOTES_PER_DAY

    def __post_init__(self) -> None:
        if self.generations_per_minute < 0 or self.votes_per_day < 0:
            raise ValueError("rate limits must be 0 (off) or more")

    @classmethod
    def from_env(cls, environ: MutableMapping[str, str] | None = None) -> RateLimits:
        env = os.environ if environ is None else environ
        return cls(_env_int(env, GENERATIONS_ENV, DEFAULT_GENERATIONS_PER_MINUTE),
                   _env_int(env, VOTES_ENV, DEFAULT_VOTES_PER_DAY))


def _wait_text(seconds: float) -> str:
    seconds = max(1, math.ceil(seconds))
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{math.ceil(seconds / 60)} min"
    return f"{math.ceil(seconds / 3600)} h"


class VisitorLimits:
    """Sliding-window counters per visitor key and the memory of who voted on what (thread-safe, bounded)."""

    def __init__(self, limits: RateLimits | None = None, *, max_keys: int = MAX_KEYS,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.limits = limits or RateLimits()
        self.max_keys = max_keys
        self.clock = clock
        self._hits: OrderedDict[tuple[str, str], deque[float]] = OrderedDict()
        self._voted: OrderedDict[tuple[str, str, str, frozenset[str]], None] = OrderedDict()
        self._lock = threading.Lock()

    def _limit(self, kind: str) -> int:
        return self.limits.generations_per_minute if kind == "generation" else self.limits.votes_per_day

    def check(self, kind: str, keys: Iterable[str]) -> None:
        """Count one `kind` ("generation" or "vote") request against every key, or raise RateLimited (nothing is
        counted then)."""
        limit, window = self._limit(kind), WINDOWS[kind]
        if limit == 0:
            return
        now = self.clock()
        with self._lock:
            queues = []
            for key in dict.fromkeys(k for k in keys if k):
                hits = self._hits.pop((kind, key), None) or deque()
                self._hits[(kind, key)] = hits  # most recently seen last
                while hits and hits[0] <= now - window:
                    hits.popleft()
                queues.append(hits)
            while len(self._hits) > self.max_keys:
                self._hits.popitem(last=False)
            full = [hits for hits in queues if len(hits) >= limit]
            if full:
                retry = max(hits[0] + window - now for hits in full)
                what = (f"{limit} generations a minute" if kind == "generation" else f"{limit} votes a day")
                raise RateLimited(f"Limit reached: {what} per visitor; try again in {_wait_text(retry)}.")
            for hits in queues:
                hits.append(now)

    def is_duplicate(self, keys: Iterable[str], family: str, prompt: str, models: Iterable[str]) -> bool:
        """Whether one of `keys` already voted on this prompt and pair of models; remembers this vote either way."""
        pair = frozenset(models)
        found = False
        with self._lock:
            for key in dict.fromkeys(k for k in keys if k):
                entry = (key, family, prompt, pair)
                found = found or entry in self._voted
                self._voted.pop(entry, None)
                self._voted[entry] = None
            while len(self._voted) > self.max_keys:
                self._voted.popitem(last=False)
        return found
