"""The votes room: blind A/B rounds, the votes file (a preference dataset), the scoreboard, the Hub export.

* `RoundStore` holds the open blind rounds on the server: which model is behind reply A and B stays here until
  the round's one vote closes it (the client only ever sees a random round id and the two texts).
* Each vote is one JSONL line `{prompt, chosen, rejected, vote, outcome, family, winner_side, chosen_model, models,
  pair, settings, timestamp}`: `vote` is what was clicked (`A`, `B`, `tie`, `both_bad`), `outcome` who won (the
  model's name in the family, e.g. `dpo`, `base`, `round2`, or `tie`, `both_bad`); `pair` names the two models
  behind A and B (`{"A": "base", "B": "round2"}`); `models` their public refs. Lines from before `pair` existed
  were base vs dpo. A/B votes carry the `prompt/chosen/rejected` columns of the training data, so the
  file trains the next round with `train_dpo.py --dataset votes.jsonl`; ties and both-bad lines have
  `chosen`/`rejected` null (no preference) and are skipped there with a count. Lines are appended with
  flush + fsync, so an acknowledged vote survives a crash or restart.
* `scoreboard(records)` tallies the base-vs-dpo votes (the source of truth) per family, with the DPO win rate's 95 %
  Wilson interval; `comparisons(records, family)` gives every vote of a family as a pairwise comparison for
  `ratings.rate` (the arena across rounds).
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import secrets
import threading
import uuid
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from huggingface_hub import HfApi

from dpo_studio.arena.ratings import rate_length_controlled
from dpo_studio.arena.visitor_text import clean_text, shown

logger = logging.getLogger(__name__)

DEFAULT_VOTES_FILE = Path("votes") / "votes.jsonl"
EXPORT_PATH_IN_REPO = "data/train.jsonl"
SIDES = ("A", "B")
MODELS = ("base", "dpo")
NO_PREFERENCE = ("tie", "both_bad")  # votes that are not preference pairs
CHOICES = SIDES + NO_PREFERENCE
WILSON_Z = 1.959963984540054  # two-sided 95 % normal quantile


def make_vote(
    *,
    prompt: str,
    replies: dict[str, str],
    sides: dict[str, str],
    choice: str,
    family: str,
    settings: dict[str, Any],
    models: dict[str, str] | None = None,
    timestamp: datetime | None = None,
) -> dict[str, Any]:
    """A vote record from a blind round.

    `replies` maps "A"/"B" to the text shown; `sides` maps "A"/"B" to the two different models behind them
    (names in the family: "base", "dpo", "round2", ...); `models` the models' public refs;
    `choice` is what the user picked: "A", "B", "tie" or "both_bad". Identical replies hold no preference, so
    an A/B pick between them is recorded as a tie.
    """
    if choice not in CHOICES:
        raise ValueError(f"choice must be one of {', '.join(CHOICES)}; got {choice!r}")
    if (set(replies) != set(SIDES) or set(sides) != set(SIDES) or sides["A"] == sides["B"]
            or not all(isinstance(name, str) and name for name in sides.values())):
        raise ValueError("replies and sides must map both 'A' and 'B' (sides to two different model names)")
    # Control characters never reach the votes file (it is training data): removed, as from prompts.
    prompt, replies = clean_text(prompt), {side: clean_text(text) for side, text in replies.items()}
    if choice in SIDES and replies["A"] == replies["B"]:
        choice = "tie"
    stamp = (timestamp or datetime.now(timezone.utc)).isoformat()
    decided = choice in SIDES
    loser_side = "B" if choice == "A" else "A"
    return {
        "prompt": prompt,
        "chosen": replies[choice] if decided else None,
        "rejected": replies[loser_side] if decided else None,
        "vote": choice,
        "outcome": sides[choice] if decided else choice,
        "family": family,
        "winner_side": choice if decided else None,
        "chosen_model": sides[choice] if decided else None,
        "models": dict(models or {}),
        "pair": dict(sides),
        "lengths": {side: len(replies[side]) for side in SIDES},  # characters: length-controlled ratings
        "settings": dict(settings),
        "timestamp": stamp,
    }


def pair_of(record: dict[str, Any]) -> dict[str, str] | None:
    """The models behind A and B of a stored vote; lines from before `pair` existed were base vs dpo (their
    order is known only for a decisive vote: `winner_side` + `chosen_model`). None for a malformed pair."""
    pair = record.get("pair")
    if pair is None:
        side, winner = record.get("winner_side"), record.get("chosen_model")
        if side in SIDES and winner in MODELS:
            loser = MODELS[1 - MODELS.index(winner)]
            return {side: winner, SIDES[1 - SIDES.index(side)]: loser}
        return {"A": "base", "B": "dpo"}
    if (isinstance(pair, dict) and set(pair) == set(SIDES) and pair["A"] != pair["B"]
            and all(isinstance(name, str) and name for name in pair.values())):
        return {"A": pair["A"], "B": pair["B"]}
    return None


def mark_duplicate(record: dict[str, Any]) -> dict[str, Any]:
    """Flag a vote as a duplicate (the same visitor, prompt and pair voted before): kept, with its texts under
    `duplicate_of_pair`, but `chosen`/`rejected` null, so no rating, export or training pair counts it."""
    record["duplicate"] = True
    record["duplicate_of_pair"] = {"chosen": record.get("chosen"), "rejected": record.get("rejected")}
    record["chosen"] = record["rejected"] = None
    return record


def outcome_of(record: dict[str, Any]) -> str | None:
    """The winning model's name, "tie" or "both_bad" for a stored vote (lines from before `outcome` existed:
    their `chosen_model`); None for a line that is not a vote, or a vote flagged as a duplicate."""
    if record.get("duplicate"):
        return None
    outcome = record.get("outcome") or record.get("chosen_model")
    pair = pair_of(record)
    if pair is None or not isinstance(outcome, str):
        return None
    return outcome if outcome in (*pair.values(), *NO_PREFERENCE) else None


def comparisons(records: Iterable[dict[str, Any]], family: str) -> list[tuple[str, str, float]]:
    """A family's votes as `(model_a, model_b, score_a)` for `ratings.rate`: a win is 1, a tie or both-bad half a
    win each (as Chatbot Arena counts them)."""
    out = []
    for record in records:
        outcome, pair = outcome_of(record), pair_of(record)
        if outcome is None or str(record.get("family") or "unknown") != family:
            continue
        score = 0.5 if outcome in NO_PREFERENCE else 1.0 if outcome == pair["A"] else 0.0
        out.append((pair["A"], pair["B"], score))
    return out


def lengths_of(record: dict[str, Any]) -> dict[str, int] | None:
    """Characters of replies A and B of a stored vote: its `lengths`, else (lines from before `lengths` existed) the
    lengths of `chosen`/`rejected` of a decisive vote; None when unknown (an old tie)."""
    lengths = record.get("lengths")
    if isinstance(lengths, dict) and all(isinstance(lengths.get(side), int) and lengths[side] >= 0
                                         for side in SIDES):
        return {side: lengths[side] for side in SIDES}
    side, chosen, rejected = record.get("winner_side"), record.get("chosen"), record.get("rejected")
    if side in SIDES and isinstance(chosen, str) and isinstance(rejected, str):
        return {side: len(chosen), SIDES[1 - SIDES.index(side)]: len(rejected)}
    return None


def length_comparisons(records: Iterable[dict[str, Any]], family: str) -> list[tuple[str, str, float, float]]:
    """`comparisons` with the log length ratio `log(1 + len_a) − log(1 + len_b)` (characters) for
    `ratings.rate_length_controlled`; votes whose lengths are unknown are left out."""
    out = []
    for record in records:
        outcome, pair, lengths = outcome_of(record), pair_of(record), lengths_of(record)
        if outcome is None or lengths is None or str(record.get("family") or "unknown") != family:
            continue
        score = 0.5 if outcome in NO_PREFERENCE else 1.0 if outcome == pair["A"] else 0.0
        out.append((pair["A"], pair["B"], score, math.log1p(lengths["A"]) - math.log1p(lengths["B"])))
    return out


def mean_lengths(records: Iterable[dict[str, Any]], family: str) -> dict[str, float]:
    """Each model's mean reply length in characters over a family's votes with known lengths."""
    total: dict[str, list[int]] = {}
    for record in records:
        pair, lengths = pair_of(record), lengths_of(record)
        if pair is None or lengths is None or outcome_of(record) is None or str(record.get("family") or
                                                                                 "unknown") != family:
            continue
        for side in SIDES:
            total.setdefault(pair[side], []).append(lengths[side])
    return {model: sum(values) / len(values) for model, values in total.items()}


# --------------------------------------------------------------------------------------------------------------
# Blind rounds
# --------------------------------------------------------------------------------------------------------------


class RoundError(ValueError):
    """An unknown, expired or already-voted round id."""


@dataclass
class BlindRound:
    """An open blind round: the two texts shown and, server-side only, which model wrote each."""

    round_id: str
    prompt: str
    family: str
    replies: dict[str, str]  # "A"/"B" -> text
    sides: dict[str, str]  # "A"/"B" -> model name in the family ("base", "dpo", "round2", ...)
    settings: dict[str, Any]
    models: dict[str, str] = field(default_factory=dict)


def draw_sides(pairs: list[tuple[str, str]], rng: random.Random) -> dict[str, str]:
    """One of `pairs` at random (the only one when there is one), its two models in random order behind A and B;
    `rng` is a SystemRandom in the app, so the order cannot be guessed."""
    a, b = pairs[0] if len(pairs) == 1 else rng.choice(pairs)
    return {"A": a, "B": b} if rng.random() < 0.5 else {"A": b, "B": a}


class RoundStore:
    """Open blind rounds in memory, each closed by exactly one vote (or dropped when re-drawn).

    Bounded: past `max_open` rounds the oldest open one is forgotten (its id then reads as unknown). Closed ids
    are remembered (also bounded) so that a second vote gets "already voted" rather than "unknown".
    """

    def __init__(self, max_open: int = 10_000) -> None:
        self.max_open = max_open
        self._open: OrderedDict[str, BlindRound] = OrderedDict()
        self._closed: OrderedDict[str, None] = OrderedDict()
        self._lock = threading.Lock()

    def open(self, *, prompt: str, family: str, texts: dict[str, str], sides: dict[str, str],
             settings: dict[str, Any], models: dict[str, str] | None = None) -> BlindRound:
        """Register a round; `texts` maps the two model names to their replies, `sides` "A"/"B" to the models."""
        round_ = BlindRound(round_id=secrets.token_urlsafe(12), prompt=prompt, family=family,
                            replies={side: texts[model] for side, model in sides.items()}, sides=dict(sides),
                            settings=dict(settings), models=dict(models or {}))
        with self._lock:
            self._open[round_.round_id] = round_
            while len(self._open) > self.max_open:
                self._open.popitem(last=False)
        return round_

    def close(self, round_id: str) -> BlindRound:
        """Take the round for its vote; a second call with the same id raises RoundError."""
        key = str(round_id or "").strip()
        with self._lock:
            round_ = self._open.pop(key, None)
            if round_ is None:
                if key in self._closed:
                    raise RoundError(f"Round {shown(key)} already has its vote; start a new round.")
                raise RoundError(f"Unknown round id {shown(key)}: it never existed, was re-drawn, or the app restarted; "
                                 "start a new round.")
            self._closed[key] = None
            while len(self._closed) > 10 * self.max_open:
                self._closed.popitem(last=False)
        return round_

    def discard(self, round_id: str | None) -> None:
        """Forget an open round without a vote (regenerate)."""
        with self._lock:
            self._open.pop(str(round_id or ""), None)


# --------------------------------------------------------------------------------------------------------------
# Scoreboard
# --------------------------------------------------------------------------------------------------------------


def wilson_interval(successes: int, trials: int, z: float = WILSON_Z) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion (95 % by default); (0, 1) when there are no trials."""
    if trials <= 0:
        return 0.0, 1.0
    p = successes / trials
    denominator = 1 + z * z / trials
    centre = (p + z * z / (2 * trials)) / denominator
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


def scoreboard(records: Iterable[dict[str, Any]], families: Iterable[str] = ()) -> dict[str, dict[str, Any]]:
    """Per family: votes, dpo_wins, base_wins, ties, both_bad, duplicates (flagged votes of any pair, left out of
    everything else), and the DPO win rate over decisive votes
    (DPO wins / (DPO wins + base wins)) with its 95 % Wilson interval (None without decisive votes). Only base
    vs dpo votes count here; votes involving later rounds are on the leaderboard (`ratings`).

    Beside them, the length-controlled figures (`length_controlled_win_rate`): `dpo_win_rate_lc`, `lc_ci_low`,
    `lc_ci_high`, `lc_votes`, `mean_length_base`, `mean_length_dpo`.

    `families` are listed first (with zeros when they have no votes yet), then any other family in the records.
    """
    records = list(records)
    board: dict[str, dict[str, Any]] = {}

    def row(family: str) -> dict[str, Any]:
        return board.setdefault(family, {"votes": 0, "dpo_wins": 0, "base_wins": 0, "ties": 0, "both_bad": 0,
                                         "duplicates": 0})

    for family in families:
        row(family)
    keys = {"dpo": "dpo_wins", "base": "base_wins", "tie": "ties", "both_bad": "both_bad"}
    for record in records:
        if record.get("duplicate"):  # kept and counted, left out of every figure
            row(str(record.get("family") or "unknown"))["duplicates"] += 1
            continue
        outcome = outcome_of(record)
        if outcome is None or set(pair_of(record).values()) != set(MODELS):  # type: ignore[union-attr]
            continue
        entry = row(str(record.get("family") or "unknown"))
        entry["votes"] += 1
        entry[keys[outcome]] += 1
    for family, entry in board.items():
        decisive = entry["dpo_wins"] + entry["base_wins"]
        if decisive:
            low, high = wilson_interval(entry["dpo_wins"], decisive)
            entry |= {"dpo_win_rate": entry["dpo_wins"] / decisive, "ci_low": low, "ci_high": high}
        else:
            entry |= {"dpo_win_rate": None, "ci_low": None, "ci_high": None}
        entry |= length_controlled_win_rate(records, family)
    return board


def length_controlled_win_rate(records: list[dict[str, Any]], family: str) -> dict[str, Any]:
    """The DPO win rate at equal reply length (AlpacaEval's length-controlled win rate): σ(θ_dpo − θ_base) of a
    Bradley–Terry fit on the decisive base-vs-dpo votes with the log length ratio as a covariate, its 95 % bootstrap
    interval, the votes it used (those with known lengths) and each side's mean reply length in characters."""
    found = [c for c in length_comparisons(records, family) if set(c[:2]) == set(MODELS) and c[2] != 0.5]
    means = mean_lengths([r for r in records if set((pair_of(r) or {}).values()) == set(MODELS)], family)
    out: dict[str, Any] = {"lc_votes": len(found), "dpo_win_rate_lc": None, "lc_ci_low": None, "lc_ci_high": None,
                           "mean_length_base": means.get("base"), "mean_length_dpo": means.get("dpo")}
    if found:
        pair = rate_length_controlled(list(MODELS), found)["pairs"][0]  # a = base, b = dpo
        out |= {"dpo_win_rate_lc": pair["p_b_beats_a"], "lc_ci_low": pair["ci_low"], "lc_ci_high": pair["ci_high"]}
    return out


def vote_key(record: dict[str, Any]) -> str:
    """What makes a vote the same vote: its `vote_id`, else (lines from before vote ids) the whole line."""
    return str(record.get("vote_id") or json.dumps(record, sort_keys=True, ensure_ascii=False))


def unique_votes(records: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """`records` in order, each vote once (the same vote read from a local file and from the Hub counts once)."""
    seen: set[str] = set()
    out = []
    for record in records:
        key = vote_key(record)
        if key not in seen:
            seen.add(key)
            out.append(record)
    return out


def json_lines(data: bytes) -> list[dict[str, Any]]:
    """The records of JSONL bytes (a snapshot)."""
    return [json.loads(line) for line in data.decode("utf-8").splitlines() if line.strip()]


def read_votes_file(path: Path) -> list[dict[str, Any]]:
    """The votes of one JSONL file; a damaged line (e.g. cut by a crash mid-write) is skipped with a warning."""
    if not path.is_file():
        return []
    out = []
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                logger.warning("%s line %d: not valid JSON, skipped", path.name, number)
                continue
            if isinstance(record, dict):
                out.append(record)
    return out


class VotesClosed(RuntimeError):
    """The server is shutting down and takes no more votes."""


class VoteStore:
    """Append-only JSONL file of votes (the scoreboard's source of truth); counts what is already there on start.

    `shutdown()` (the app's SIGTERM/SIGINT handler calls it) closes the store: later appends raise `VotesClosed`.

    Args:
        path: the JSONL file votes are appended to.
        lock: the lock appends hold (a `CommitScheduler`'s, so that no commit reads half a line); default: own.
    """

    def __init__(self, path: str | Path = DEFAULT_VOTES_FILE, *, lock: threading.Lock | None = None) -> None:
        self.path = Path(path).expanduser()
        self._lock = lock or threading.Lock()
        self._count = len(self.records())
        self._accepting = True

    @property
    def accepting(self) -> bool:
        """False once `shutdown` has run: the server is stopping and takes no more votes."""
        return self._accepting

    def shutdown(self, timeout: float = 10.0) -> bool:
        """Stop taking votes. Every acknowledged vote is already fsync'ed, so a local file has nothing to flush;
        returns True (everything is kept). A Hub store also commits what the Hub lacks (`HubVoteStore`)."""
        with self._lock:  # an append in progress finishes first
            self._accepting = False
        return True

    @property
    def count(self) -> int:
        """Number of votes stored (including those from earlier runs)."""
        return self._count

    def records(self) -> list[dict[str, Any]]:
        """All stored votes, each once."""
        return unique_votes(read_votes_file(self.path))

    def append(self, record: dict[str, Any]) -> int:
        """Append one vote durably (flush + fsync) and return the new count.

        The record gets a `vote_id` (set in place, if it has none): the key that keeps a vote counted once
        wherever it is read from.
        """
        record.setdefault("vote_id", uuid.uuid4().hex)
        line = json.dumps(record, ensure_ascii=False) + "\n"
        with self._lock:
            if not self._accepting:
                raise VotesClosed("The server is restarting and takes no votes now; vote again in a minute.")
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a+b") as handle:
                handle.seek(0, os.SEEK_END)
                if handle.tell() > 0:
                    handle.seek(-1, os.SEEK_END)
                    if handle.read(1) != b"\n":  # a crash cut the last line: don't glue this vote onto it
                        handle.write(b"\n")
                handle.write(line.encode("utf-8"))
                handle.flush()
                os.fsync(handle.fileno())
            self._count += 1
            return self._count

    def snapshot(self) -> bytes:
        """The votes as JSONL bytes as of now (no half-written vote: appends hold the same lock)."""
        with self._lock:
            records = self.records()
        return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode("utf-8")

    def location(self) -> str:
        """Where the votes are kept, for the page (a file name only: the server's folders are private)."""
        return self.path.name


def export_votes(
    store: VoteStore | str | Path,
    repo_id: str,
    *,
    token: str | bool | None = None,
    private: bool = False,
    endpoint: str | None = None,
) -> str:
    """Push the votes as a Hub dataset repo (`data/train.jsonl`); returns the dataset's URL.

    A regular file upload through `HfApi.upload_file` (not `Dataset.push_to_hub`, which writes parquet through
    LFS/Xet); the Hub's dataset viewer and `load_dataset(repo_id)` read `data/train.jsonl` as the train split.
    """
    store = store if isinstance(store, VoteStore) else VoteStore(store)
    repo_id = repo_id.strip()
    if not repo_id:
        raise ValueError("export needs a dataset repo id such as 'your-name/dpo-studio-votes'")
    kept = [r for r in json_lines(store.snapshot()) if not r.get("duplicate")]  # duplicates are not exported
    data = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in kept).encode("utf-8")
    count = len(kept)
    if count == 0:
        raise ValueError(f"no votes to export yet ({store.location()} is empty or missing)")
    api = HfApi(endpoint=endpoint, token=token)
    repo_url = api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)
    api.upload_file(
        path_or_fileobj=data,
        path_in_repo=EXPORT_PATH_IN_REPO,
        repo_id=repo_url.repo_id,
        repo_type="dataset",
        commit_message=f"Upload {count} blind A/B votes from DPO Studio",
    )
    return str(repo_url)
